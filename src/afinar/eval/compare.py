"""Evaluate one or more models on a dataset, side by side, and write Markdown/JSON reports."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from afinar.config import Settings
from afinar.data.readers import read_records
from afinar.data.schema import SUPERVISED, normalize
from afinar.errors import ConfigError, DataError
from afinar.eval.metrics import score_pairs
from afinar.progress import ProgressCallback, null_progress

METRIC_ORDER = ("exact_match", "valid_json", "field_accuracy", "rouge_l")


def load_eval_data(path: str, limit: int | None = None):
    read = read_records(path)
    norm = normalize(read, expected=SUPERVISED)
    if norm.issues:
        raise DataError(f"{path}: {len(norm.issues)} problem(s) in the evaluation data",
                        norm.issues, hint=f"run: afinar data check {path}")
    exs = norm.examples[:limit] if limit else norm.examples
    if not exs:
        raise DataError(f"{path}: no examples to evaluate")
    return exs


def evaluate(models: list[str], data_path: str, settings: Settings, *,
             max_new_tokens: int | None = None, batch_size: int = 16, limit: int | None = None,
             progress: ProgressCallback = null_progress) -> dict:
    from afinar.inference.generate import generate, load

    if not models:
        raise ConfigError("no model to evaluate", hint="pass --model")
    exs = load_eval_data(data_path, limit)
    prompts = [e.prompt_messages() for e in exs]
    refs = [e.target() for e in exs]
    report: dict = {"data": str(data_path), "n": len(exs), "models": [], "examples": []}
    outputs: dict[str, list[str]] = {}
    scores: dict[str, list[dict]] = {}
    for mid in models:
        t0 = time.time()
        lm = load(mid, settings, progress)
        if max_new_tokens is None:
            longest = max(len(lm.tokenizer(r, add_special_tokens=False)["input_ids"])
                          for r in refs)
            max_new_tokens = min(512, int(longest * 1.25) + 8)
        outs = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        progress=progress, stage=f"eval {mid}")
        agg, per = score_pairs(outs, refs)
        outputs[mid], scores[mid] = outs, per
        report["models"].append({"id": mid, "lineage": lm.lineage, "metrics": agg,
                                 "seconds": round(time.time() - t0, 1)})
        del lm
        gc.collect()
    report["max_new_tokens"] = max_new_tokens
    for i, e in enumerate(exs):
        report["examples"].append({
            "line": e.line, "prompt": prompts[i][-1]["content"], "reference": refs[i],
            "outputs": {m: outputs[m][i] for m in models},
            "exact_match": {m: scores[m][i]["exact_match"] for m in models}})
    if len(models) > 1:
        report["differences"] = [i for i, ex in enumerate(report["examples"])
                                 if len(set(ex["exact_match"].values())) > 1]
    return report


def format_table(report: dict) -> str:
    metrics = [k for k in METRIC_ORDER if k in report["models"][0]["metrics"]]
    head = f"{'model':<40}" + "".join(f"{m:>16}" for m in metrics)
    rows = [head, "-" * len(head)]
    for m in report["models"]:
        rows.append(f"{m['id'][:40]:<40}" + "".join(f"{m['metrics'][k] * 100:>15.1f}%"
                                                     for k in metrics))
    return "\n".join(rows)


def write_report(report: dict, out_dir: str | Path, title: str = "Evaluation report",
                 extra_md: str = "") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False),
                                     encoding="utf-8")
    metrics = [k for k in METRIC_ORDER if k in report["models"][0]["metrics"]]
    md = [f"# {title}", "", f"Data: `{report['data']}` ({report['n']} examples), greedy "
          f"decoding, up to {report.get('max_new_tokens')} new tokens.", "",
          "| model | " + " | ".join(metrics) + " | seconds |",
          "|---|" + "---|" * (len(metrics) + 1)]
    for m in report["models"]:
        md.append(f"| `{m['id']}` | " + " | ".join(f"{m['metrics'][k] * 100:.1f}%"
                                                  for k in metrics) + f" | {m['seconds']} |")
    md.append("")
    if extra_md:
        md += [extra_md, ""]
    diffs = report.get("differences")
    if diffs is not None:
        md += [f"## Examples where the models differ ({len(diffs)} of {report['n']})", ""]
        for i in diffs[:15]:
            ex = report["examples"][i]
            md += [f"### line {ex['line']}", "", f"**Prompt:** {ex['prompt']}", "",
                   f"**Reference:** `{ex['reference']}`", ""]
            for mid, o in ex["outputs"].items():
                ok = "correct" if ex["exact_match"][mid] else "wrong"
                md.append(f"- `{mid}` ({ok}): `{o[:300]}`")
            md.append("")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return {"markdown": out / "report.md", "json": out / "report.json"}
