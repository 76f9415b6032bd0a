"""`afinar data clean`: remove exact and near duplicates, filter by length, balance classes.

Every removal is recorded with its line and reason; the cleaned file keeps the original records
(fields untouched) in their original order. Near duplicates come from MinHash LSH (datasketch)
confirmed by exact character-5-gram Jaccard, as in `data check`; the first occurrence is kept.
"""

from __future__ import annotations

import json
import random
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from afinar.data.check import _label_of, _norm_text, near_duplicates
from afinar.data.readers import read_records, write_jsonl
from afinar.data.schema import normalize
from afinar.errors import DataError


@dataclass
class CleanSummary:
    input: str
    output: str
    records_in: int
    records_out: int
    removed: dict[str, list] = field(default_factory=dict)  # reason -> lines (or details)
    added: dict[str, int] = field(default_factory=dict)  # upsampling copies per label
    labels_before: dict[str, int] | None = None
    labels_after: dict[str, int] | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def clean_file(path: str | Path, out: str | Path, *, dedup: bool = True,
               near_dup_threshold: float | None = 0.9, min_chars: int | None = None,
               max_chars: int | None = None, balance: Literal["down", "up"] | None = None,
               seed: int = 42) -> CleanSummary:
    read = read_records(path)
    norm = normalize(read)
    if norm.issues:
        raise DataError(f"{path}: {len(norm.issues)} invalid record(s); clean keeps only valid "
                        f"data, so fix them first", norm.issues,
                        hint=f"see: afinar data check {path}")
    if not norm.examples:
        raise DataError(f"{path}: no records to clean")
    raw = {r.line: r.data for r in read.records}
    exs = list(norm.examples)
    s = CleanSummary(str(path), str(out), len(exs), 0)

    def drop(reason: str, lines: list, keep_pred) -> None:
        nonlocal exs
        if lines:
            s.removed[reason] = lines
            exs = [e for e in exs if keep_pred(e)]

    if dedup:
        seen, dup = set(), []
        for e in exs:
            key = _norm_text(e.content_key())
            if key in seen:
                dup.append(e.line)
            seen.add(key)
        gone = set(dup)
        drop("exact_duplicate", dup, lambda e: e.line not in gone)
    if near_dup_threshold is not None:
        pairs = near_duplicates(exs, near_dup_threshold, limit=10**9)
        later = {p["lines"][1]: p for p in pairs}
        drop("near_duplicate", [{"line": ln, "of": p["lines"][0], "similarity": p["similarity"]}
                                for ln, p in sorted(later.items())],
             lambda e: e.line not in later)
    if min_chars is not None:
        short = [e.line for e in exs if len(e.content_key()) < min_chars]
        gone_s = set(short)
        drop(f"shorter_than_{min_chars}_chars", short, lambda e: e.line not in gone_s)
    if max_chars is not None:
        long_ = [e.line for e in exs if len(e.content_key()) > max_chars]
        gone_l = set(long_)
        drop(f"longer_than_{max_chars}_chars", long_, lambda e: e.line not in gone_l)

    records = [raw[e.line] for e in exs]
    if balance or any(_label_of(e) is not None for e in exs):
        labels = [_label_of(e) for e in exs]
        if balance and any(x is None for x in labels):
            missing = [e.line for e, x in zip(exs, labels, strict=True) if x is None]
            raise DataError(f"{path}: cannot balance classes: {len(missing)} record(s) have no "
                            f"label (lines {missing[:10]})")
        if all(x is not None for x in labels):
            s.labels_before = dict(Counter(labels).most_common())
            if balance:
                records, labels = _balance(records, labels, exs, balance, seed, s)
            s.labels_after = dict(Counter(labels).most_common())
    if not records:
        raise DataError(f"{path}: cleaning removed every record", hint="loosen the filters")
    write_jsonl(Path(out), records)
    s.records_out = len(records)
    Path(out).with_suffix(".summary.json").write_text(json.dumps(s.to_dict(), indent=2),
                                                      encoding="utf-8")
    return s


def _balance(records, labels, exs, how, seed, s: CleanSummary):
    by = defaultdict(list)
    for i, lab in enumerate(labels):
        by[lab].append(i)
    if len(by) < 2:
        raise DataError("cannot balance classes: the data has a single label "
                        f"('{next(iter(by))}')")
    rng = random.Random(seed)
    keep: list[int] = []
    if how == "down":
        n = min(len(v) for v in by.values())
        removed = []
        for _lab, idx in sorted(by.items()):
            chosen = set(rng.sample(idx, n))
            keep += chosen
            removed += [exs[i].line for i in idx if i not in chosen]
        s.removed["downsampled"] = sorted(removed)
        keep.sort()
        return [records[i] for i in keep], [labels[i] for i in keep]
    n = max(len(v) for v in by.values())
    out_r, out_l = list(records), list(labels)
    for lab, idx in sorted(by.items()):
        extra = [rng.choice(idx) for _ in range(n - len(idx))]
        if extra:
            s.added[lab] = len(extra)
        out_r += [records[i] for i in extra]
        out_l += [lab] * len(extra)
    return out_r, out_l


def format_summary(s: CleanSummary) -> str:
    lines = [f"{s.input}: {s.records_in} records -> {s.output}: {s.records_out} records"]
    for reason, items in s.removed.items():
        shown = [i["line"] if isinstance(i, dict) else i for i in items[:12]]
        more = f" ... (+{len(items) - 12})" if len(items) > 12 else ""
        lines.append(f"  removed {len(items):>5}  {reason.replace('_', ' ')}: lines "
                     f"{', '.join(map(str, shown))}{more}")
    for lab, n in s.added.items():
        lines.append(f"  added   {n:>5}  copies of label '{lab}' (upsampling)")
    if s.labels_before:
        lines.append(f"  labels before: {s.labels_before}")
        lines.append(f"  labels after:  {s.labels_after}")
    lines.append(f"  summary: {Path(s.output).with_suffix('.summary.json')}")
    return "\n".join(lines)
