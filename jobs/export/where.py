"""`--where`: a small, safe filter language over a run's columns, turned into a pyarrow compute expression.

The text is parsed with Python's `ast` module and only these forms are accepted, everything else is
refused with one line naming the offending part (nothing is ever evaluated as Python):

    column == 'ok'   column != 3   column < 2.5   26 <= column < 30      comparisons, chains included
    column in ['a', 'b']   column not in (1, 2)                          membership in a literal list
    column is null   column is not null   (`None` works too)             null tests
    a and b   a or b   not a   (a or b) and c                            logic, parentheses
    column                                                               a bool column on its own

Literals are numbers (a leading minus included), strings, and True/False. A comparison with a null value
is not true, so such rows are left out (as in SQL); select them with `is null`.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import UsageError, one_line, some_of

MAX_LENGTH = 10_000  # characters: a filter, not a program
_SHOWN = 100  # characters of an unparsable filter quoted in its error
# Integer literals must fit pyarrow's int64 scalars (run columns are int64 at most).
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

_COMPARISONS = {
    ast.Eq: "==",
    ast.NotEq: "!=",
    ast.Lt: "<",
    ast.LtE: "<=",
    ast.Gt: ">",
    ast.GtE: ">=",
}
_NULL_NAMES = ("null", "None")

# What a refused node is called in the error message.
_REFUSED = {
    ast.Call: "function calls",
    ast.Attribute: "attribute access",
    ast.Subscript: "subscripts",
    ast.BinOp: "arithmetic",
    ast.Lambda: "lambdas",
    ast.IfExp: "conditional expressions",
    ast.NamedExpr: "assignments",
    ast.Dict: "dicts",
    ast.Set: "sets",
    ast.ListComp: "comprehensions",
    ast.SetComp: "comprehensions",
    ast.DictComp: "comprehensions",
    ast.GeneratorExp: "comprehensions",
    ast.JoinedStr: "f-strings",
    ast.Starred: "starred expressions",
    ast.Await: "await",
    ast.Yield: "yield",
    ast.YieldFrom: "yield",
}


@dataclass(frozen=True)
class Where:
    """A parsed filter: the expression pyarrow evaluates, the columns it reads, and its canonical text."""

    expression: pc.Expression
    columns: tuple[str, ...]
    text: str  # normalised spelling (spaces, quotes): the same filter always reads the same


def parse_where(text: str, schema: pa.Schema) -> Where:
    """Parse `text` against the columns of `schema`; a UsageError names what is wrong."""
    if len(text) > MAX_LENGTH:
        raise UsageError(f"--where: longer than {MAX_LENGTH:,} characters")
    if not text.strip():
        raise UsageError("--where: empty expression")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as error:
        shown = text if len(text) <= _SHOWN else text[:_SHOWN] + "..."
        at = f", at column {error.offset}" if error.offset else ""
        raise UsageError(f"--where: not a valid expression ({error.msg}{at}): {shown}") from None
    except (RecursionError, MemoryError):
        raise UsageError("--where: nested too deeply") from None
    translator = _Translator(text.strip(), schema)
    try:
        expression = translator.condition(tree.body)
    except RecursionError:
        raise UsageError("--where: nested too deeply") from None
    try:  # what the checks above cannot see (two columns of different types): pyarrow's own verdict
        schema.empty_table().filter(expression)
    except (pa.ArrowException, TypeError) as error:
        raise UsageError(f"--where: {ast.unparse(tree)}: {one_line(error)}") from None
    return Where(expression=expression, columns=tuple(translator.columns), text=ast.unparse(tree))


class _Translator:
    """Walks the parsed tree; each method returns a pyarrow expression or raises a UsageError."""

    def __init__(self, source: str, schema: pa.Schema):
        self.source = source
        self.schema = schema
        self.columns: list[str] = []

    def refuse(self, node: ast.AST, what: str) -> UsageError:
        part = ast.get_source_segment(self.source, node) or ast.unparse(node)
        return UsageError(f"--where: {what} not allowed: {part}")

    def condition(self, node: ast.expr) -> pc.Expression:
        """Something true or false per row."""
        if isinstance(node, ast.BoolOp):
            parts = [self.condition(value) for value in node.values]
            combined = parts[0]
            for part in parts[1:]:
                combined = combined & part if isinstance(node.op, ast.And) else combined | part
            return combined
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
            return ~self.condition(node.operand)
        if isinstance(node, ast.Compare):
            return self.comparison(node)
        if isinstance(node, ast.Name):
            name = self.column(node)
            if not pa.types.is_boolean(self.schema.field(name).type):
                raise UsageError(
                    f"--where: column '{name}' is {self.schema.field(name).type}, not bool: compare it with a value"
                )
            return pc.field(name)
        if isinstance(node, ast.Constant | ast.UnaryOp | ast.List | ast.Tuple):
            raise self.refuse(node, "a literal on its own (compare a column with it)")
        raise self.refuse(node, _REFUSED.get(type(node), type(node).__name__))

    def comparison(self, node: ast.Compare) -> pc.Expression:
        """`a < b`, chains (`1 < a <= 2` is `1 < a and a <= 2`), `in` and `is null`."""
        parts = []
        left = node.left
        for op, right in zip(node.ops, node.comparators):
            parts.append(self.pair(node, left, op, right))
            left = right
        combined = parts[0]
        for part in parts[1:]:
            combined = combined & part
        return combined

    def pair(self, node: ast.Compare, left: ast.expr, op: ast.cmpop, right: ast.expr) -> pc.Expression:
        if isinstance(op, ast.Is | ast.IsNot):
            if not (isinstance(right, ast.Name | ast.Constant) and _is_null(right)):
                raise self.refuse(node, "`is` with anything but null")
            field = pc.field(self.column(left, node))
            return field.is_null() if isinstance(op, ast.Is) else field.is_valid()
        if isinstance(op, ast.In | ast.NotIn):
            name = self.column(left, node)
            if not isinstance(right, ast.List | ast.Tuple):
                raise self.refuse(node, "`in` with anything but a literal list")
            values = [self.literal(element, name) for element in right.elts]
            members = pc.field(name).isin(pa.array(values, type=self._value_type(name, values)))
            return members if isinstance(op, ast.In) else ~members
        symbol = _COMPARISONS[type(op)]
        left_side, right_side = self.operand(left, right, node), self.operand(right, left, node)
        if not isinstance(left, ast.Name) and not isinstance(right, ast.Name):
            raise self.refuse(node, "a comparison without a column")
        return {
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
            "<": lambda a, b: a < b,
            "<=": lambda a, b: a <= b,
            ">": lambda a, b: a > b,
            ">=": lambda a, b: a >= b,
        }[symbol](left_side, right_side)

    def operand(self, node: ast.expr, other: ast.expr, comparison: ast.Compare) -> pc.Expression:
        """A column, or a literal of a type the column on the other side can be compared with."""
        if _is_null(node):
            part = ast.get_source_segment(self.source, comparison) or ast.unparse(comparison)
            raise UsageError(f"--where: test for null with `is null` or `is not null`, not: {part}")
        if isinstance(node, ast.Name):
            return pc.field(self.column(node))
        column = other.id if isinstance(other, ast.Name) and other.id in self.schema.names else None
        return pc.scalar(self.literal(node, column))

    def column(self, node: ast.expr, context: ast.expr | None = None) -> str:
        if not isinstance(node, ast.Name):
            raise self.refuse(context or node, "comparisons whose left side is not a column")
        if node.id not in self.schema.names:
            raise UsageError(f"--where: unknown column '{node.id}'; the run has: {', '.join(self.schema.names)}")
        if node.id not in self.columns:
            self.columns.append(node.id)
        return node.id

    def literal(self, node: ast.expr, column: str | None) -> bool | int | float | str:
        """A number, string or bool, checked against the column's type when there is one."""
        value: object
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            inner = node.operand
            number = inner.value if isinstance(inner, ast.Constant) else None
            if not isinstance(number, int | float) or isinstance(number, bool):
                raise self.refuse(node, "a sign on anything but a number")
            value = -number if isinstance(node.op, ast.USub) else number
        elif isinstance(node, ast.Constant) and isinstance(node.value, bool | int | float | str):
            value = node.value
        elif isinstance(node, ast.Constant):
            raise self.refuse(node, f"{type(node.value).__name__} literals")
        else:
            raise self.refuse(node, _REFUSED.get(type(node), type(node).__name__))
        assert isinstance(value, bool | int | float | str)
        if column is not None:
            self._check_type(node, column, value)
        if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            if column is None or not pa.types.is_floating(self.schema.field(column).type):
                part = ast.get_source_segment(self.source, node) or ast.unparse(node)
                raise UsageError(f"--where: {part} is outside the 64-bit integer range ({INT64_MIN} to {INT64_MAX})")
            value = float(value)  # a float column compares with it as a float
        return value

    def _check_type(self, node: ast.expr, column: str, value: bool | int | float | str) -> None:
        data_type = self.schema.field(column).type
        if isinstance(value, bool):
            fits = pa.types.is_boolean(data_type)
        elif isinstance(value, int | float):
            fits = pa.types.is_integer(data_type) or pa.types.is_floating(data_type)
        else:
            fits = pa.types.is_string(data_type) or pa.types.is_large_string(data_type)
        if not fits:
            part = ast.get_source_segment(self.source, node) or ast.unparse(node)
            raise UsageError(f"--where: column '{column}' is {data_type}, cannot compare it with {part}")

    def _value_type(self, column: str, values: list) -> pa.DataType:
        """The type of an `in` list: the column's own, so that pyarrow compares like with like."""
        data_type = self.schema.field(column).type
        if pa.types.is_integer(data_type) and any(isinstance(v, float) for v in values):
            return pa.float64()
        return data_type


def _is_null(node: ast.expr) -> bool:
    return (isinstance(node, ast.Name) and node.id in _NULL_NAMES) or (
        isinstance(node, ast.Constant) and node.value is None
    )


def check_columns(schema: pa.Schema, needed: list[str], what: str) -> None:
    """Refuse an option that needs columns the run does not have, naming them and the run's columns."""
    missing = [name for name in needed if name not in schema.names]
    if missing:
        raise UsageError(f"{what}: the run has no column {some_of(missing)}; it has: {', '.join(schema.names)}")
