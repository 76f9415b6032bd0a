"""Output helpers for the CLI."""

from __future__ import annotations

import json
import sys
from typing import Any


def out(s: str = "") -> None:
    print(s, flush=True)


def err(s: str) -> None:
    print(s, file=sys.stderr, flush=True)


def dump_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, ensure_ascii=False, default=str), flush=True)
