"""The key/value cache of a running batch: rows of different lengths in one left-padded frame.

Every row's keys and values sit right-aligned in one `DynamicCache` of shape
`[rows, heads, frame, head_dim]`, with a `[rows, frame]` attention mask that is 0 on each row's
padding; each row keeps its own position ids (its real token count), so padding never shifts a
row's positions. That frame is what `generate` builds for a left-padded batch; here it changes
between decoding steps:

- `merge`: rows that finished their prefill join (the shorter frame is padded on the left);
- `select`: rows that finished leave (the cache's own `batch_select_indices`);
- `trim`: columns that are padding in every remaining row are dropped, so a long prompt that
  has left stops costing attention.

Only caches whose layers are all full-attention `DynamicLayer`s can be rearranged this way
(`joinable`); a sliding-window or recurrent model's batch runs as a closed group instead.
"""

from __future__ import annotations

import torch


def new_cache(model):
    from transformers import DynamicCache

    return DynamicCache(config=model.config)


def joinable(cache) -> bool:
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    return bool(layers) and all(type(layer) is DynamicLayer and layer.is_initialized
                                for layer in layers)


def _map(cache, fn) -> None:
    for layer in cache.layers:
        layer.keys, layer.values = fn(layer.keys), fn(layer.values)


def _pad_left(cache, mask: torch.Tensor, n: int) -> torch.Tensor:
    """Pad the frame with `n` empty columns on the left; returns the new mask."""
    if n <= 0:
        return mask

    def pad(t):
        z = t.new_zeros(t.shape[:2] + (n,) + t.shape[3:])
        return torch.cat([z, t], dim=2)

    _map(cache, pad)
    return torch.cat([mask.new_zeros(mask.shape[0], n), mask], dim=1)


def merge(a, a_mask: torch.Tensor, b, b_mask: torch.Tensor) -> tuple[object, torch.Tensor]:
    """Rows of cache `b` appended to cache `a` (in place in `a`); returns (a, mask)."""
    la, lb = a_mask.shape[1], b_mask.shape[1]
    a_mask = _pad_left(a, a_mask, lb - la)
    b_mask = _pad_left(b, b_mask, la - lb)
    for x, y in zip(a.layers, b.layers, strict=True):
        x.keys = torch.cat([x.keys, y.keys], dim=0)
        x.values = torch.cat([x.values, y.values], dim=0)
    return a, torch.cat([a_mask, b_mask], dim=0)


def select(cache, mask: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Keep only rows `keep` (in that order), then trim; returns the new mask."""
    idx = torch.tensor(keep, dtype=torch.long, device=mask.device)
    cache.batch_select_indices(idx)  # transformers' own, for every kind of layer
    mask = mask.index_select(0, idx)
    return trim(cache, mask) if joinable(cache) else mask


def trim(cache, mask: torch.Tensor) -> torch.Tensor:
    """Drop the leading columns that are padding in every row; returns the new mask."""
    used = mask.any(dim=0).nonzero()
    start = int(used[0]) if len(used) else mask.shape[1]
    if start == 0:
        return mask
    _map(cache, lambda t: t[:, :, start:].contiguous())
    return mask[:, start:]
