"""Training throughput: afinar's trainer vs TRL's SFTTrainer, in one invocation.

Same model (the default, SmolLM2-135M-Instruct), same data (Stripe demo requests), LoRA r16 on
all linear layers, batch 8, completion-only loss, the same number of optimizer steps. Each
engine runs in its own subprocess so peak memory (RSS) is its own. Prints tokens/s, the ratio,
peak RSS, and MFU against this CPU's matmul peaks measured in the same run.

    .venv/bin/python benchmarks/train_throughput.py [--steps 8] [--examples 160]

Also compares afinar's three batchings: length-grouped, packed (one row per batch, per-example
attention) and randomly ordered padded batches, and QLoRA (the base in 4-bit NF4,
bitsandbytes). `--only afinar,afinar_qlora_4bit` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def matmul_peak(dtype_name: str, n: int = 2048, reps: int = 4) -> float:
    """Square-matmul FLOP/s. Where a dtype is emulated (bf16 without AMX/AVX512-BF16 runs at
    ~0.1 GFLOP/s) a 512 probe decides, so the measurement does not take many minutes."""
    import torch
    dt = getattr(torch, dtype_name)

    def rate(m: int, r: int) -> float:
        a, b = torch.randn(m, m, dtype=dt), torch.randn(m, m, dtype=dt)
        a @ b
        t = time.perf_counter()
        for _ in range(r):
            a @ b
        return 2 * m**3 * r / (time.perf_counter() - t)

    probe = rate(512, 2)
    return probe if probe < 5e9 else rate(n, reps)


def make_data(tmp: Path, n: int) -> Path:
    from afinar.data.readers import write_jsonl
    from afinar.demo.stripe_data import generate
    p = tmp / "train.jsonl"
    write_jsonl(p, generate(n, seed=1))
    return p


def worker_afinar(args) -> dict:
    from afinar.config import load_settings
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import Trainer

    cfg = parse_train_config({
        "train_data": args.data, "output_dir": tempfile.mkdtemp() + "/run", "batch_size": 8,
        "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "max_steps": args.steps + 1,
        "checkpoint_every": 0, "grouping": args.grouping, "merge": False, "threads": 2,
        "lora_layers": args.lora_layers, "precision": "auto", "quantize": args.quantize})
    tr = Trainer(cfg, load_settings()).prepare()
    times, toks = [], []

    def progress(ev):
        if ev.stage == "train":
            times.append(time.perf_counter())

    tr.progress = progress
    res = tr.fit()
    # tokens per step from the metrics log; skip the first (warm-up) step
    log = [json.loads(x) for x in (res.output_dir / "training_artifacts" /
                                   "training_log.jsonl").read_text().splitlines()]
    lengths = [len(e) for e in tr.train.encoded]
    from afinar.training.batching import epoch_batches
    batches = epoch_batches(lengths, 8, cfg.seed, 0, cfg.grouping)
    toks = [sum(lengths[i] for i in b) for b in batches[: len(log)]]
    padded = toks if cfg.grouping == "packed" else [
        len(b) * max(lengths[i] for i in b) for b in batches[: len(log)]]
    el = times[-1] - times[1]
    return {"tokens_per_s": sum(toks[1:]) / el, "padded_tokens_per_s": sum(padded[1:]) / el,
            "precision": str(tr.dtype), "steps": len(log) - 1,
            "n_params": sum(p.numel() for n, p in tr.model.named_parameters()
                            if "embed_tokens" not in n and "lora_" not in n)}


def trl_args(steps: int, bf16: bool, lr: float) -> dict:
    """The TRL trainers' settings every comparison shares: batch 8, no saving or logging,
    the CPU, steps + 1 (the first is not timed)."""
    return dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=8,
                max_steps=steps + 1, learning_rate=lr, logging_steps=1000, save_strategy="no",
                report_to="none", use_cpu=True, bf16=bf16, max_length=512,
                dataloader_num_workers=0, seed=42)


def lora_r16():
    from peft import LoraConfig
    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear",
                      task_type="CAUSAL_LM")


def step_timer(times: list[float]):
    """A TrainerCallback appending the time at the end of each optimizer step."""
    from transformers import TrainerCallback

    class Timer(TrainerCallback):
        def on_step_end(self, a, state, control, **kw):
            times.append(time.perf_counter())
    return Timer()


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from afinar.config import load_settings
    from afinar.data.readers import read_records
    from afinar.data.schema import normalize
    from afinar.models.registry import resolve_model
    from afinar.runtime import cpu_has_fast_bf16

    torch.set_num_threads(2)
    settings = load_settings()
    path = resolve_model(settings.default_model, settings).path
    exs = normalize(read_records(args.data)).examples
    ds = Dataset.from_list([{"prompt": e.prompt_messages(),
                             "completion": [{"role": "assistant", "content": e.target()}]}
                            for e in exs])
    tok = AutoTokenizer.from_pretrained(path)
    bf16 = cpu_has_fast_bf16()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    times: list[float] = []
    cfg = SFTConfig(**trl_args(args.steps, bf16, 1e-3), completion_only_loss=True,
                    gradient_checkpointing=args.trl_checkpointing)
    tr = SFTTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                    peft_config=lora_r16(), callbacks=[step_timer(times)])
    # tokens actually fed: count non-padding tokens of the batches the trainer builds
    lengths = [len(x["input_ids"]) for x in tr.train_dataset]
    tr.train()
    el = times[-1] - times[0]
    avg = sum(lengths) / len(lengths)
    return {"tokens_per_s": args.steps * 8 * avg / el, "precision": "bf16" if bf16 else "fp32",
            "steps": args.steps}


def run_worker(engine: str, data: Path, steps: int, extra: list[str],
               script: str = __file__) -> dict:
    """Run `script --worker engine ...` in its own process; its RESULT line as a dict."""
    cmd = [sys.executable, script, "--worker", engine, "--data", str(data), "--steps",
           str(steps)] + extra
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {
        "TOKENIZERS_PARALLELISM": "false"})
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")]
    if r.returncode != 0 or not lines:
        sys.stderr.write(r.stderr[-3000:])
        raise SystemExit(f"{engine} worker failed ({r.returncode})")
    return json.loads(lines[-1][7:])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--examples", type=int, default=160)
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--grouping", default="length")
    ap.add_argument("--only", default="", help="comma-separated subset of the runs")
    ap.add_argument("--lora-layers", type=int, default=None)
    ap.add_argument("--quantize", default="none", help="afinar: 4bit for QLoRA")
    ap.add_argument("--trl-checkpointing", action="store_true",
                    help="TRL's default (activation checkpointing: less memory, slower)")
    args = ap.parse_args()
    if args.worker:
        import warnings
        warnings.filterwarnings("ignore")
        if args.worker == "peak":
            import torch
            torch.set_num_threads(2)
            print("RESULT " + json.dumps({d: matmul_peak(d) for d in ("float32", "bfloat16")}))
            return
        res = (worker_afinar if args.worker == "afinar" else worker_trl)(args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res), flush=True)
        return
    # everything runs in subprocesses: torch's thread pool in this process would otherwise keep
    # a core busy while the workers are measured
    tmp = Path(tempfile.mkdtemp())
    data = make_data(tmp, args.examples)
    peaks = run_worker("peak", data, 0, [])
    peaks.pop("peak_rss_mb", None)
    plan = {
        "trl_sft": ("trl", []),
        "trl_sft_checkpointing": ("trl", ["--trl-checkpointing"]),
        "afinar": ("afinar", []),
        "afinar_packed": ("afinar", ["--grouping", "packed"]),
        "afinar_random_batches": ("afinar", ["--grouping", "random"]),
        "afinar_top15_layers": ("afinar", ["--lora-layers", "15"]),
        "afinar_qlora_4bit": ("afinar", ["--quantize", "4bit"]),
    }
    only = [k for k in args.only.split(",") if k]
    if unknown := set(only) - set(plan):
        ap.error(f"unknown runs {sorted(unknown)}; choose from {sorted(plan)}")
    runs = {k: run_worker(e, data, args.steps, x) for k, (e, x) in plan.items()
            if not only or k in only}
    n = next(r["n_params"] for k, r in runs.items() if k.startswith("afinar"))
    best_peak = max(peaks.values())
    print(f"matmul peak (2048^2, 2 threads): fp32 {peaks['float32'] / 1e9:.1f} GFLOP/s, "
          f"bf16 {peaks['bfloat16'] / 1e9:.1f} GFLOP/s")
    print(f"{'engine':<24}{'precision':>12}{'tokens/s':>10}{'vs TRL':>8}{'peak RSS MB':>13}"
          f"{'MFU(4N)':>9}")
    # TRL at its fastest here: no checkpointing (or the first run when TRL was left out)
    base = runs.get("trl_sft", next(iter(runs.values())))["tokens_per_s"]
    for k, r in runs.items():
        mfu = 4 * n * r["tokens_per_s"] / best_peak
        print(f"{k:<24}{r['precision'].replace('torch.', ''):>12}{r['tokens_per_s']:>10.1f}"
              f"{r['tokens_per_s'] / base:>7.2f}x{r['peak_rss_mb']:>13.0f}{mfu * 100:>8.1f}%")
    print("MFU(4N): LoRA needs a forward (2N) and an input-gradient backward (2N) per token, no "
          "weight gradients; N = non-embedding parameters; over the best matmul peak measured "
          "above (bf16 if it is faster here, else fp32). The top-15-layers run does less "
          "backward work per token, so its MFU is overstated by this convention.")
    rnd = runs.get("afinar_random_batches")
    for k, label in (("afinar", "length-grouped"), ("afinar_packed", "packed")):
        if rnd and k in runs:
            g = runs[k]
            print(f"{label} vs random batches: {g['tokens_per_s'] / rnd['tokens_per_s']:.2f}x "
                  f"real tokens/s (padding share: {label} "
                  f"{1 - g['tokens_per_s'] / g['padded_tokens_per_s']:.1%}, random "
                  f"{1 - rnd['tokens_per_s'] / rnd['padded_tokens_per_s']:.1%})")


if __name__ == "__main__":
    main()
