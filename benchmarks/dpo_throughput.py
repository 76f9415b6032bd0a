"""Preference-tuning throughput: afinar's DPO (its own loop, training/preference.py) vs TRL's
DPOTrainer, in one invocation.

Same model (the default, SmolLM2-135M-Instruct), same pairs (Stripe requests: the right call
preferred over a corrupted one, as benchmarks/methods_stripe.py makes them), LoRA r16 on all
linear layers, batch 8 pairs, sigmoid DPO loss with beta 0.1, the same number of optimizer
steps, bf16 autocast where the CPU runs it fast. Each engine runs in its own subprocess so peak
memory (RSS) is its own. Counted: pairs per second over the steps after the first (set-up,
reference log-probs and the first step excluded), and the set-up time to the first step.

TRL runs twice: as it comes (the reference by disabling the adapter, one extra forward per
step) and with `precompute_ref_log_probs=True` (what afinar does).

    .venv/bin/python benchmarks/dpo_throughput.py [--steps 8] [--pairs 160]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def make_pairs(tmp: Path, n: int) -> Path:
    from methods_stripe import _prompt, corrupt

    from afinar.data.readers import write_jsonl
    from afinar.data.schema import serialize_value
    from afinar.demo.stripe_data import generate

    rng = random.Random(3)
    rows = [{"prompt": _prompt(r), "chosen": serialize_value(r["output"]),
             "rejected": serialize_value(corrupt(r["output"], rng))}
            for r in generate(n, seed=2)]
    p = tmp / "pairs.jsonl"
    write_jsonl(p, rows)
    return p


def worker_afinar(args) -> dict:
    from afinar.config import load_settings
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import Trainer

    t0 = time.perf_counter()
    cfg = parse_train_config({
        "type": "dpo", "train_data": args.data, "output_dir": tempfile.mkdtemp() + "/run",
        "batch_size": 8, "lora_r": 16, "lora_alpha": 32, "lora_dropout": 0.0,
        "learning_rate": 1e-4, "max_steps": args.steps + 1, "checkpoint_every": 0,
        "merge": False, "threads": 2, "lora_layers": None, "precision": "auto",
        "validation_split": 0})
    tr = Trainer(cfg, load_settings()).prepare()
    times = []

    def progress(ev):
        if ev.stage == "train":
            times.append(time.perf_counter())

    tr.progress = progress
    tr.fit()
    el = times[-1] - times[1]
    return {"pairs_per_s": args.steps * 8 / el, "setup_s": times[1] - t0 - (times[1] - times[0]),
            "precision": str(tr.dtype).replace("torch.", "")}


def worker_trl(args) -> dict:
    import torch
    from datasets import Dataset
    from train_throughput import lora_r16, step_timer, trl_args
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from afinar.config import load_settings
    from afinar.data.readers import read_records
    from afinar.models.registry import resolve_model
    from afinar.runtime import cpu_has_fast_bf16

    t0 = time.perf_counter()
    torch.set_num_threads(2)
    settings = load_settings()
    path = resolve_model(settings.default_model, settings).path
    rows = [r.data for r in read_records(args.data).records]
    ds = Dataset.from_list([{"prompt": r["prompt"],
                             "chosen": [{"role": "assistant", "content": r["chosen"]}],
                             "rejected": [{"role": "assistant", "content": r["rejected"]}]}
                            for r in rows])
    tok = AutoTokenizer.from_pretrained(path)
    bf16 = cpu_has_fast_bf16()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    times: list[float] = []
    cfg = DPOConfig(**trl_args(args.steps, bf16, 1e-4), beta=0.1,
                    precompute_ref_log_probs=args.precompute, gradient_checkpointing=False)
    tr = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok,
                    peft_config=lora_r16(), callbacks=[step_timer(times)])
    tr.train()
    el = times[-1] - times[0]
    return {"pairs_per_s": args.steps * 8 / el, "setup_s": times[0] - t0 - el / args.steps,
            "precision": "bfloat16" if bf16 else "float32"}


def main() -> None:
    from defaults_suite import cpu_features
    from train_throughput import run_worker

    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--pairs", type=int, default=160)
    ap.add_argument("--worker")
    ap.add_argument("--data")
    ap.add_argument("--precompute", action="store_true")
    args = ap.parse_args()
    if args.worker:
        import warnings
        warnings.filterwarnings("ignore")
        res = (worker_afinar if args.worker == "afinar" else worker_trl)(args)
        res["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print("RESULT " + json.dumps(res), flush=True)
        return
    data = make_pairs(Path(tempfile.mkdtemp()), args.pairs)
    plan = {"trl_dpo": ("trl", []), "trl_dpo_precomputed": ("trl", ["--precompute"]),
            "afinar_dpo": ("afinar", [])}
    runs = {k: run_worker(e, data, args.steps, x, script=__file__)
            for k, (e, x) in plan.items()}
    print(f"CPU: {cpu_features()}; {os.cpu_count()} cores; {args.pairs} pairs, "
          f"{args.steps} timed steps of 8 pairs")
    print(f"{'engine':<22}{'precision':>10}{'pairs/s':>9}{'vs TRL':>8}{'set-up s':>10}"
          f"{'peak RSS MB':>13}")
    base = runs["trl_dpo"]["pairs_per_s"]
    for k, r in runs.items():
        print(f"{k:<22}{r['precision']:>10}{r['pairs_per_s']:>9.2f}"
              f"{r['pairs_per_s'] / base:>7.2f}x{r['setup_s']:>10.1f}{r['peak_rss_mb']:>13.0f}")


if __name__ == "__main__":
    main()
