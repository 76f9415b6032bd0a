"""Evaluate one or more models on a dataset, side by side, and write Markdown, HTML and JSON
reports. Metrics follow the data: prompt/answer data -> exact match, valid JSON, JSON field
accuracy, ROUGE-L (generated answers); unlabelled text -> perplexity; {"text", "label"} ->
accuracy and macro-F1 (classification models)."""

from __future__ import annotations

import gc
import json
import time
from pathlib import Path

from afinar.config import Settings
from afinar.data.readers import read_records
from afinar.data.schema import SUPERVISED, UNLABELLED, normalize
from afinar.errors import ConfigError, DataError
from afinar.eval.metrics import score_pairs
from afinar.progress import ProgressCallback, null_progress

METRIC_ORDER = ("exact_match", "valid_json", "field_accuracy", "rouge_l", "accuracy",
                "macro_f1", "perplexity", "loss")
PERCENT = {"exact_match", "valid_json", "field_accuracy", "rouge_l", "accuracy", "macro_f1"}


def load_eval_data(path: str, limit: int | None = None,
                   expected=SUPERVISED):
    read = read_records(path)
    norm = normalize(read, expected=expected)
    if norm.issues:
        raise DataError(f"{path}: {len(norm.issues)} problem(s) in the evaluation data",
                        norm.issues, hint=f"run: afinar data check {path}")
    exs = norm.examples[:limit] if limit else norm.examples
    if not exs:
        raise DataError(f"{path}: no examples to evaluate")
    return exs


def evaluate(models: list[str], data_path: str, settings: Settings, *,
             max_new_tokens: int | None = None, batch_size: int = 16, limit: int | None = None,
             progress: ProgressCallback = null_progress, precision: str = "auto") -> dict:
    from afinar.inference.generate import generate, load

    if not models:
        raise ConfigError("no model to evaluate", hint="pass --model")
    schema = normalize(read_records(data_path)).schema
    if schema in UNLABELLED:
        return _evaluate_text(models, data_path, settings, limit, progress, precision)
    if schema == "classification":
        return _evaluate_classification(models, data_path, settings, limit, batch_size)
    exs = load_eval_data(data_path, limit)
    prompts = [e.prompt_messages() for e in exs]
    tools = [e.tools for e in exs]
    refs = [e.target() for e in exs]
    report: dict = {"data": str(data_path), "n": len(exs), "models": [], "examples": []}
    outputs: dict[str, list[str]] = {}
    scores: dict[str, list[dict]] = {}
    for mid in models:
        t0 = time.time()
        lm = load(mid, settings, progress, precision)
        if max_new_tokens is None:
            longest = max(len(lm.tokenizer(r, add_special_tokens=False)["input_ids"])
                          for r in refs)
            max_new_tokens = min(512, int(longest * 1.25) + 8)
        outs = generate(lm, prompts, max_new_tokens=max_new_tokens, batch_size=batch_size,
                        tools=tools,
                        progress=progress, stage=f"eval {mid}")
        agg, per = score_pairs(outs, refs)
        outputs[mid], scores[mid] = outs, per
        report["models"].append({"id": mid, "lineage": lm.lineage, "metrics": agg,
                                 "seconds": round(time.time() - t0, 1)})
        del lm
        gc.collect()
    report["max_new_tokens"] = max_new_tokens
    report["task"] = "generation"
    for i, e in enumerate(exs):
        report["examples"].append({
            "line": e.line, "prompt": prompts[i][-1]["content"], "reference": refs[i],
            "outputs": {m: outputs[m][i] for m in models},
            "exact_match": {m: scores[m][i]["exact_match"] for m in models}})
    if len(models) > 1:
        report["differences"] = [i for i, ex in enumerate(report["examples"])
                                 if len(set(ex["exact_match"].values())) > 1]
    return report


def compare(models: list[str], data_path: str, settings: Settings, *,
            compare_base: bool = False, **kw) -> tuple[dict, dict[str, Path]]:
    """`afinar eval` and afinar's evaluation jobs: `evaluate` over the models (and, with
    compare_base, each custom model's recorded base first), and the run directories of the
    custom models (their loss curves go in the report)."""
    from afinar.models.registry import custom_model_record

    models = list(models)
    if compare_base:
        for m in list(models):
            rec = custom_model_record(settings, m)
            if rec is None and (Path(m) / "afinar_model.json").exists():
                rec = json.loads((Path(m) / "afinar_model.json").read_text(encoding="utf-8"))
            if rec is None:
                raise ConfigError(f"compare base: '{m}' is not a custom model, so it has no "
                                  f"recorded base", hint="name both models instead")
            if rec["base_model"] not in models:
                models.insert(0, rec["base_model"])
    report = evaluate(models, data_path, settings, **kw)
    runs = {}
    for m in models:
        rec = custom_model_record(settings, m)
        if rec and rec.get("model_dir"):
            runs[m] = Path(rec["model_dir"])
    return report, runs


def _fmt(k: str, v: float) -> str:
    return f"{v * 100:.1f}%" if k in PERCENT else f"{v:.4g}"


