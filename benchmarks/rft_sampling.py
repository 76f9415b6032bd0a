"""RFT's sampling: the serving engine (continuous batching, what `afinar train --type rft` uses,
training/rft.py's Sampler) against transformers' batched `generate` (static batches: every row
runs until the longest answer ends), on the same LoRA policy and the same prompts.

    .venv/bin/python benchmarks/rft_sampling.py [--model smollm2-135m-instruct] [--prompts 8]
        [--samples 8] [--max-new-tokens 64] [--temperature 1.0] [--repeats 3]

The prompts are Stripe requests (the demo's task); the policy is the model with a fresh LoRA
adapter (r=16, all linear layers), loaded and sampled as training does (bf16 weights and
autocast where the CPU has fast bf16). Prints the CPU, each method's answer tokens per second (best of --repeats; the
methods alternate, so both see the same machine load) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from defaults_suite import cpu_features  # noqa: E402


def static_generate(model, tok, prompts, n: int, max_new_tokens: int, temperature: float):
    """The baseline: one left-padded `generate` call for all rows."""
    from afinar.training.batching import left_pad

    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    rows = [p.ids for p in prompts for _ in range(n)]
    ids, mask = left_pad(rows, pad)
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True,
                             max_new_tokens=max_new_tokens, temperature=temperature,
                             top_p=1.0, top_k=0, pad_token_id=pad, use_cache=True)
    model.train()
    answers = []
    for row in out[:, ids.shape[1]:].tolist():
        ans = []
        for t in row:
            ans.append(t)
            if t == tok.eos_token_id:
                break
        answers.append(ans)
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=3)
    a = p.parse_args(argv)

    from peft import LoraConfig, get_peft_model

    from afinar.config import load_settings
    from afinar.data.tokenize import render_prompt
    from afinar.demo.stripe_data import SYSTEM, generate
    from afinar.models.loading import load_causal_lm, load_tokenizer
    from afinar.models.registry import resolve_model
    from afinar.runtime import choose_device, choose_dtype
    from afinar.training.rft import Prompt, Sampler

    settings = load_settings()
    path = resolve_model(a.model, settings).path
    device = choose_device()
    dtype, _ = choose_dtype("auto", device)
    tok = load_tokenizer(path)
    model = get_peft_model(load_causal_lm(path, dtype, device), LoraConfig(
        r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))

    def autocast():
        return torch.autocast(device, dtype=torch.bfloat16) if dtype == torch.bfloat16 \
            else torch.autocast(device, enabled=False)

    prompts = []
    for i, r in enumerate(generate(a.prompts, seed=5)):
        msgs = [{"role": "system", "content": SYSTEM},
                {"role": "user", "content": f"{r['instruction']}\n\n{r['input']}"}]
        prompts.append(Prompt(tok(render_prompt(tok, msgs), add_special_tokens=False)
                              ["input_ids"], {}, i + 1))
    rows = a.prompts * a.samples
    print(f"CPU: {cpu_features()}; {os.cpu_count()} cores; {a.model} + LoRA r=16; "
          f"{a.prompts} prompts x {a.samples} samples, max {a.max_new_tokens} new tokens, "
          f"temperature {a.temperature}; autocast {dtype}", flush=True)
    sampler = Sampler(model, tok, settings, rows, a.max_new_tokens, 4096, autocast, seed=0)
    best = {"engine": 0.0, "generate": 0.0}
    try:
        for rep in range(a.repeats):
            for name in best:
                t = time.time()
                if name == "engine":
                    _, answers, _ = sampler.sample(prompts, a.samples, a.max_new_tokens,
                                                   a.temperature)
                else:
                    with autocast():
                        answers = static_generate(model, tok, prompts, a.samples,
                                                  a.max_new_tokens, a.temperature)
                secs = time.time() - t
                n_tok = sum(len(x) for x in answers)
                rate = n_tok / secs
                best[name] = max(best[name], rate)
                print(f"  {name:9s} run {rep + 1}: {n_tok} answer tokens in {secs:.1f} s "
                      f"({rate:.0f} tokens/s)", flush=True)
    finally:
        sampler.close()
    print(f"best: engine {best['engine']:.0f} tokens/s, generate {best['generate']:.0f} "
          f"tokens/s; engine / generate = {best['engine'] / best['generate']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
