"""The checks of job.json's fields (jobs.runfolder.jobfile, on reading) and sweep.json's (`genbatch status`), and
their words.

These files are edited by hand, copied between versions and cut short by full disks: a field that is
missing or of the wrong type is one line naming the file and the key (`OUTPUT/job.json: key 'counts'
is missing`), exit 2, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any

from jobs.errors import OutputError

_MISSING = object()
_SHOWN_LENGTH = 40  # longer values are named by their type: the message stays one readable line


def json_type(value: Any) -> str:
    """A value's type as JSON names it, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def shown(value: Any) -> str:
    """A wrong value as a message shows it: a short scalar as JSON writes it (`"5"`, `-1`), else its type."""
    if isinstance(value, (str, int, float, bool)):
        text = json.dumps(value)
        if len(text) <= _SHOWN_LENGTH:
            return text
    return json_type(value)


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def is_positive(value: Any) -> bool:
    return is_count(value) and value >= 1


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_time(value: Any) -> bool:
    """An ISO 8601 time with its UTC offset, as genbatch writes them (a naive one cannot be compared with now)."""
    if not isinstance(value, str):
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is not None
    except ValueError:
        return False


# What each check asks for, as the message says it.
COUNT = (is_count, "a whole number >= 0")
POSITIVE = (is_positive, "a whole number >= 1")
NUMBER = (is_number, "a number")
TEXT = (lambda value: isinstance(value, str), "a string")
TIME = (is_time, "an ISO 8601 time with its UTC offset")
FLAG = (lambda value: isinstance(value, bool), "a boolean")
OBJECT = (lambda value: isinstance(value, dict), "an object")
LIST = (lambda value: isinstance(value, list), "a list")

Check = tuple[Callable[[Any], bool], str]


class Fields:
    """A JSON object read from `path`; `prefix` is where it sits in the file (`workers[0].`)."""

    def __init__(self, path: str, record: dict, prefix: str = ""):
        self.path = path
        self.record = record
        self.prefix = prefix

    def get(self, key: str, check: Check, default: Any = _MISSING) -> Any:
        """The value at the dotted `key`. Absent or null: `default` where one is given, else an error;
        present: it must pass `check`."""
        node: Any = self.record
        parts = key.split(".")
        for depth, part in enumerate(parts):
            if not isinstance(node, dict):
                self.fail(".".join(parts[:depth]), f"should be an object, not {shown(node)}")
            node = node.get(part)
            if node is None:
                if default is not _MISSING:
                    return default
                self.fail(".".join(parts[: depth + 1]), "is missing")  # null too: nothing to read
        test, wanted = check
        if not test(node):
            self.fail(key, f"should be {wanted}, not {shown(node)}")
        return node

    def objects(self, key: str) -> list[Fields]:
        """The list at `key` (absent or null: none), each item an object."""
        items = self.get(key, LIST, default=[])
        for index, item in enumerate(items):
            if not isinstance(item, dict):
                self.fail(f"{key}[{index}]", f"should be an object, not {shown(item)}")
        return [Fields(self.path, item, f"{self.prefix}{key}[{index}].") for index, item in enumerate(items)]

    def fail(self, key: str, problem: str):
        raise OutputError(f"{self.path}: key '{self.prefix}{key}' {problem}")
