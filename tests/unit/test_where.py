"""`--where`: what the filter language accepts (checked against rows selected by plain Python) and what it refuses."""

from __future__ import annotations

import pyarrow as pa
import pytest

from jobs.errors import UsageError
from jobs.export.where import parse_where

SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("status", pa.string()),
        ("clip_score", pa.float32()),
        ("aesthetic", pa.float32()),
        ("seed", pa.int64()),
        ("steps", pa.int32()),
        ("prompt_truncated", pa.bool_()),
        ("image", pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])),
    ]
)
NAMES = ("id", "status", "clip_score", "aesthetic", "seed", "steps", "prompt_truncated")
ROWS = [
    dict(zip(NAMES, values))
    for values in [
        ("a", "ok", 30.0, 6.0, 1, 4, True),
        ("b", "ok", 20.0, 5.0, 2, 8, False),
        ("c", "error", None, None, 3, 4, None),
        ("d", "ok", 26.0, 4.5, -4, 4, False),
        ("e", "ok", 27.5, 5.5, 5, 2, False),
    ]
]
TABLE = pa.Table.from_pylist([{**row, "image": None} for row in ROWS], schema=SCHEMA)


def selected(text: str) -> list[str]:
    return TABLE.filter(parse_where(text, SCHEMA).expression).column("id").to_pylist()


def expected(keep) -> list[str]:
    """Ids of the rows `keep` accepts, with SQL's rule that a comparison with null is not true."""
    return [row["id"] for row in ROWS if keep(row)]


def known(*values) -> bool:
    return all(value is not None for value in values)


@pytest.mark.parametrize(
    ("text", "keep"),
    [
        (
            "status == 'ok' and clip_score >= 26 and aesthetic >= 5",
            lambda r: r["status"] == "ok" and known(r["clip_score"]) and r["clip_score"] >= 26 and r["aesthetic"] >= 5,
        ),
        ("26 <= clip_score < 30", lambda r: known(r["clip_score"]) and 26 <= r["clip_score"] < 30),
        ("clip_score > 25 or seed < 0", lambda r: (known(r["clip_score"]) and r["clip_score"] > 25) or r["seed"] < 0),
        ("not (steps == 4)", lambda r: r["steps"] != 4),
        ("seed in [1, -4, 5]", lambda r: r["seed"] in (1, -4, 5)),
        ("id not in ('a', 'b')", lambda r: r["id"] not in ("a", "b")),
        ("steps in [2, 8.0]", lambda r: r["steps"] in (2, 8)),
        ("clip_score is null", lambda r: r["clip_score"] is None),
        ("clip_score is not None", lambda r: r["clip_score"] is not None),
        ("prompt_truncated", lambda r: r["prompt_truncated"] is True),
        ("not prompt_truncated", lambda r: r["prompt_truncated"] is False),
        ("prompt_truncated == False", lambda r: r["prompt_truncated"] is False),
        (
            "(status == 'error' or aesthetic > 5.5) and seed != 3",
            lambda r: known(r["aesthetic"]) and r["aesthetic"] > 5.5,
        ),
        ("clip_score >= +27.5", lambda r: known(r["clip_score"]) and r["clip_score"] >= 27.5),
        ("aesthetic < clip_score", lambda r: known(r["aesthetic"]) and r["aesthetic"] < r["clip_score"]),
        ("seed <= 9223372036854775807", lambda r: True),  # int64's largest: still an int64 literal
        ("clip_score < 99999999999999999999999", lambda r: known(r["clip_score"])),  # a float column: a float
    ],
)
def test_accepted_filters_select_what_python_selects(text, keep):
    assert selected(text) == expected(keep)


def test_the_canonical_text_ignores_spacing_and_quotes():
    assert parse_where('status=="ok"  and   clip_score>=26', SCHEMA).text == "status == 'ok' and clip_score >= 26"
    assert parse_where("26 <= clip_score < 30", SCHEMA).columns == ("clip_score",)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("__import__('os')", "--where: function calls not allowed: __import__('os')"),
        (
            "__import__('os').system('true') == 0",
            "--where: function calls not allowed: __import__('os').system('true')",
        ),
        ("status.upper() == 'OK'", "--where: function calls not allowed: status.upper()"),
        ("clip_score.real > 1", "--where: attribute access not allowed: clip_score.real"),
        ("().__class__ == 1", "--where: attribute access not allowed: ().__class__"),
        ("seed + 1 > 2", "--where: arithmetic not allowed: seed + 1"),
        ("status[0] == 'o'", "--where: subscripts not allowed: status[0]"),
        ("lambda: 1", "--where: lambdas not allowed: lambda: 1"),
        ("[x for x in 'ab']", "--where: comprehensions not allowed: [x for x in 'ab']"),
        ("(x := 1)", "--where: assignments not allowed: x := 1"),
        ("f'{seed}' == '1'", "--where: f-strings not allowed: f'{seed}'"),
        ("1 < 2", "--where: a comparison without a column not allowed: 1 < 2"),
        ("'ok'", "--where: a literal on its own (compare a column with it) not allowed: 'ok'"),
        ("seed == b'1'", "--where: bytes literals not allowed: b'1'"),
        ("seed in other", "--where: `in` with anything but a literal list not allowed: seed in other"),
        ("seed is 1", "--where: `is` with anything but null not allowed: seed is 1"),
        ("clip_score == None", "--where: test for null with `is null` or `is not null`, not: clip_score == None"),
        ("clip_scor >= 26", f"--where: unknown column 'clip_scor'; the run has: {', '.join(SCHEMA.names)}"),
        ("clip_score >= '26'", "--where: column 'clip_score' is float, cannot compare it with '26'"),
        ("status == 1", "--where: column 'status' is string, cannot compare it with 1"),
        ("seed in ['1']", "--where: column 'seed' is int64, cannot compare it with '1'"),
        ("status", "--where: column 'status' is string, not bool: compare it with a value"),
        (
            "status == seed",
            "--where: status == seed: Function 'equal' has no kernel matching input types (string, int64)",
        ),
        ("status == 'ok' and", "--where: not a valid expression (invalid syntax): status == 'ok' and"),
        ("", "--where: empty expression"),
        ("seed > 1" + " and seed > 1" * 2000, "--where: longer than 10,000 characters"),
        *(
            (text, f"--where: {number} is outside the 64-bit integer range ({-(2**63)} to {2**63 - 1})")
            for text, number in [
                ("seed <= 9223372036854775808", "9223372036854775808"),
                ("seed > -9223372036854775809", "-9223372036854775809"),
                ("steps in [1, 99999999999999999999]", "99999999999999999999"),
                ("18446744073709551616 > seed", "18446744073709551616"),
            ]
        ),
    ],
)
def test_refused_filters_say_what_is_wrong_in_one_line(text, message):
    with pytest.raises(UsageError) as raised:
        parse_where(text, SCHEMA)
    assert str(raised.value) == message


def test_deep_nesting_is_refused_not_a_crash():
    with pytest.raises(UsageError) as raised:
        parse_where("(" * 3000 + "seed > 1" + ")" * 3000, SCHEMA)
    shown = "(" * 100 + "..."
    assert str(raised.value) == f"--where: not a valid expression (too many nested parentheses, at column 201): {shown}"
