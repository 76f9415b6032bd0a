"""Bedrock's automated evaluation (CreateEvaluationJob), run by an evaluation job's worker.

A plan (built and checked by jobs/evaluations.py from the request) names the models (served
models, or precomputed responses in the dataset), the datasets with their task type and
metrics, the judge (evaluatorModelConfig), custom judge metrics, or a knowledge base for a RAG
evaluation. Results are written in Bedrock's layout under the job's output prefix:

    <jobName>/<jobId>/models/<model>/taskTypes/<taskType>/datasets/<dataset>/<uuid>_output.jsonl
    <jobName>/<jobId>/knowledgeBases/<kbId>/datasets/<dataset>/<uuid>_output.jsonl   (RAG)

one line per record ({"automatedEvaluationResult": {"scores": [...]}, "inputRecord",
"modelResponses"}; RAG: {"conversationTurns": [{"inputRecord", "output", "results"}]}), plus
afinar's report (report.html, .md, .json) and metrics.json with each metric's mean.

Metrics:
- algorithmic: Builtin.Accuracy (exact match for Classification — case-insensitive —,
  QuestionAndAnswer, Generation and Custom; ROUGE-L for Summarization), and afinar's own
  exact_match, valid_json, field_accuracy, rouge_l (eval/metrics.py);
- model as judge (eval/judge.py): the Builtin.* rubrics and custom metrics;
- RAG: the judge's Builtin.* metrics over retrieved passages and generated answers, and
  Afinar.RetrievalHitRate / Afinar.RetrievalMRR where a turn names its `referenceSources`.
"""

from __future__ import annotations

import gc
import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from afinar.config import Settings
from afinar.errors import DataError, Issue
from afinar.eval.judge import BUILTIN, Judge, Rubric, custom_rubric, mean
from afinar.jsonutil import jsonl
from afinar.progress import ProgressCallback, ProgressEvent, null_progress

ALGORITHMIC = {"Builtin.Accuracy", "exact_match", "valid_json", "field_accuracy", "rouge_l"}
RETRIEVAL = {"Afinar.RetrievalHitRate", "Afinar.RetrievalMRR"}
UNSUPPORTED = {
    "Builtin.Robustness": "it perturbs prompts with Bedrock's own perturbation models",
    "Builtin.Toxicity": "it needs a toxicity classifier, which afinar does not ship",
}
CHUNK = 32  # records generated between stop checks


class Stopped(Exception):
    """The job was asked to stop."""


def _text_of(v, where: str, issues: list, line: int) -> str | None:
    """Bedrock's {"content": [{"text"}]} or a plain string."""
    if isinstance(v, str):
        return v
    if isinstance(v, dict) and isinstance(v.get("content"), list):
        texts = [c.get("text") for c in v["content"] if isinstance(c, dict)]
        if texts and all(isinstance(t, str) for t in texts):
            return "\n".join(texts)
    issues.append(Issue(f"'{where}' must be a string or {{\"content\": [{{\"text\": ...}}]}}",
                        line, where))
    return None


