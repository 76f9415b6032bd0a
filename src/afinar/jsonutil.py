"""JSON from outside (data files, request bodies) parsed with the checks the standard parser
skips: duplicate keys (the last one silently won), nesting too deep for the code that walks it
(RecursionError), and strings no UTF-8 file or tokenizer can hold (a lone surrogate such as
"\\ud800", a NUL). Each problem is a `JSONProblem` (a ValueError) naming the JSON path."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

MAX_DEPTH = 64


class JSONProblem(ValueError):
    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict:
    out = {}
    for k, v in pairs:
        if k in out:
            raise JSONProblem(f"duplicate key '{k[:80]}' in one object (the second would "
                              f"silently replace the first)")
        out[k] = v
    return out


def loads(text: str | bytes, max_depth: int = MAX_DEPTH) -> Any:
    """Parse and check. Raises JSONProblem (with line and column for syntax errors)."""
    try:
        obj = json.loads(text, object_pairs_hook=_no_duplicates)
    except json.JSONDecodeError as e:
        raise JSONProblem(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}",
                          e.lineno, e.colno) from None
    except RecursionError:
        raise JSONProblem(f"JSON nested too deeply (more than {max_depth} levels)") from None
    except UnicodeDecodeError as e:
        raise JSONProblem(f"invalid UTF-8 at byte {e.start}") from None
    check(obj, max_depth)
    return obj


def check(obj: Any, max_depth: int = MAX_DEPTH) -> None:
    """Depth and string content of a parsed value, iteratively (no recursion to overflow)."""
    stack: list[tuple[Any, str, int]] = [(obj, "", 0)]
    while stack:
        v, path, depth = stack.pop()
        if isinstance(v, str):
            _check_string(v, path)
        elif isinstance(v, dict | list):
            if depth >= max_depth:
                raise JSONProblem(f"JSON nested too deeply at '{path or '$'}' (more than "
                                  f"{max_depth} levels)")
            items = v.items() if isinstance(v, dict) else enumerate(v)
            for k, x in items:
                if isinstance(k, str):
                    _check_string(k, f"{path}.{k}" if path else k)
                sub = (f"{path}.{k}" if path else str(k)) if isinstance(v, dict) \
                    else f"{path}[{k}]"
                stack.append((x, sub, depth + 1))


def _check_string(s: str, path: str) -> None:
    if "\0" in s:
        raise JSONProblem(f"'{path[:120] or '$'}' contains a NUL character (binary data?)")
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as e:
        raise JSONProblem(f"'{path[:120] or '$'}' contains an unpaired surrogate "
                          f"({s[e.start]!a}), which is not valid Unicode") from None


def jsonl(path) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, record, problem) per non-empty line of a JSONL file: the record is None
    and the problem says why when the line is not valid JSON (parsed by `loads`)."""
    from pathlib import Path

    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            yield n, loads(line), None
        except JSONProblem as e:
            yield n, None, f"invalid JSON: {e.message}"
