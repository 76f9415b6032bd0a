"""Constrained decoding's cost: output tokens/s of the serving engine with and without a grammar
(a JSON schema, and a forced tool call), at 1 and 8 concurrent requests, on the default model;
the ratio constrained / unconstrained is measured in the same run (a JSON schema against the
same prompt unconstrained; a forced tool call against the same prompt with tool_choice auto,
whose output is free). Then the grammar libraries
alone: the time to compute one token mask with llguidance (used) and, when it is installed,
xgrammar, over the same schema and the same tokens.

    .venv/bin/python benchmarks/constrained.py [--max-tokens 48] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

SCHEMA = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer"},
    "email": {"type": "string"}, "tags": {"type": "array", "items": {"type": "string"}}},
    "required": ["name", "age", "email", "tags"], "additionalProperties": False}
TOOL = [{"name": "create_customer", "description": "Create a customer", "parameters": SCHEMA}]


def cpu_flags() -> str:
    try:
        flags = open("/proc/cpuinfo").read().split("flags", 1)[1].split("\n", 1)[0]
    except (OSError, IndexError):
        return platform.processor()
    return " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags.split())


def run(engine, model: str, n: int, max_tokens: int, kind: str) -> tuple[float, int]:
    from afinar.inference.requests import GenRequest

    msgs = [{"role": "user", "content": "Invent a customer (name, age, email, tags) as JSON."}]
    kw = {"none": {}, "json_schema": {"json_schema": SCHEMA},
          # the same prompt (tools rendered) without and with the grammar
          "tools_auto": {"tools": TOOL, "tool_choice": "auto"},
          "tool_call": {"tools": TOOL, "tool_choice": "required",
                        "parallel_tool_calls": False}}[kind]
    t = time.time()
    # greedy: concurrent requests share a batch (a seeded sampled request runs alone)
    reqs = [engine.submit(GenRequest(model=model, messages=[{
        "role": "user", "content": msgs[0]["content"] + f" Customer number {i}."}],
        max_tokens=max_tokens, **kw)) for i in range(n)]
    toks = sum(r.result(600).output_tokens for r in reqs)
    return toks / (time.time() - t), toks


def mask_cost(model_dir: str, steps: int = 200) -> dict:
    """ms per token mask, each library on the same JSON schema, following one valid JSON."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = json.dumps({"name": "Ana López", "age": 34, "email": "ana@example.com",
                       "tags": ["vip", "es", "newsletter"]}, ensure_ascii=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out = {}
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt

    lt_tok = llguidance.hf.from_tokenizer(tok)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(
        SCHEMA | {"x-guidance": {"whitespace_flexible": False, "key_separator": ": ",
                                 "item_separator": ", "}})
    bm = lt.allocate_token_bitmask(1, lt_tok.vocab_size)
    t, n = time.time(), 0
    for _ in range(max(1, steps // len(ids))):
        m = llguidance.LLMatcher(lt_tok, grammar)
        for i in ids:
            lt.fill_next_token_bitmask(m, bm, 0)
            m.consume_token(i)
            n += 1
    out["llguidance_ms_per_token"] = round((time.time() - t) / n * 1000, 3)
    try:
        import xgrammar as xgr
    except Exception as e:  # not installed: it pulls triton on Linux x86-64
        out["xgrammar"] = f"not measured ({type(e).__name__})"
        return out
    info = xgr.TokenizerInfo.from_huggingface(tok)
    t0 = time.time()
    compiled = xgr.GrammarCompiler(info).compile_json_schema(json.dumps(SCHEMA),
                                                              any_whitespace=False)
    out["xgrammar_compile_ms"] = round((time.time() - t0) * 1000, 1)
    bm = xgr.allocate_token_bitmask(1, info.vocab_size)
    t, n = time.time(), 0
    for _ in range(max(1, steps // len(ids))):
        m = xgr.GrammarMatcher(compiled)
        for i in ids:
            m.fill_next_token_bitmask(bm)
            m.accept_token(i)
            n += 1
    out["xgrammar_ms_per_token"] = round((time.time() - t) / n * 1000, 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    a = ap.parse_args()
    from afinar.config import load_settings
    from afinar.inference.engine import Engine
    from afinar.models.registry import resolve_model

    settings = load_settings()
    engine = Engine(settings)
    print(f"CPU: {cpu_flags()}; model {a.model}; up to {a.max_tokens} new tokens, greedy")
    run(engine, a.model, 1, 4, "json_schema")  # load the model and the grammar tokenizer
    rows = []
    for n in (1, 8):
        base = {}
        for kind, vs in (("none", "none"), ("json_schema", "none"), ("tools_auto", "tools_auto"),
                         ("tool_call", "tools_auto")):
            best = max(run(engine, a.model, n, a.max_tokens, kind)[0] for _ in range(a.rounds))
            base.setdefault(kind, best)
            rows.append((n, kind, best, best / base[vs], vs))
    print(f"{'concurrent':>10} {'grammar':>12} {'tokens/s':>9} {'ratio':>6}  baseline "
          f"(engine stats: {engine.stats})")
    for n, kind, tps, ratio, vs in rows:
        print(f"{n:>10} {kind:>12} {tps:>9.1f} {ratio:>6.2f}  {vs}")
    print("mask cost:", mask_cost(resolve_model(a.model, settings).path))
    engine.close()


if __name__ == "__main__":
    main()