def read_model_dataset(path: Path, limit: int | None = None) -> list[dict]:
    """Records {"line", "prompt" (messages), "reference"?, "record" (as given), "precomputed"}.
    Bedrock's {"prompt", "referenceResponse", "category", "modelResponses"?} records, or
    afinar's prompt/completion and messages records."""
    from afinar.data.readers import read_records
    from afinar.data.schema import normalize

    first = next(jsonl(path), (0, None, None))[1]
    # afinar's prompt/completion records have a completion; Bedrock's a referenceResponse
    bedrock = isinstance(first, dict) and isinstance(first.get("prompt"), str) and \
        "completion" not in first
    if not bedrock:
        norm = normalize(read_records(str(path)))
        if norm.issues:
            raise DataError(f"{path.name}: {len(norm.issues)} problem(s) in the dataset",
                            norm.issues, hint=f"run: afinar data check {path}")
        out = [{"line": e.line, "prompt": e.prompt_messages(), "reference": e.target(),
                "record": {"prompt": e.prompt_messages()[-1]["content"],
                           "referenceResponse": e.target()}, "precomputed": {}}
               for e in norm.examples]
        return out[:limit] if limit else out
    out, issues = [], []
    for n, rec, problem in jsonl(path):
        if problem:
            issues.append(Issue(problem, n))
            continue
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) \
                or not rec["prompt"].strip():
            issues.append(Issue("'prompt' must be a non-empty string", n, "prompt"))
            continue
        ref = rec.get("referenceResponse")
        if ref is not None and not isinstance(ref, str):
            issues.append(Issue("'referenceResponse' must be a string", n, "referenceResponse"))
            continue
        pre = {}
        for i, m in enumerate(rec.get("modelResponses") or []):
            if not isinstance(m, dict) or not isinstance(m.get("response"), str):
                issues.append(Issue("each modelResponses item needs a 'response' string", n,
                                    f"modelResponses[{i}].response"))
                break
            pre[str(m.get("modelIdentifier", ""))] = m["response"]
        out.append({"line": n, "prompt": [{"role": "user", "content": rec["prompt"]}],
                    "reference": ref, "record": rec, "precomputed": pre})
    if issues:
        raise DataError(f"{path.name}: {len(issues)} problem(s) in the dataset", issues,
                        hint="each line: {\"prompt\": ..., \"referenceResponse\": ..., "
                             "\"category\": ...}")
    if not out:
        raise DataError(f"{path.name}: no records to evaluate")
    return out[:limit] if limit else out


def read_rag_dataset(path: Path) -> list[dict]:
    """Bedrock's RAG records: {"conversationTurns": [{"prompt": {"content": [{"text"}]},
    "referenceResponses": [{"content": [{"text"}]}], "referenceSources"?: [names]}]} (one
    turn; `referenceSources`, afinar's, names the documents a retriever should find)."""
    out, issues = [], []
    for n, rec, problem in jsonl(path):
        if problem:
            issues.append(Issue(problem, n))
            continue
        turns = rec.get("conversationTurns") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or len(turns) != 1 or not isinstance(turns[0], dict):
            issues.append(Issue("'conversationTurns' must be a list of one turn", n,
                                "conversationTurns"))
            continue
        t = turns[0]
        q = _text_of(t.get("prompt"), "conversationTurns[0].prompt", issues, n)
        refs = [_text_of(r, f"conversationTurns[0].referenceResponses[{i}]", issues, n)
                for i, r in enumerate(t.get("referenceResponses") or [])]
        srcs = t.get("referenceSources") or []
        if not isinstance(srcs, list) or not all(isinstance(s, str) for s in srcs):
            issues.append(Issue("'referenceSources' must be a list of document names", n,
                                "conversationTurns[0].referenceSources"))
            continue
        if q is None or None in refs:
            continue
        out.append({"line": n, "question": q, "reference": refs[0] if refs else None,
                    "sources": srcs, "record": rec})
    if issues:
        raise DataError(f"{path.name}: {len(issues)} problem(s) in the RAG dataset", issues)
    if not out:
        raise DataError(f"{path.name}: no records to evaluate")
    return out


def accuracy(task: str, pred: str, ref: str | None) -> float | None:
    from afinar.eval.metrics import exact_match, rouge_l

    if ref is None:
        return None
    if task == "Summarization":
        return rouge_l(pred, ref)
    if task == "Classification":
        return float(pred.strip().lower() == ref.strip().lower())
    return float(exact_match(pred, ref))


def algorithmic(names: list[str], task: str, preds: list[str], refs: list) -> list[dict]:
    """Per record: {metric: value} for the algorithmic metrics asked for."""
    from afinar.eval.metrics import score_pairs

    rows: list[dict] = [{} for _ in preds]
    afinar_names = [n for n in names if n in ALGORITHMIC - {"Builtin.Accuracy"}]
    if afinar_names:
        if any(r is None for r in refs):
            raise DataError(f"metrics {afinar_names} need a referenceResponse on every record")
        _, per = score_pairs(preds, refs)
        for row, p in zip(rows, per, strict=True):
            row.update({n: p[n] for n in afinar_names if n in p})
    if "Builtin.Accuracy" in names:
        for row, p, r in zip(rows, preds, refs, strict=True):
            row["Builtin.Accuracy"] = accuracy(task, p, r)
    return rows


def _slug(s: str) -> str:
    import re
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-")[:100] or "model"


