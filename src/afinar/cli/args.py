"""Build argparse flags from a pydantic model, so the typed description (with its help text)
is the only place a setting is defined."""

from __future__ import annotations

import argparse
import types
import typing
from typing import Any, Literal

from pydantic import BaseModel


def _base_type(ann: Any) -> Any:
    origin = typing.get_origin(ann)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(ann) if a is not type(None)]
        return _base_type(args[0])
    return ann


class Parser(argparse.ArgumentParser):
    """argparse with API spellings as exact aliases: `--epochCount 3` is `--epochs 3`, but an
    alias takes no part in prefix matching, so adding one never makes a kebab-case prefix
    (`--train` for `--train-data`) ambiguous. Subparsers are of this class too."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.exact_aliases: dict[str, str] = {}

    def parse_known_args(self, args=None, namespace=None):
        if args is not None and self.exact_aliases:
            args = [self._spelled(a) for a in args]
        return super().parse_known_args(args, namespace)

    def _spelled(self, arg: str) -> str:
        flag, eq, value = arg.partition("=")
        return self.exact_aliases[flag] + eq + value if flag in self.exact_aliases else arg


def add_model_flags(parser: argparse.ArgumentParser, model: type[BaseModel],
                    aliases: dict[str, str] | None = None, positional: tuple[str, ...] = ()
                    ) -> None:
    """One --flag per field (dest = field name); defaults are left to the model (None here),
    so flags only override what a config file says. `aliases` (API spelling -> field) become
    exact aliases of the kebab-case flag (with a `Parser`), not flags of their own."""
    rev = {v: k for k, v in (aliases or {}).items()}
    for name, f in model.model_fields.items():
        ann = _base_type(f.annotation)
        flags = [f"--{name.replace('_', '-')}"]
        alias_note = ""
        if name in rev:
            if isinstance(parser, Parser):
                parser.exact_aliases[f"--{rev[name]}"] = flags[0]
                alias_note = f" (also --{rev[name]})"
            else:
                flags.append(f"--{rev[name]}")
        default = f.default if f.default is not None and not f.is_required() else None
        help_ = ((f.description or "") + alias_note + (
            f" [default: {default}]" if default is not None else "")).replace("%", "%%")
        kw: dict[str, Any] = {"dest": name, "default": None, "help": help_}
        if ann is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
            continue
        if typing.get_origin(ann) is Literal:
            kw["choices"] = list(typing.get_args(ann))
        elif ann in (int, float):
            kw["type"] = ann
        kw["metavar"] = name.upper() if "choices" not in kw else None
        parser.add_argument(*flags, **{k: v for k, v in kw.items() if v is not None or k ==
                                       "default"})


def collect(ns: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    return {k: getattr(ns, k) for k in model.model_fields if getattr(ns, k, None) is not None}


def int_in(lo: int, hi: int | None = None):
    """An argparse type: an integer in [lo, hi], or a usage error that says the range."""
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
        if v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be {f'from {lo} to {hi}' if hi is not None else f'at least {lo}'}; "
                f"got {v}")
        return v
    parse.__name__ = "integer"
    return parse


def int_or_auto(lo: int, hi: int | None = None):
    """An argparse type: "auto", or an integer in [lo, hi]."""
    whole = int_in(lo, hi)

    def parse(text: str) -> int | str:
        return "auto" if text.strip().lower() == "auto" else whole(text)
    parse.__name__ = "integer or auto"
    return parse


def float_in(lo: float, hi: float | None = None):
    """An argparse type: a finite number in [lo, hi]."""
    import math

    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
        if not math.isfinite(v) or v < lo or (hi is not None and v > hi):
            raise argparse.ArgumentTypeError(
                f"must be a number {f'from {lo} to {hi}' if hi is not None else f'>= {lo}'}; "
                f"got {text}")
        return v
    parse.__name__ = "number"
    return parse
