"""Deterministic train/validation/test splits, stratified by label when the data has one."""

from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from afinar.data.check import _label_of
from afinar.data.readers import read_records, write_jsonl
from afinar.data.schema import normalize
from afinar.errors import ConfigError, DataError


def split_indices(labels: list[str | None], ratios: tuple[float, float, float], seed: int
                  ) -> tuple[list[int], list[int], list[int]]:
    if any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(f"split ratios must be >= 0 and sum to 1, got {ratios}",
                          hint="e.g. --ratios 0.8 0.1 0.1")
    rng = random.Random(seed)
    groups: dict[str | None, list[int]] = defaultdict(list)
    stratify = all(lab is not None for lab in labels)
    for i, lab in enumerate(labels):
        groups[lab if stratify else None].append(i)
    keys = sorted(groups, key=str)
    n_test = _allocate(round(len(labels) * ratios[2]), [len(groups[k]) for k in keys])
    n_val = _allocate(round(len(labels) * ratios[1]),
                      [len(groups[k]) - t for k, t in zip(keys, n_test, strict=True)])
    train, val, test = [], [], []
    for key, nt, nv in zip(keys, n_test, n_val, strict=True):
        idx = groups[key]
        rng.shuffle(idx)
        test += idx[:nt]
        val += idx[nt:nt + nv]
        train += idx[nt + nv:]
    return sorted(train), sorted(val), sorted(test)


def _allocate(total: int, sizes: list[int]) -> list[int]:
    """Split `total` over groups proportionally to their sizes (largest remainder), so a
    stratified split still has exactly the requested overall counts."""
    n = sum(sizes)
    if n == 0:
        return [0] * len(sizes)
    exact = [total * s / n for s in sizes]
    out = [min(int(e), s) for e, s in zip(exact, sizes, strict=True)]
    order = sorted(range(len(sizes)), key=lambda i: -(exact[i] - int(exact[i])))
    for i in order:
        if sum(out) >= total:
            break
        if out[i] < sizes[i]:
            out[i] += 1
    return out


def split_file(path: str | Path, out_dir: str | Path,
               ratios: tuple[float, float, float] = (0.8, 0.1, 0.1), seed: int = 42
               ) -> dict[str, Path | int | bool]:
    read = read_records(path)
    norm = normalize(read)
    if norm.issues:
        raise DataError(f"{path}: {len(norm.issues)} problem(s); fix them before splitting",
                        norm.issues, hint=f"run: afinar data check {path}")
    exs = norm.examples
    labels = [_label_of(e) for e in exs]
    tr, va, te = split_indices(labels, ratios, seed)
    out = Path(out_dir)
    result: dict[str, Path | int | bool] = {"stratified": all(x is not None for x in labels)}
    for name, idx in (("train", tr), ("validation", va), ("test", te)):
        p = out / f"{name}.jsonl"
        write_jsonl(p, [exs[i].raw for i in idx])
        result[name] = p
        result[f"n_{name}"] = len(idx)
    return result