class Evaluation:
    """One Bedrock evaluation job's work. `plan` (jobs/evaluations.py):
    {"jobName", "jobId", "datasets": [{"name", "taskType", "path", "metricNames"}],
     "models": [{"id", "serving"?, "precomputed"?, "params": {maxTokens, temperature, topP}}],
     "judge"?, "customMetrics": [customMetricDefinition], "rag"?: {...}}"""

    def __init__(self, plan: dict, settings: Settings, out: Path,
                 progress: ProgressCallback = null_progress,
                 should_stop: Callable[[], bool] = lambda: False, precision: str = "auto"):
        self.plan, self.settings, self.out = plan, settings, out
        self.progress, self.should_stop, self.precision = progress, should_stop, precision
        self.custom: dict[str, Rubric] = dict(
            custom_rubric(d, f"customMetrics[{i}]")
            for i, d in enumerate(plan.get("customMetrics") or []))
        self.root = out / plan["jobName"] / plan["jobId"]

    def _check_stop(self) -> None:
        if self.should_stop():
            raise Stopped()

    def _rubric(self, name: str) -> Rubric | None:
        return self.custom.get(name) or BUILTIN.get(name)

    def _judged(self, names: list[str]) -> list[str]:
        return [n for n in names if self._rubric(n) is not None]

    # -- model evaluation --------------------------------------------------------------------
    def _generate(self, spec: dict, recs: list[dict], lm) -> list[str]:
        from afinar.inference.generate import generate

        if spec.get("precomputed") is not None:
            src = spec["precomputed"]
            missing = [r["line"] for r in recs if src not in r["precomputed"]]
            if missing:
                raise DataError(f"no modelResponses entry with modelIdentifier '{src}' on "
                                f"line(s) {missing[:10]}")
            return [r["precomputed"][src] for r in recs]
        p = spec.get("params") or {}
        outs: list[str] = []
        for s in range(0, len(recs), CHUNK):
            self._check_stop()
            part = recs[s:s + CHUNK]
            outs += generate(lm, [r["prompt"] for r in part],
                             max_new_tokens=p.get("maxTokens") or 256,
                             temperature=p.get("temperature") or 0.0,
                             top_p=p.get("topP") or 1.0)
            self.progress(ProgressEvent(f"generate {spec['id']}", min(s + CHUNK, len(recs)),
                                        len(recs)))
        return outs

    def run(self) -> dict:
        if self.plan.get("rag"):
            return self._run_rag()
        from afinar.inference.generate import load

        datasets = [(d, read_model_dataset(Path(d["path"]))) for d in self.plan["datasets"]]
        responses: dict[tuple[str, str], list[str]] = {}  # (model id, dataset name) -> outputs
        seconds: dict[str, float] = {}
        for spec in self.plan["models"]:
            t0 = time.time()
            lm = None if spec.get("precomputed") is not None else load(
                spec["serving"], self.settings, self.progress, self.precision)
            for d, recs in datasets:
                responses[spec["id"], d["name"]] = self._generate(spec, recs, lm)
            seconds[spec["id"]] = round(time.time() - t0, 1)
            del lm
            gc.collect()
        scores: dict[tuple[str, str], list[dict]] = {}
        for spec in self.plan["models"]:
            for d, recs in datasets:
                scores[spec["id"], d["name"]] = algorithmic(
                    [n for n in d["metricNames"] if n in ALGORITHMIC], d["taskType"],
                    responses[spec["id"], d["name"]], [r["reference"] for r in recs])
        judge_names = sorted({n for d, _ in datasets for n in self._judged(d["metricNames"])})
        explanations: dict = {}
        if judge_names:
            lm = load(self.plan["judge"], self.settings, self.progress, self.precision)
            judge = Judge(lm)
            for spec in self.plan["models"]:
                for d, recs in datasets:
                    key = spec["id"], d["name"]
                    for name in self._judged(d["metricNames"]):
                        self._check_stop()
                        ratings = judge.rate(self._rubric(name), [
                            {"prompt": r["prompt"][-1]["content"], "response": o,
                             "reference": r["reference"]}
                            for r, o in zip(recs, responses[key], strict=True)])
                        for i, rt in enumerate(ratings):
                            scores[key][i][name] = rt.result
                            explanations[key, i, name] = rt.explanation(
                                self._rubric(name).scale)
                        self.progress(ProgressEvent(f"judge {name}", None, None, metrics={
                            "model": spec["id"], "dataset": d["name"]}))
            del lm, judge
            gc.collect()
        # -- Bedrock's output layout, and the summary ---------------------------------------
        summary: dict = {"models": []}
        for spec in self.plan["models"]:
            entry = {"id": spec["id"], "datasets": {}}
            for d, recs in datasets:
                key = spec["id"], d["name"]
                f = (self.root / "models" / _slug(spec["id"]) / "taskTypes" / d["taskType"]
                     / "datasets" / _slug(d["name"]) / f"{uuid.uuid4()}_output.jsonl")
                f.parent.mkdir(parents=True, exist_ok=True)
                with f.open("w", encoding="utf-8") as fh:
                    for i, r in enumerate(recs):
                        result = []
                        for name in d["metricNames"]:
                            s = {"metricName": name, "result": scores[key][i].get(name)}
                            if (key, i, name) in explanations:
                                s["evaluatorDetails"] = [{
                                    "modelIdentifier": self.plan["judge"],
                                    "explanation": explanations[key, i, name]}]
                            result.append(s)
                        fh.write(json.dumps({
                            "automatedEvaluationResult": {"scores": result},
                            "inputRecord": r["record"],
                            "modelResponses": [{"response": responses[key][i],
                                                "modelIdentifier": spec["id"]}]},
                            ensure_ascii=False) + "\n")
                entry["datasets"][d["name"]] = {
                    "taskType": d["taskType"], "records": len(recs), "output": str(f),
                    "metrics": {n: mean([s.get(n) for s in scores[key]])
                                for n in d["metricNames"]}}
            entry["seconds"] = seconds[spec["id"]]
            summary["models"].append(entry)
        report = self._report(summary, datasets, responses, scores)
        return {"summary": summary, "report": report}

    def _report(self, summary: dict, datasets, responses, scores) -> dict:
        """afinar's report (eval/compare.py's layout): one row per model and dataset."""
        many = len(datasets) > 1
        rows = []
        for m in summary["models"]:
            for dname, d in m["datasets"].items():
                rows.append({"id": f"{m['id']} · {dname}" if many else m["id"], "lineage": [],
                             "metrics": {k: v for k, v in d["metrics"].items()
                                         if isinstance(v, (int, float))},
                             "seconds": m["seconds"]})
        common = set.intersection(*(set(r["metrics"]) for r in rows)) if rows else set()
        for r in rows:
            r["metrics"] = {k: v for k, v in r["metrics"].items() if k in common}
        d0, recs = datasets[0]
        acc = next((n for n in ("exact_match", "Builtin.Accuracy") if n in d0["metricNames"]),
                   None)
        examples = [{"line": r["line"], "prompt": r["prompt"][-1]["content"],
                     "reference": r["reference"] or "",
                     "outputs": {m["id"]: responses[m["id"], d0["name"]][i]
                                 for m in self.plan["models"]},
                     "exact_match": {m["id"]: bool(scores[m["id"], d0["name"]][i].get(acc))
                                     for m in self.plan["models"]}}
                    for i, r in enumerate(recs)]
        report = {"data": ", ".join(d["name"] for d, _ in datasets),
                  "n": sum(len(r) for _, r in datasets), "task": "bedrock",
                  "models": rows, "examples": examples if not many else []}
        if acc and len(self.plan["models"]) > 1 and not many:
            report["differences"] = [i for i, ex in enumerate(examples)
                                     if len(set(ex["exact_match"].values())) > 1]
        return report

    # -- RAG evaluation ----------------------------------------------------------------------
    def _run_rag(self) -> dict:
        from afinar.inference.generate import generate, load
        from afinar.rag.answer import answer
        from afinar.rag.evaluate import rank_of
        from afinar.rag.kb import KnowledgeBases

        rag, d = self.plan["rag"], self.plan["datasets"][0]
        recs = read_rag_dataset(Path(d["path"]))
        kbs = KnowledgeBases(self.settings)
        t0 = time.time()
        gen_lm = load(rag["generator"], self.settings, self.progress, self.precision) \
            if rag.get("generator") else None
        p = rag.get("params") or {}
        outputs = []
        for i, r in enumerate(recs):
            if i % 8 == 0:
                self._check_stop()
            kw = dict(search_type=rag.get("searchType"), filter=rag.get("filter"))
            if gen_lm is None:
                res = kbs.retrieve(rag["knowledgeBaseId"], r["question"], rag["k"], **kw)
                text = None
            else:
                out = answer(kbs, rag["knowledgeBaseId"], r["question"], lambda msgs: generate(
                    gen_lm, [msgs], max_new_tokens=p.get("maxTokens") or 256,
                    temperature=p.get("temperature") or 0.0, top_p=p.get("topP") or 1.0)[0],
                    k=rag["k"], template=rag.get("template"), **kw)
                res, text = out["results"], out["output"]
            outputs.append((text, res))
            self.progress(ProgressEvent("rag", i + 1, len(recs)))
        gen_lm = None  # freed before the judge loads
        gc.collect()
        scores: list[dict] = [{} for _ in recs]
        names = d["metricNames"]
        for i, (r, (_, res)) in enumerate(zip(recs, outputs, strict=True)):
            if RETRIEVAL & set(names):
                if not r["sources"]:
                    raise DataError(f"{Path(d['path']).name} line {r['line']}: "
                                    f"{sorted(RETRIEVAL & set(names))} need the turn's "
                                    f"'referenceSources'")
                rank, _ = rank_of(r["sources"], res)
                if "Afinar.RetrievalHitRate" in names:
                    scores[i]["Afinar.RetrievalHitRate"] = float(rank is not None)
                if "Afinar.RetrievalMRR" in names:
                    scores[i]["Afinar.RetrievalMRR"] = 1.0 / rank if rank else 0.0
        explanations = {}
        judged = self._judged(names)
        if judged:
            lm = load(self.plan["judge"], self.settings, self.progress, self.precision)
            judge = Judge(lm)
            items = [{"prompt": r["question"], "response": text if text is not None else
                      "\n\n".join(x.text for x in res), "reference": r["reference"],
                      "context": "\n\n".join(f"[{k + 1}] {x.text}" for k, x in enumerate(res))}
                     for r, (text, res) in zip(recs, outputs, strict=True)]
            for name in judged:
                self._check_stop()
                for i, rt in enumerate(judge.rate(self._rubric(name), items)):
                    scores[i][name] = rt.result
                    explanations[i, name] = rt.explanation(self._rubric(name).scale)
            del lm, judge
            gc.collect()
        f = (self.root / "knowledgeBases" / rag["knowledgeBaseId"] / "datasets" /
             _slug(d["name"]) / f"{uuid.uuid4()}_output.jsonl")
        f.parent.mkdir(parents=True, exist_ok=True)
        with f.open("w", encoding="utf-8") as fh:
            for i, (r, (text, res)) in enumerate(zip(recs, outputs, strict=True)):
                results = []
                for name in names:
                    s = {"metricName": name, "result": scores[i].get(name)}
                    if (i, name) in explanations:
                        s["evaluatorDetails"] = [{"modelIdentifier": self.plan["judge"],
                                                  "explanation": explanations[i, name]}]
                    results.append(s)
                output = {"knowledgeBaseIdentifier": rag["knowledgeBaseId"],
                          "retrievedPassages": {"retrievalResults": [x.to_bedrock()
                                                                     for x in res]}}
                if text is not None:
                    output["text"] = text
                fh.write(json.dumps({"conversationTurns": [{
                    "inputRecord": r["record"]["conversationTurns"][0], "output": output,
                    "results": results}]}, ensure_ascii=False, default=str) + "\n")
        metrics = {n: mean([s.get(n) for s in scores]) for n in names}
        kb_id = rag["knowledgeBaseId"]
        summary = {"knowledgeBase": kb_id, "datasets": {d["name"]: {
            "records": len(recs), "output": str(f), "metrics": metrics}},
            "seconds": round(time.time() - t0, 1)}
        report = {"data": d["name"], "n": len(recs), "task": "rag",
                  "models": [{"id": f"knowledge base {kb_id}" + (
                      f" + {rag['generator']}" if rag.get("generator") else ""), "lineage": [],
                      "metrics": {k: v for k, v in metrics.items() if v is not None},
                      "seconds": summary["seconds"]}],
                  "examples": []}
        return {"summary": summary, "report": report}

