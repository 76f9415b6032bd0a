"""Deterministic batch order and collation.

Three ways to batch, all with no compute on padding or little of it:
- "length": shuffle, cut into mega-batches of 50 batches, sort each by length bucket
  (LENGTH_BUCKET tokens; a stable sort, so examples within a bucket stay shuffled), cut into
  batches, shuffle the batches. Padding stays small (under a bucket per row) and the order
  depends only on (seed, epoch), which is what makes resuming exact: a resumed run rebuilds the
  epoch's order and skips the batches already done. Buckets, not exact lengths: where classes
  differ by a token or two ("Weather in Paris?" / "Time in Paris?"), an exact sort made every
  batch one class, and a tiny model trained on such batches never learned the choice (it did
  with shuffled batches).
- "packed": shuffled batches whose examples are concatenated into one row (no padding at all),
  with position ids restarting at each example; transformers turns the restarts into a
  block-diagonal attention mask, so examples never attend to each other.
- "random": shuffled batches padded to their longest example (the baseline).
"""

from __future__ import annotations

import random

import torch

from afinar.data.tokenize import IGNORE_INDEX, Encoded

MEGABATCH = 50
LENGTH_BUCKET = 16


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int,
                  grouping: str = "length", rank: int = 0, world: int = 1) -> list[list[int]]:
    rng = random.Random(seed * 100_003 + epoch)
    idx = list(range(len(lengths)))
    rng.shuffle(idx)
    if grouping == "length":  # "packed" and "random" keep the shuffled membership
        batches = []
        step = batch_size * MEGABATCH
        for s in range(0, len(idx), step):
            mega = sorted(idx[s:s + step], key=lambda i: -(lengths[i] // LENGTH_BUCKET))
            batches += [mega[j:j + batch_size] for j in range(0, len(mega), batch_size)]
        rng.shuffle(batches)
    else:
        batches = [idx[j:j + batch_size] for j in range(0, len(idx), batch_size)]
    if world > 1:
        n = len(batches) // world * world  # equal count per rank keeps DDP in lock-step
        batches = batches[rank:n:world]
    return batches


def collate(items: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item. attention_mask is None when nothing was padded, which
    lets SDPA take its causal fast path."""
    n = max(len(x) for x in items)
    ids = torch.full((len(items), n), pad_id, dtype=torch.long)
    labels = torch.full((len(items), n), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(items), n), dtype=torch.long)
    for i, x in enumerate(items):
        ids[i, : len(x)] = torch.tensor(x.input_ids)
        labels[i, : len(x)] = torch.tensor(x.labels)
        mask[i, : len(x)] = 1
    padded = bool((mask == 0).any())
    out = {"input_ids": ids, "labels": labels, "attention_mask": mask if padded else None,
           "n_tokens": int(mask.sum())}
    if any(x.position_ids is not None for x in items):
        pos = torch.zeros((len(items), n), dtype=torch.long)
        for i, x in enumerate(items):
            p = x.position_ids if x.position_ids is not None else range(len(x))
            pos[i, : len(x)] = torch.tensor(list(p))
            pos[i, len(x):] = torch.arange(len(x), n)  # padding continues the last document
        out["position_ids"] = pos
    return out


def collate_packed(items: list[Encoded]) -> dict[str, torch.Tensor]:
    """One row holding every item back to back; position ids restart per item. The first label
    of each item is masked so no item learns to predict the next one's first token."""
    ids, labels, pos = [], [], []
    for x in items:
        ids += x.input_ids
        labels += [IGNORE_INDEX] + list(x.labels[1:])
        pos += x.position_ids if x.position_ids is not None else range(len(x))
    return {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([pos]), "attention_mask": None, "n_tokens": len(ids)}


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts for generation, left-padded so the answers start together: (ids, mask)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = 1
    return ids, mask
