"""The main demo: instruction fine-tuning of the default model into a Stripe API-call writer,
evaluated against the untouched base model on held-out requests.

Steps: generate data -> data check -> split -> LoRA fine-tuning -> base-vs-tuned evaluation ->
report (Markdown + JSON). Library code: reports through callbacks, prints nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

from afinar.config import Settings
from afinar.data.check import check_file
from afinar.data.readers import write_jsonl
from afinar.data.split import split_file
from afinar.demo import output_dir
from afinar.demo.stripe_data import generate
from afinar.errors import DataError
from afinar.models.registry import resolve_model
from afinar.progress import ProgressCallback, null_progress
from afinar.training.config import parse_train_config


@dataclass
class DemoOptions:
    train_examples: int = 400
    validation_examples: int = 20
    test_examples: int = 100
    # "auto": what `afinar train` chooses from the data and model (training/auto.py), as a new
    # user's run gets it
    epochs: int | str = "auto"
    batch_size: int | str = "auto"
    learning_rate: float | str = "auto"
    lora_r: int | str = "auto"
    lora_layers: int | str | None = "auto"
    max_length: int = 256
    seed: int = 0
    base_model: str | None = None
    output_dir: str | None = None
    eval_batch_size: int = 16


def run_demo(opts: DemoOptions, settings: Settings, progress: ProgressCallback = null_progress,
             say: Callable[[str], None] = lambda s: None) -> dict:
    # torch-heavy modules load here, not at import: the CLI imports this module to build
    # its parser, and the server's process must stay free of torch
    from afinar.eval.compare import evaluate, write_report
    from afinar.models.loading import load_tokenizer
    from afinar.training.metrics import read_training_csv
    from afinar.training.trainer import train

    t_start = time.time()
    base = opts.base_model or settings.default_model
    out, stamp = output_dir(settings, opts.output_dir, "stripe")
    timings: dict[str, float] = {}

    say(f"[1/6] Base model: {base}")
    t = time.time()
    resolved = resolve_model(base, settings, progress)
    tok = load_tokenizer(resolved.path)
    timings["prepare_model"] = time.time() - t

    n = opts.train_examples + opts.validation_examples + opts.test_examples
    say(f"[2/6] Generating {n} synthetic Stripe requests (Spanish and English, 6 operations)")
    data = out / "data" / "stripe_requests.jsonl"
    write_jsonl(data, generate(n, opts.seed))

    say("[3/6] Checking the data before any training")
    rep = check_file(data, tokenizer=tok, max_length=opts.max_length)
    say(_indent(_short_check(rep)))
    if not rep.ok:
        raise DataError(f"demo data failed its check: {rep.errors[:3]}")

    say("[4/6] Splitting into train / validation / test")
    ratios = (opts.train_examples / n, opts.validation_examples / n, opts.test_examples / n)
    parts = split_file(data, out / "data", ratios, seed=opts.seed)
    say(f"    train {parts['n_train']}, validation {parts['n_validation']}, test "
        f"{parts['n_test']} (stratified by operation: {parts['stratified']})")

    given = {k: getattr(opts, k) for k in ("epochs", "batch_size", "learning_rate", "lora_r",
                                           "lora_layers") if getattr(opts, k) != "auto"}
    say("[5/6] LoRA fine-tuning (" + (", ".join(f"{k} {v}" for k, v in given.items()) + "; "
                                      if given else "") + "the rest: auto, from the data)")
    name = f"stripe-demo-{stamp}"
    cfg = parse_train_config({
        "train_data": str(parts["train"]), "validation_data": str(parts["validation"]),
        "base_model": base, "output_dir": str(out / "model"), "name": name,
        "epochs": opts.epochs, "batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate, "lora_r": opts.lora_r,
        "lora_alpha": "auto" if opts.lora_r == "auto" else opts.lora_r * 2,
        "lora_layers": opts.lora_layers, "max_length": opts.max_length, "seed": opts.seed,
        "checkpoint_every": 0, "lora_dropout": 0.0, "warmup_steps": 5})
    t = time.time()
    result = train(cfg, settings, progress)
    timings["train"] = time.time() - t
    say(f"    {result.steps} steps, loss {result.first_loss:.3f} -> {result.train_loss:.3f}, "
        f"{result.tokens_per_second:.0f} tokens/s, {result.seconds:.0f} s")
    for w in result.warnings:
        say(f"    warning: {w}")

    say(f"[6/6] Evaluating base vs tuned on {parts['n_test']} held-out requests")
    t = time.time()
    report = evaluate([base, name], str(parts["test"]), settings,
                      batch_size=opts.eval_batch_size, progress=progress)
    timings["evaluate"] = time.time() - t
    timings["total"] = time.time() - t_start
    report["demo"] = {"options": opts.__dict__, "timings_s": {k: round(v, 1)
                                                             for k, v in timings.items()},
                      "training": {"steps": result.steps, "first_loss": result.first_loss,
                                   "auto_hyperparameters": result.auto,
                                   "final_loss": result.train_loss,
                                   "validation": result.validation,
                                   "tokens_per_second": result.tokens_per_second,
                                   "model_dir": str(result.model_dir)},
                      "data_check": rep.to_dict()}
    curve = read_training_csv(out / "model")
    extra = _training_md(report["demo"], curve)
    paths = write_report(report, out / "report", "afinar demo: Stripe API calls, base vs "
                         "fine-tuned", extra_md=extra, run_dirs={name: out / "model"})
    report["paths"] = {k: str(v) for k, v in paths.items()} | {"output_dir": str(out),
                                                               "model": str(result.model_dir),
                                                               "name": name}
    (out / "report" / "report.json").write_text(json.dumps(report, indent=2,
                                                           ensure_ascii=False), encoding="utf-8")
    return report


def _short_check(rep) -> str:
    lines = [f"schema {rep.schema}, {rep.valid}/{rep.records} valid records, "
             f"{len(rep.errors)} errors, {len(rep.exact_duplicates)} duplicate groups, "
             f"{len(rep.near_duplicates)} near-duplicate pairs"]
    if rep.tokens:
        t = rep.tokens
        lines.append(f"tokens per example: p50 {t['p50']}, max {t['max']} "
                     f"({t['truncated']} over max_length {t['max_length']})")
    if rep.labels:
        lines.append("operations: " + ", ".join(f"{k} {v}" for k, v in
                                                rep.labels["counts"].items()))
    lines.append(rep.size_guidance["message"])
    return "\n".join(lines)


def _indent(s: str) -> str:
    return "\n".join("    " + x for x in s.splitlines())


def _training_md(demo: dict, curve: list[dict]) -> str:
    tr = demo["training"]
    md = ["## Training", "",
          f"- {tr['steps']} steps; training loss {tr['first_loss']:.3f} -> "
          f"{tr['final_loss']:.3f}; {tr['tokens_per_second']:.0f} tokens/s",
          "- time: " + ", ".join(f"{k} {v} s" for k, v in demo["timings_s"].items())]
    if tr.get("validation"):
        v = tr["validation"]
        md.append(f"- validation loss {v['validation_loss']:.4f}, token accuracy "
                  f"{v['token_accuracy']:.3f}")
    if curve:
        pick = curve[:: max(1, len(curve) // 10)] + ([curve[-1]] if len(curve) > 1 else [])
        md += ["", "| step | epoch | training loss |", "|---|---|---|"]
        md += [f"| {int(r['step_number'])} | {int(r['epoch_number'])} | "
               f"{r['training_loss']:.4f} |" for r in pick]
    return "\n".join(md)
