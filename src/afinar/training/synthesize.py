"""`afinar data synthesize`: a teacher and a handful of seed examples make N new examples in
the seeds' schema, deduplicated and checked (the recipe of Bedrock's distillation workshop).

Each call shows the teacher `shots` seeds drawn at random (JSON, one per line) and asks for
`per_call` new, different ones; the answer is constrained to {"examples": [...]} whose items
have the seeds' fields and value types (a JSON schema inferred from the seeds, string lengths
capped at 4x the longest seed value), so every answer parses. An example is kept when it is a
valid record of the seeds' schema (afinar's data checks) and its content is new: not a seed,
not already kept (compared case- and whitespace-insensitively). Kept examples are appended to
the output as they come, so a stopped run continues where it stopped; the calls stop at N
examples or after 4 x N / per_call calls, whichever is first (a teacher that repeats itself
cannot loop forever).
"""

from __future__ import annotations

import json
import math
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from afinar.data.prompts import PromptRecord
from afinar.data.readers import RawRecord, read_records
from afinar.data.schema import detect_schema, normalize, normalize_record
from afinar.errors import DataError
from afinar.progress import ProgressCallback, ProgressEvent

SYSTEM = ("You write training data for a machine-learning model. You are shown examples of a "
          "task as JSON records and write new records of the same task: the same fields and "
          "format, new and varied content, each correct and self-consistent.")


@dataclass
class Synthesized:
    path: Path
    wanted: int
    kept: int = 0
    calls: int = 0
    proposed: int = 0
    left_out: Counter = field(default_factory=Counter)  # reason -> count
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"output": str(self.path), "wanted": self.wanted, "kept": self.kept,
                "calls": self.calls, "proposed": self.proposed,
                "left_out": dict(self.left_out), "seconds": round(self.seconds, 1)}


def value_schema(values: list, cap: int = 2000) -> dict:
    """A JSON schema that the seeds' values of one field all fit (first value's type)."""
    v = values[0]
    if isinstance(v, bool):
        return {"type": "boolean"}
    if isinstance(v, int | float):
        return {"type": "number"}
    if isinstance(v, str):
        longest = max(len(x) for x in values if isinstance(x, str))
        return {"type": "string", "minLength": 1, "maxLength": min(cap, max(16, 4 * longest))}
    if isinstance(v, list):
        items = [x for lst in values if isinstance(lst, list) for x in lst]
        return {"type": "array", "minItems": 1, "maxItems": max(len(x) for x in values
                                                                if isinstance(x, list)) * 2,
                **({"items": value_schema(items, cap)} if items else {})}
    if isinstance(v, dict):
        return record_schema([x for x in values if isinstance(x, dict)], cap)
    return {}


def record_schema(records: list[dict], cap: int = 2000) -> dict:
    """The fields every record has (required) with their value schemas."""
    common = [k for k in records[0] if all(k in r for r in records)]
    return {"type": "object", "required": common, "additionalProperties": False,
            "properties": {k: value_schema([r[k] for r in records], cap) for k in common}}


def _key(rec: dict) -> str:
    return re.sub(r"\s+", " ", json.dumps(rec, sort_keys=True, ensure_ascii=False)).lower()


def synthesize(seed_path: str, out_path: Path, n: int,
               teacher_factory: Callable[[dict], object], progress: ProgressCallback,
               should_stop: Callable[[], bool], per_call: int = 5, shots: int = 3,
               instructions: str | None = None, seed: int = 0,
               window: int = 16) -> Synthesized:
    """Writes up to n new examples to out_path (see the module doc); `teacher_factory(schema)`
    makes the teacher for the answer's JSON schema. Raises DataError for bad seeds before the
    teacher is loaded."""
    read = read_records(seed_path)
    norm = normalize(read)
    if norm.issues or norm.schema is None:
        raise DataError(f"{seed_path}: {len(norm.issues)} problem(s) in the seed examples",
                        norm.issues, hint=f"fix them first: afinar data check {seed_path}")
    seeds = [r.data for r in read.records]
    if len(seeds) < 2:
        raise DataError(f"{seed_path}: {len(seeds)} seed example(s); give at least 2 (5-20 "
                        f"varied ones work best)")
    schema = norm.schema
    res = Synthesized(out_path, n)
    seen = {_key(s) for s in seeds}
    if out_path.exists():  # a run that stopped: keep what it wrote
        for r in read_records(str(out_path)).records:
            seen.add(_key(r.data))
            res.kept += 1
    answer_schema = {"type": "object", "required": ["examples"], "additionalProperties": False,
                     "properties": {"examples": {
        "type": "array", "minItems": per_call, "maxItems": per_call,
        "items": record_schema(seeds)}}}
    rng = random.Random(seed + res.kept)
    max_calls = 4 * math.ceil(n / per_call)
    started = time.time()
    teacher = teacher_factory(answer_schema) if res.kept < n else None
    try:
        progress(ProgressEvent("synthesize", res.kept, n))
        with open(out_path, "a", encoding="utf-8") as out:
            while res.kept < n and res.calls < max_calls:
                if should_stop():
                    break
                k = min(window, math.ceil((n - res.kept) / per_call), max_calls - res.calls)
                asks = [_ask(rng.sample(seeds, min(shots, len(seeds))), per_call, instructions)
                        for _ in range(k)]
                res.calls += k
                for a in teacher.answer(asks):
                    if a.message is None:
                        res.left_out[f"call: {a.problem.split(':')[0]}"] += 1
                        continue
                    try:
                        got = json.loads(a.message.get("content") or "")["examples"]
                    except (ValueError, TypeError, KeyError):
                        res.left_out["answer not JSON"] += 1
                        continue
                    for ex in got:
                        res.proposed += 1
                        why = _problem(ex, schema, seen)
                        if why:
                            res.left_out[why] += 1
                            continue
                        if res.kept >= n:
                            break
                        seen.add(_key(ex))
                        out.write(json.dumps(ex, ensure_ascii=False) + "\n")
                        res.kept += 1
                out.flush()
                progress(ProgressEvent("synthesize", res.kept, n))
    finally:
        if teacher is not None:
            teacher.close()
    res.seconds = time.time() - started
    return res


def _ask(shown: list[dict], per_call: int, instructions: str | None) -> PromptRecord:
    lines = "\n".join(json.dumps(s, ensure_ascii=False) for s in shown)
    text = (f"{instructions.strip()}\n\n" if instructions else "") + (
        f"Examples:\n{lines}\n\nWrite {per_call} new examples of this task with exactly these "
        f"fields, different from the examples above and from each other. Answer with "
        f'{{"examples": [...]}}.')
    return PromptRecord(0, [{"role": "system", "content": SYSTEM},
                            {"role": "user", "content": text}])


def _problem(ex, schema: str, seen: set[str]) -> str | None:
    """Why a proposed example is left out, or None."""
    if not isinstance(ex, dict):
        return "not a JSON object"
    if detect_schema(ex) != schema:
        return "another schema"
    issues = []
    if normalize_record(RawRecord(0, ex), schema, issues) is None or issues:
        return "invalid"
    if _key(ex) in seen:
        return "duplicate"
    return None
