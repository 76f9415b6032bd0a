"""Bedrock's retrieval metadata filters (`RetrievalFilter` in botocore's bedrock-agent-runtime
model): equals, notEquals, greaterThan, greaterThanOrEquals, lessThan, lessThanOrEquals, in,
notIn, startsWith, listContains, stringContains, and the combinators andAll / orAll.

Metadata belongs to documents (`<file>.metadata.json` sidecars, or inline attributes), so a
filter is checked once per document, and the vector search is then restricted to the documents
that pass.
"""

from __future__ import annotations

from collections.abc import Callable

from afinar.errors import ConfigError

COMPARE = {"equals", "notEquals", "greaterThan", "greaterThanOrEquals", "lessThan",
           "lessThanOrEquals", "in", "notIn", "startsWith", "listContains", "stringContains"}
COMBINE = {"andAll", "orAll"}


class FilterError(ConfigError):
    """A metadata filter that is malformed."""


def _num(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a, b) -> bool:
    if _num(a) and _num(b):
        return float(a) == float(b)
    return a == b


def compile_filter(f: dict, path: str = "filter") -> Callable[[dict], bool]:
    """Validate a filter and return a predicate over a metadata dict."""
    if not isinstance(f, dict) or len([k for k, v in f.items() if v is not None]) != 1:
        ops = ", ".join(sorted(COMPARE | COMBINE))
        raise FilterError(f"{path}: a filter has exactly one operator ({ops}); got "
                          f"{sorted(f) if isinstance(f, dict) else type(f).__name__}")
    op, arg = next((k, v) for k, v in f.items() if v is not None)
    if op in COMBINE:
        if not isinstance(arg, list) or len(arg) < 2:
            raise FilterError(f"{path}.{op}: takes a list of at least 2 filters")
        preds = [compile_filter(x, f"{path}.{op}[{i}]") for i, x in enumerate(arg)]
        if op == "andAll":
            return lambda md: all(p(md) for p in preds)
        return lambda md: any(p(md) for p in preds)
    if op not in COMPARE:
        raise FilterError(f"{path}: unknown operator '{op}'; use one of "
                          f"{', '.join(sorted(COMPARE | COMBINE))}")
    if not isinstance(arg, dict) or not isinstance(arg.get("key"), str) or "value" not in arg:
        raise FilterError(f"{path}.{op}: takes {{'key': <string>, 'value': <value>}}")
    key, value = arg["key"], arg["value"]
    where = f"{path}.{op}.value"
    if op in ("greaterThan", "greaterThanOrEquals", "lessThan", "lessThanOrEquals"):
        if not _num(value):
            raise FilterError(f"{where}: {op} compares numbers; got {value!r}")
        cmp = {"greaterThan": lambda a: a > value, "greaterThanOrEquals": lambda a: a >= value,
               "lessThan": lambda a: a < value, "lessThanOrEquals": lambda a: a <= value}[op]
        return lambda md: _num(md.get(key)) and cmp(md[key])
    if op in ("in", "notIn"):
        if not isinstance(value, list):
            raise FilterError(f"{where}: {op} takes a list of values; got {value!r}")
        if op == "in":
            return lambda md: key in md and any(_eq(md[key], v) for v in value)
        return lambda md: not any(_eq(md.get(key), v) for v in value)
    if op in ("startsWith", "stringContains", "listContains") and op != "listContains" \
            and not isinstance(value, str):
        raise FilterError(f"{where}: {op} takes a string; got {value!r}")
    if op == "equals":
        return lambda md: key in md and _eq(md[key], value)
    if op == "notEquals":
        return lambda md: not _eq(md.get(key), value)
    if op == "startsWith":
        return lambda md: isinstance(md.get(key), str) and md[key].startswith(value)
    if op == "listContains":
        return lambda md: isinstance(md.get(key), list) and any(_eq(x, value) for x in md[key])

    def contains(md: dict) -> bool:  # stringContains: a string, or any string in a list
        v = md.get(key)
        if isinstance(v, str):
            return value in v
        return isinstance(v, list) and any(isinstance(x, str) and value in x for x in v)
    return contains
