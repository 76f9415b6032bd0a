"""The continued pre-training demo: adapt the default model to a domain, on real text nobody here
wrote that every machine has offline: the documentation of Python's standard library, as pydoc
renders it. Modules are split into training and held-out sets (whole modules, so no held-out
text is seen in training); the held-out perplexity is measured before training, at each
checkpoint and after.
"""

from __future__ import annotations

import importlib
import json
import pydoc
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from afinar.config import Settings
from afinar.data.readers import write_jsonl
from afinar.demo import output_dir
from afinar.progress import ProgressCallback, null_progress
from afinar.training.config import parse_train_config

# pure-Python stdlib modules whose documentation is stable and importable everywhere
MODULES = [
    "abc", "argparse", "base64", "bisect", "calendar", "codecs", "colorsys", "configparser",
    "contextlib", "copy", "csv", "dataclasses", "decimal", "difflib", "enum", "fnmatch",
    "fractions", "functools", "glob", "graphlib", "gzip", "hashlib", "heapq", "html",
    "ipaddress", "itertools", "json", "logging", "numbers", "operator", "pathlib", "pprint",
    "queue", "random", "sched", "secrets", "shlex", "shutil", "statistics", "string", "struct",
    "tarfile", "tempfile", "textwrap", "timeit", "urllib.parse", "uuid", "weakref", "zipfile",
]


@dataclass
class CptDemoOptions:
    chars_per_module: int = 2500  # the start of each module's page: NAME, DESCRIPTION, ...
    held_out_every: int = 5  # every 5th module (in name order) is held out
    block_size: int = 256
    epochs: int = 1
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_r: int = 16
    lora_layers: int | None = 15
    checkpoint_every: int = 10
    seed: int = 42
    base_model: str | None = None
    output_dir: str | None = None


def module_docs(names: list[str], chars: int) -> dict[str, str]:
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in names:
            mod = importlib.import_module(name)
            text = pydoc.render_doc(mod, renderer=pydoc.plaintext)
            # cut at a line end so no document stops mid-word
            out[name] = text[:chars].rsplit("\n", 1)[0] if len(text) > chars else text
    return out


def run_cpt_demo(opts: CptDemoOptions, settings: Settings,
                 progress: ProgressCallback = null_progress,
                 say: Callable[[str], None] = lambda s: None) -> dict:
    from afinar.training.trainer import train

    t0 = time.time()
    base = opts.base_model or settings.default_model
    out, stamp = output_dir(settings, opts.output_dir, "cpt")
    docs = module_docs(MODULES, opts.chars_per_module)
    held = [m for i, m in enumerate(MODULES) if i % opts.held_out_every == 0]
    trained = [m for m in MODULES if m not in held]
    write_jsonl(out / "data" / "train.jsonl", [{"input": docs[m]} for m in trained])
    write_jsonl(out / "data" / "held_out.jsonl", [{"input": docs[m]} for m in held])
    say(f"[1/3] Corpus: pydoc pages of {len(MODULES)} standard-library modules (Python "
        f"{sys.version.split()[0]}), first {opts.chars_per_module} characters of each; "
        f"{len(trained)} for training, {len(held)} held out: {', '.join(held)}")

    cfg = parse_train_config({
        "type": "cpt", "train_data": str(out / "data" / "train.jsonl"),
        "validation_data": str(out / "data" / "held_out.jsonl"), "base_model": base,
        "output_dir": str(out / "model"), "name": f"demo-cpt-{stamp}", "method": "lora",
        "epochs": opts.epochs, "batch_size": opts.batch_size,
        "learning_rate": opts.learning_rate, "lora_r": opts.lora_r,
        "lora_alpha": 2 * opts.lora_r, "lora_layers": opts.lora_layers,
        "max_length": opts.block_size, "checkpoint_every": opts.checkpoint_every,
        "warmup_steps": 2, "seed": opts.seed, "merge": False})
    say(f"[2/3] Continued pre-training of {base} (LoRA r{opts.lora_r}"
        + (f" on the top {opts.lora_layers} layers" if opts.lora_layers else "")
        + f", blocks of {opts.block_size} tokens, {opts.epochs} epoch(s)); held-out "
          f"perplexity before, every {opts.checkpoint_every} steps and after")
    res = train(cfg, settings, progress)
    curve = _validation_curve(out / "model")
    before = res.initial_validation["perplexity"]
    after = res.validation["perplexity"]
    report = {
        "demo": "cpt", "base_model": base, "custom_model": res.name,
        "modules": {"train": trained, "held_out": held},
        "options": asdict(opts), "python": sys.version.split()[0],
        "held_out_perplexity": {"before": before, "after": after,
                                "ratio": after / before},
        "curve": curve, "train_tokens": int(res.tokens_per_second * res.seconds),
        "train_seconds": round(res.seconds, 1), "tokens_per_second": round(
            res.tokens_per_second, 1), "total_seconds": round(time.time() - t0, 1),
        "output_dir": str(out),
    }
    (out / "report.json").write_text(json.dumps(report, indent=2), encoding="utf-8")
    (out / "report.md").write_text(_markdown(report), encoding="utf-8")
    say(f"[3/3] Held-out perplexity: {before:.2f} before -> {after:.2f} after "
        f"({after / before:.2f}x); report: {out / 'report.md'}")
    return report


def _validation_curve(run: Path) -> list[dict]:
    import csv
    p = run / "validation_artifacts" / "post_fine_tuning_validation" / "validation_metrics.csv"
    return [{"step": int(r["step_number"]), "validation_loss": float(r["validation_loss"]),
             "perplexity": float(r["perplexity"])} for r in csv.DictReader(p.open())]


def _markdown(r: dict) -> str:
    hp = r["held_out_perplexity"]
    rows = "\n".join(f"| {c['step']} | {c['validation_loss']:.4f} | {c['perplexity']:.3f} |"
                     for c in r["curve"])
    return "\n".join([
        "# afinar demo: continued pre-training on Python's standard-library docs", "",
        f"Base model `{r['base_model']}` -> custom model `{r['custom_model']}`.", "",
        f"Held-out modules ({len(r['modules']['held_out'])}, never trained on): "
        f"{', '.join(r['modules']['held_out'])}.", "",
        f"**Held-out perplexity: {hp['before']:.3f} before, {hp['after']:.3f} after "
        f"({hp['ratio']:.2f}x).**", "",
        "| step | held-out loss | perplexity |", "|---|---|---|", rows, "",
        f"Training: {r['train_seconds']} s at {r['tokens_per_second']} tokens/s; whole demo "
        f"{r['total_seconds']} s (Python {r['python']}).", ""])