def metric_names(report: dict) -> list[str]:
    """afinar's metrics in their usual order, then any others (Bedrock's) as given."""
    have = list(report["models"][0]["metrics"]) if report["models"] else []
    return [k for k in METRIC_ORDER if k in have] + [k for k in have if k not in METRIC_ORDER]


def format_table(report: dict) -> str:
    metrics = metric_names(report)
    head = f"{'model':<40}" + "".join(f"{m:>16}" for m in metrics)
    rows = [head, "-" * len(head)]
    for m in report["models"]:
        rows.append(f"{m['id'][:40]:<40}" + "".join(f"{_fmt(k, m['metrics'][k]):>16}"
                                                     for k in metrics))
    return "\n".join(rows)


def _evaluate_text(models, data_path, settings, limit, progress, precision="auto") -> dict:
    """Perplexity of each model on unlabelled text (documents truncated at 1,024 tokens)."""
    import math

    import torch

    from afinar.inference.generate import load

    exs = load_eval_data(data_path, limit, expected=UNLABELLED)
    report: dict = {"data": str(data_path), "n": len(exs), "models": [], "examples": [],
                    "task": "text"}
    for mid in models:
        t0 = time.time()
        lm = load(mid, settings, progress, precision)
        nll, ntok = 0.0, 0
        with torch.no_grad():
            for e in exs:
                ids = lm.tokenizer(e.text, add_special_tokens=False,
                                   return_tensors="pt")["input_ids"][:, :1024]
                if ids.shape[1] < 2:
                    continue
                out = lm.model(input_ids=ids.to(lm.model.device), labels=ids.to(
                    lm.model.device))
                nll += float(out.loss) * (ids.shape[1] - 1)
                ntok += ids.shape[1] - 1
        loss = nll / max(ntok, 1)
        report["models"].append({"id": mid, "lineage": lm.lineage, "metrics": {
            "perplexity": math.exp(min(loss, 50)), "loss": loss},
            "tokens": ntok, "seconds": round(time.time() - t0, 1)})
        del lm
        gc.collect()
    return report


def _evaluate_classification(models, data_path, settings, limit, batch_size) -> dict:
    from transformers import AutoModelForSequenceClassification

    from afinar.eval.classification import classification_metrics
    from afinar.inference.classify import predict_ids
    from afinar.models.loading import load_tokenizer
    from afinar.models.registry import resolve_model

    exs = load_eval_data(data_path, limit, expected="classification")
    texts, gold_names = [e.text for e in exs], [str(e.label) for e in exs]
    report: dict = {"data": str(data_path), "n": len(exs), "models": [], "examples": [],
                    "task": "classification"}
    preds: dict[str, list[str]] = {}
    for mid in models:
        t0 = time.time()
        r = resolve_model(mid, settings)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(r.path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"'{mid}' is not a classification model ({e})") from e
        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if unknown := sorted(set(gold_names) - set(names)):
            raise DataError(f"{data_path}: labels {unknown} are not among {mid}'s {names}")
        p = predict_ids(model, load_tokenizer(r.path), texts, batch_size=batch_size)
        pred = p.argmax(-1).tolist()
        m = classification_metrics([names.index(g) for g in gold_names], pred, names)
        preds[mid] = [names[i] for i in pred]
        report["models"].append({"id": mid, "lineage": r.lineage, "metrics": {
            "accuracy": m["accuracy"], "macro_f1": m["macro_f1"]}, "classification": m,
            "seconds": round(time.time() - t0, 1)})
    for i, e in enumerate(exs):
        report["examples"].append({
            "line": e.line, "prompt": e.text, "reference": gold_names[i],
            "outputs": {m: preds[m][i] for m in models},
            "exact_match": {m: preds[m][i] == gold_names[i] for m in models}})
    if len(models) > 1:
        report["differences"] = [i for i, ex in enumerate(report["examples"])
                                 if len(set(ex["outputs"].values())) > 1]
    return report


def write_report(report: dict, out_dir: str | Path, title: str = "Evaluation report",
                 extra_md: str = "", run_dirs: dict[str, Path] | None = None
                 ) -> dict[str, Path]:
    """report.md, report.html (plots: metric bars; loss curves of the models in `run_dirs`,
    name -> run directory) and report.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False),
                                     encoding="utf-8")
    metrics = metric_names(report)
    how = {"generation": f"greedy decoding, up to {report.get('max_new_tokens')} new tokens",
           "text": "perplexity over each document (up to 1,024 tokens)",
           "classification": "predicted labels",
           "bedrock": "Bedrock's automated evaluation (algorithmic metrics and a judge model)",
           "rag": "retrieval (and generation) over a knowledge base, scored by the judge"}.get(report.get("task", "generation"), "")
    md = [f"# {title}", "", f"Data: `{report['data']}` ({report['n']} examples), {how}.", "",
          "| model | " + " | ".join(metrics) + " | seconds |",
          "|---|" + "---|" * (len(metrics) + 1)]
    for m in report["models"]:
        md.append(f"| `{m['id']}` | " + " | ".join(_fmt(k, m["metrics"][k])
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
    from afinar.eval.html import write_html
    page = write_html(report, out, title, metrics, PERCENT, run_dirs or {})
    return {"markdown": out / "report.md", "html": page, "json": out / "report.json"}
