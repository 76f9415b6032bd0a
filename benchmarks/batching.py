"""Continuous batching on the embedded path, in one process, on the default model (greedy).

One workload — N chat requests whose output lengths vary (8 to 96 tokens: short answers mixed
with long ones, as a server sees them) — run four ways on the same loaded model:

(1-3 run on the engine's own loaded model, so only the scheduling differs.)

1. one at a time: `generate` per request (the single-stream baseline);
2. static batches: `generate` on left-padded batches of `--batch` (what afinar's engine did
   before: every request of a batch waits for its longest one);
3. transformers' continuous batching (`generate_batch`, paged cache), when it runs here;
4. afinar's engine (inference/engine.py): all requests submitted at once.

Then, for the engine only:
- head-of-line blocking: a long request (`--long` tokens) is running when short ones arrive;
  the short ones' latency with the engine against what static batching would give (the
  short request waits for the long batch to end);
- mixed adapters: two LoRA adapters and the base, requests interleaved, in one batch, against
  the same requests served one model after the other;
- decode tokens/s in bf16 and fp32, one stream and `--batch` streams (the CPU's features are
  printed with the figures: bf16 is fast only with AVX512-BF16 or AMX).

    .venv/bin/python benchmarks/batching.py [--requests 32] [--batch 16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def cpu_features() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split("flags")[1].split("\n")[0].split())
    except (OSError, IndexError):
        return "unknown CPU"
    have = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{os.cpu_count()} cores, " + (", ".join(have) or "no AVX2")


def workload(n: int) -> list[tuple[str, int]]:
    lengths = [8, 96, 16, 64, 24, 48, 12, 80]
    return [(f"Write about the number {i} in a few words." if i % 2 else
             f"Tell me a long story about the number {i}, with details.", lengths[i % 8])
            for i in range(n)]


def prompt_ids(tok, text: str) -> list[int]:
    from afinar.data.tokenize import render_prompt

    return tok(render_prompt(tok, [{"role": "user", "content": text}]),
               add_special_tokens=False)["input_ids"]


def useful(row: list[int], limit: int, eos: set[int]) -> int:
    """The tokens a request gets: up to its first EOS (included), at most its limit."""
    for i, t in enumerate(row[:limit]):
        if t in eos:
            return i + 1
    return min(len(row), limit)


def eos_ids(model, tok) -> set[int]:
    return {i for i in (tok.eos_token_id, model.generation_config.eos_token_id)
            if isinstance(i, int)}


@torch.inference_mode()
def one_at_a_time(model, tok, work) -> tuple[float, int]:
    t, n = time.perf_counter(), 0
    for text, m in work:
        ids = torch.tensor([prompt_ids(tok, text)])
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                             max_new_tokens=m, pad_token_id=tok.pad_token_id,
                             temperature=None, top_p=None, top_k=None)
        n += useful(out[0, ids.shape[1]:].tolist(), m, eos_ids(model, tok))
    return n / (time.perf_counter() - t), n


@torch.inference_mode()
def static(model, tok, work, batch: int) -> tuple[float, int]:
    """Batches in arrival order, each run until all its rows end (rows that are done are
    padding, as in `generate`, and a short request waits for the longest of its batch)."""
    t, n = time.perf_counter(), 0
    for s in range(0, len(work), batch):
        part = work[s:s + batch]
        enc = [prompt_ids(tok, text) for text, _ in part]
        w = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (w - len(e)) + e for e in enc])
        mask = torch.tensor([[0] * (w - len(e)) + [1] * len(e) for e in enc])
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                             max_new_tokens=max(x for _, x in part),
                             pad_token_id=tok.pad_token_id, temperature=None, top_p=None,
                             top_k=None)
        n += sum(useful(out[i, w:].tolist(), m, eos_ids(model, tok))
                 for i, (_, m) in enumerate(part))
    return n / (time.perf_counter() - t), n


def hf_continuous(model, tok, work, batch: int) -> tuple[float, int] | str:
    from transformers import GenerationConfig

    try:
        cfg = GenerationConfig(do_sample=False, max_new_tokens=max(m for _, m in work),
                               eos_token_id=sorted(eos_ids(model, tok)),
                               pad_token_id=tok.pad_token_id)
        inputs = [prompt_ids(tok, text) for text, _ in work]
        with model.continuous_batching_context_manager(generation_config=cfg) as mgr:
            t = time.perf_counter()
            for ids, (_, m) in zip(inputs, work, strict=True):
                mgr.add_request(ids, max_new_tokens=m)
            n = 0
            for _ in work:
                out = mgr.get_result(timeout=1800)
                n += len(out.generated_tokens)
            el = time.perf_counter() - t
        return n / el, n
    except Exception as e:  # an API that moves between releases: report, do not fail
        return f"did not run here: {type(e).__name__}: {str(e)[:160]}"


def engine_run(engine, model_id: str, work, adapters=None) -> tuple[float, int]:
    from afinar.inference.requests import GenRequest

    t = time.perf_counter()
    reqs = [engine.submit(GenRequest(
        model=(adapters[i % len(adapters)] if adapters else model_id), max_tokens=m,
        messages=[{"role": "user", "content": text}], stop=[]))
        for i, (text, m) in enumerate(work)]
    n = sum(r.result(timeout=1800).output_tokens for r in reqs)
    return n / (time.perf_counter() - t), n


def head_of_line(engine, model_id: str, long: int, static_tps: float) -> tuple[float, float]:
    """Short requests (16 tokens) sent while a long one runs: their mean latency, and what a
    static batch would have made them wait (the long request's remaining time)."""
    from afinar.inference.requests import GenRequest

    msg = [{"role": "user", "content": "Tell me a very long story about a lighthouse."}]
    big = engine.submit(GenRequest(model=model_id, max_tokens=long, messages=msg))
    while big.output_tokens < 8:
        time.sleep(0.01)
    t = time.perf_counter()
    small = [engine.submit(GenRequest(model=model_id, max_tokens=16, messages=[
        {"role": "user", "content": f"Say hi to {i}."}])) for i in range(4)]
    lat = []
    for r in small:
        r.result(timeout=1800)
        lat.append(time.perf_counter() - t)
    left_when_small_done = long - big.output_tokens
    big.result(timeout=1800)
    return sum(lat) / len(lat), left_when_small_done


def in_thread(fn, *args):
    """Run torch work on a thread that then ends: a live thread that has run parallel torch
    work keeps an OpenMP team that slows the engine's own thread (see Engine.resolve)."""
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--long", type=int, default=256)
    a = ap.parse_args()
    torch.set_num_threads(os.cpu_count() or 2)

    from serve_throughput import make_adapters

    from afinar.config import Settings, load_settings
    from afinar.inference.engine import Engine
    from afinar.models.registry import BUILTIN_MODELS, ensure_builtin

    settings = load_settings()
    base_dir = in_thread(ensure_builtin, BUILTIN_MODELS["smollm2-135m-instruct"], settings)
    home = Path(tempfile.mkdtemp(prefix="afinar-batching-"))
    names = in_thread(make_adapters, home, base_dir, 2)
    settings = Settings(home=home, cache_dir=settings.cache_dir)
    work = workload(a.requests)
    print(f"CPU: {cpu_features()}; {a.requests} requests, at most 8-96 tokens each "
          f"(until EOS), greedy; tokens/s = tokens the requests got / wall time")

    def baselines(precision: str):
        """On the model as the engine loads it (prepacked bf16 layers included), with no
        engine thread alive: only the scheduling differs."""
        from afinar.data.tokenize import ensure_chat_template
        from afinar.inference import fastlinear
        from afinar.models.loading import load_causal_lm, load_tokenizer

        model = load_causal_lm(str(base_dir), getattr(torch, {"bf16": "bfloat16",
                                                              "fp32": "float32"}[precision]))
        if precision == "bf16":
            fastlinear.pack(model.eval())
        tok = load_tokenizer(str(base_dir), padding_side="left")
        ensure_chat_template(tok)
        return (one_at_a_time(model, tok, work[:6]), static(model, tok, work, a.batch),
                hf_continuous(model, tok, work, a.batch))

    for precision in ("bf16", "fp32"):
        single, st, hf = in_thread(baselines, precision)
        engine = Engine(settings, max_batch=a.batch, precision=precision, batch_window_ms=5)
        engine_run(engine, str(base_dir), work[:2])  # loads and warms up
        ours = engine_run(engine, str(base_dir), work)
        print(f"\n[{precision}] tokens/s (tokens generated: one at a time {single[1]} for 6 "
              f"requests, static {st[1]}, engine {ours[1]})")
        print(f"  one at a time (generate)        {single[0]:8.1f}")
        print(f"  static batches of {a.batch:<3} (generate) {st[0]:8.1f}")
        print("  transformers continuous batching " + (f"{hf[0]:7.1f}" if isinstance(hf, tuple)
                                                      else hf))
        print(f"  afinar engine (continuous)      {ours[0]:8.1f}   "
              f"({ours[0] / st[0]:.2f}x static, {ours[0] / single[0]:.2f}x one at a time)")
        if precision == "bf16":
            lat, left = head_of_line(engine, str(base_dir), a.long, st[0])
            per_tok = 1 / single[0]
            print(f"  head of line: 4 short requests (16 tokens) sent while a {a.long}-token "
                  f"request runs: mean latency {lat:.2f} s; the long one still had {left} "
                  f"tokens to go (static batching: they would wait ~{left * per_tok:.1f} s "
                  f"for it first)")
            mixed = engine_run(engine, str(base_dir), work, adapters=names + [str(base_dir)])
            t = time.perf_counter()
            n = 0
            for model_id in names + [str(base_dir)]:
                part = [w for i, w in enumerate(work) if (names + [str(base_dir)])[i % 3] ==
                        model_id]
                n += engine_run(engine, model_id, part)[1]
            serial = n / (time.perf_counter() - t)
            print(f"  two LoRA adapters + base interleaved in one batch: {mixed[0]:.1f} tokens/s"
                  f"; the same served one model after the other: {serial:.1f} "
                  f"(max rows together: {engine.stats['max_batch_seen']})")
        engine.close()


if __name__ == "__main__":
    main()
