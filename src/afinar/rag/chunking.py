"""Bedrock's chunking strategies, with their parameter names and ranges (botocore's
`bedrock-agent` model): FIXED_SIZE (maxTokens 1-8192, overlapPercentage 1-99), HIERARCHICAL
(two levels of maxTokens, overlapTokens >= 1), SEMANTIC (maxTokens, bufferSize 0-1,
breakpointPercentileThreshold 50-99; needs an embedding function), NONE (one chunk per document).

Token counts use the embedding model's tokenizer; chunks keep their character span in the
document, so citations can point back to the source text.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from afinar.errors import ConfigError


@dataclass
class Chunk:
    text: str
    start: int  # character offsets in the document
    end: int
    parent: int | None = None  # HIERARCHICAL: index of the parent chunk (parents come first)
    level: int = 0


def _check(name: str, value, lo: int, hi: int | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < lo or (
            hi is not None and value > hi):
        rng = f"{lo}-{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"chunking: '{name}' must be an integer {rng}; got {value!r}")
    return value


def _token_spans(text: str, tokenize) -> list[tuple[int, int]]:
    """Character span of each token (tokenizers' offset mapping)."""
    enc = tokenize(text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
    return [tuple(o) for o in enc["offset_mapping"]]


def fixed_size(text: str, tokenize, max_tokens: int, overlap_pct: int) -> list[Chunk]:
    spans = _token_spans(text, tokenize)
    if not spans:
        return [Chunk(text, 0, len(text))] if text.strip() else []
    step = max(1, max_tokens - max_tokens * overlap_pct // 100)
    out = []
    for s in range(0, len(spans), step):
        window = spans[s:s + max_tokens]
        a, b = window[0][0], window[-1][1]
        out.append(Chunk(text[a:b], a, b))
        if s + max_tokens >= len(spans):
            break
    return out


def hierarchical(text: str, tokenize, parent_tokens: int, child_tokens: int,
                 overlap_tokens: int) -> list[Chunk]:
    """Parents of `parent_tokens`; each split into children of `child_tokens` overlapping by
    `overlap_tokens`. Children are what gets embedded and searched; a hit returns its parent's
    text for context, as Bedrock does."""
    spans = _token_spans(text, tokenize)
    out: list[Chunk] = []
    for s in range(0, max(1, len(spans)), parent_tokens):
        window = spans[s:s + parent_tokens]
        if not window:
            break
        a, b = window[0][0], window[-1][1]
        out.append(Chunk(text[a:b], a, b, level=0))
        parent = len(out) - 1
        step = max(1, child_tokens - overlap_tokens)
        for c in range(0, len(window), step):
            cw = window[c:c + child_tokens]
            out.append(Chunk(text[cw[0][0]:cw[-1][1]], cw[0][0], cw[-1][1], parent, level=1))
            if c + child_tokens >= len(window):
                break
    return out


_SENTENCE = re.compile(r"[^.!?\n]+(?:[.!?]+|\n+|$)")


def semantic(text: str, tokenize, embed: Callable[[list[str]], list[list[float]]],
             max_tokens: int, buffer_size: int, percentile: int) -> list[Chunk]:
    """Split between sentences where the embedding distance to the next sentence (each with
    `buffer_size` neighbours for context) is above the given percentile of all distances;
    chunks longer than max_tokens are cut by size."""
    sents = [(m.start() + len(m.group()) - len(m.group().lstrip()), m.end())
             for m in _SENTENCE.finditer(text) if m.group().strip()]
    if len(sents) <= 1:
        return fixed_size(text, tokenize, max_tokens, 1) if text.strip() else []
    windows = [text[sents[max(0, i - buffer_size)][0]:sents[min(len(sents) - 1,
                                                              i + buffer_size)][1]]
               for i in range(len(sents))]
    vecs = embed(windows)
    dist = [1 - sum(x * y for x, y in zip(vecs[i], vecs[i + 1], strict=True))
            for i in range(len(vecs) - 1)]
    cut = sorted(dist)[min(len(dist) - 1, int(len(dist) * percentile / 100))]
    groups, start = [], 0
    for i, d in enumerate(dist):
        if d > cut:
            groups.append((start, i))
            start = i + 1
    groups.append((start, len(sents) - 1))
    out = []
    for a, b in groups:
        lo, hi = sents[a][0], sents[b][1]
        piece = text[lo:hi]
        if len(_token_spans(piece, tokenize)) > max_tokens:
            out += [Chunk(c.text, lo + c.start, lo + c.end)
                    for c in fixed_size(piece, tokenize, max_tokens, 1)]
        else:
            out.append(Chunk(piece, lo, hi))
    return out


def chunk(text: str, config: dict | None, tokenize, embed=None) -> list[Chunk]:
    """Chunk a document per a Bedrock `chunkingConfiguration` (default: FIXED_SIZE 300 tokens,
    20% overlap, Bedrock's default)."""
    config = config or {"chunkingStrategy": "FIXED_SIZE", "fixedSizeChunkingConfiguration": {
        "maxTokens": 300, "overlapPercentage": 20}}
    strategy = config.get("chunkingStrategy")
    if strategy == "NONE":
        return [Chunk(text, 0, len(text))] if text.strip() else []
    if strategy == "FIXED_SIZE":
        c = config.get("fixedSizeChunkingConfiguration") or {}
        return fixed_size(text, tokenize, _check("maxTokens", c.get("maxTokens"), 1, 8192),
                          _check("overlapPercentage", c.get("overlapPercentage"), 1, 99))
    if strategy == "HIERARCHICAL":
        c = config.get("hierarchicalChunkingConfiguration") or {}
        levels = c.get("levelConfigurations") or []
        if len(levels) != 2:
            raise ConfigError("chunking: HIERARCHICAL takes exactly two levelConfigurations "
                              "(parent, child)")
        p = _check("levelConfigurations[0].maxTokens", levels[0].get("maxTokens"), 1, 8192)
        ch = _check("levelConfigurations[1].maxTokens", levels[1].get("maxTokens"), 1, 8192)
        if ch > p:
            raise ConfigError("chunking: the child level's maxTokens must not exceed the "
                              "parent's")
        return hierarchical(text, tokenize, p, ch,
                            _check("overlapTokens", c.get("overlapTokens"), 1, None))
    if strategy == "SEMANTIC":
        c = config.get("semanticChunkingConfiguration") or {}
        if embed is None:
            raise ConfigError("chunking: SEMANTIC needs the embedding model")
        return semantic(text, tokenize, embed, _check("maxTokens", c.get("maxTokens"), 1, 8192),
                        _check("bufferSize", c.get("bufferSize"), 0, 1),
                        _check("breakpointPercentileThreshold",
                               c.get("breakpointPercentileThreshold"), 50, 99))
    raise ConfigError(f"chunking: unknown chunkingStrategy {strategy!r}; use FIXED_SIZE, "
                      f"HIERARCHICAL, SEMANTIC or NONE")
