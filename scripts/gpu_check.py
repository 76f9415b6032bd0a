"""CUDA path check, for a machine with a GPU (run after scripts/setup.sh installed a CUDA torch):
bf16 selection, a few LoRA steps of the default model with tokens/s, batched generation.

    .venv/bin/python scripts/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    import torch

    from afinar.config import load_settings
    from afinar.data.readers import write_jsonl
    from afinar.demo.stripe_data import generate
    from afinar.inference.generate import generate as gen
    from afinar.inference.generate import load
    from afinar.runtime import choose_dtype
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=tempfile.mkdtemp())
    args = ap.parse_args()
    out = Path(args.out)
    report: dict = {"cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    report["device"] = torch.cuda.get_device_name(0)
    report["dtype"] = str(choose_dtype("auto", "cuda")[0])
    settings = load_settings({"home": str(out / "home")})
    data = out / "train.jsonl"
    write_jsonl(data, generate(256, seed=1))
    cfg = parse_train_config({"train_data": str(data), "output_dir": str(out / "run"),
                              "name": "gpu-check", "max_steps": 20, "batch_size": 16,
                              "checkpoint_every": 10, "learning_rate": 2e-3})
    t = time.time()
    res = train(cfg, settings)
    report["train"] = {"steps": res.steps, "first_loss": res.first_loss,
                       "final_loss": res.train_loss, "tokens_per_s": res.tokens_per_second,
                       "seconds": time.time() - t}
    lm = load("gpu-check", settings)
    prompts = [[{"role": "user", "content": "Stripe API call as JSON:\n\nCancel subscription "
                 f"sub_{i}"}] for i in range(32)]
    t = time.time()
    outs = gen(lm, prompts, max_new_tokens=48, batch_size=32)
    report["generate"] = {"seconds": time.time() - t, "sample": outs[0]}
    print(json.dumps(report, indent=2))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
