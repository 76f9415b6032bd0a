"""The Bedrock-compatible service, driven as users drive it: a real `afinar serve` subprocess on
127.0.0.1 and boto3's own Bedrock client. Tiny models (an alias maps a Bedrock model id to one)
keep each training job to seconds."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest
from botocore.exceptions import ClientError, ParamValidationError

from servers import CLAUDE, ROLE, Server, _free_port

from conftest import COLORS, THINGS, mapping_rows


@pytest.fixture
def server(tmp_path, tiny_model_dir):
    s = Server(tmp_path / "srv", tiny_model_dir).start()
    yield s
    if s.proc.poll() is None:
        s.kill(signal.SIGTERM)


def _create(bedrock, name, model, train_uri, hp=None, **kw):
    return bedrock.create_model_customization_job(
        jobName=name, customModelName=model, roleArn=ROLE,
        baseModelIdentifier=kw.pop("base", CLAUDE), trainingDataConfig={"s3Uri": train_uri},
        outputDataConfig={"s3Uri": "s3://mi-bucket/fine-tuning/output/"},
        hyperParameters=hp or {"epochCount": "2", "batchSize": "8", "learningRate": "0.01"},
        **kw)["jobArn"]


def _wait(bedrock, arn, until=("Completed", "Failed", "Stopped"), timeout=600, cond=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        j = bedrock.get_model_customization_job(jobIdentifier=arn)
        if j["status"] in until and (cond is None or cond(j)):
            return j
        if cond is not None and cond(j):
            return j
        time.sleep(0.3)
    raise TimeoutError(f"job stuck: {j['status']} {j['statusDetails']} {j.get('failureMessage')}")


def test_seed_flow_completes_and_registers_model(server):
    """The seed's own call, endpoint changed: validation -> processing -> training -> Active
    custom model, Bedrock's output layout, learning visible in the metrics; then a job on top of
    the custom model records the lineage."""
    bedrock = server.client()
    train = server.put("fine-tuning/training_data.jsonl", mapping_rows(64))
    val = server.put("fine-tuning/validation_data.jsonl", mapping_rows(8))
    arn = _create(bedrock, "ft-1", "mi-modelo", train,
                  validationDataConfig={"validators": [{"s3Uri": val}]})
    seen = set()
    deadline = time.time() + 180
    while time.time() < deadline:
        j = bedrock.get_model_customization_job(jobIdentifier=arn)
        seen.add(tuple(v["status"] for v in j["statusDetails"].values()))
        if j["status"] != "InProgress":
            break
        time.sleep(0.2)
    assert j["status"] == "Completed", j.get("failureMessage")
    assert ("Completed", "Completed", "Completed") in seen and len(seen) >= 3
    assert j["outputModelArn"].startswith("arn:aws:bedrock:us-east-1:")
    assert j["endTime"] >= j["creationTime"]
    out = server.bucket / "fine-tuning" / "output" / f"model-customization-job-{arn[-12:]}"
    rows = list(csv.DictReader((out / "training_artifacts" /
                                "step_wise_training_metrics.csv").open()))
    assert list(rows[0]) == ["step_number", "epoch_number", "training_loss", "perplexity"]
    assert float(rows[-1]["training_loss"]) < float(rows[0]["training_loss"]) - 0.3
    assert j["trainingMetrics"]["trainingLoss"] == pytest.approx(
        float(rows[-1]["training_loss"]), rel=1e-4)
    assert j["validationMetrics"][0]["validationLoss"] > 0
    assert (out / "validation_artifacts" / "post_fine_tuning_validation" /
            "validation_metrics.csv").exists()
    assert (out / "adapter" / "adapter_model.safetensors").exists()

    m = bedrock.get_custom_model(modelIdentifier="mi-modelo")
    assert m["modelStatus"] == "Active" and m["jobArn"] == arn
    assert m["modelArn"] == j["outputModelArn"]
    assert bedrock.get_custom_model(modelIdentifier=m["modelArn"])["modelName"] == "mi-modelo"
    names = [s["modelName"] for s in bedrock.list_custom_models()["modelSummaries"]]
    assert names == ["mi-modelo"]

    # fine-tune on top of the custom model, by ARN: lineage base -> mi-modelo -> mi-modelo-2
    arn2 = _create(bedrock, "ft-2", "mi-modelo-2", train, base=m["modelArn"],
                   hp={"epochCount": "1", "learningRate": "0.01"})
    j2 = _wait(bedrock, arn2)
    assert j2["status"] == "Completed", j2.get("failureMessage")
    assert j2["baseModelArn"] == m["modelArn"]
    rec = json.loads((server.home / "custom-models" / "mi-modelo-2.json").read_text())
    assert rec["lineage"][-2:] == ["mi-modelo", "mi-modelo-2"]

    # the CLI against the same server
    env = dict(os.environ, AFINAR_HOME=str(server.home))
    cli = [sys.executable, "-m", "afinar.cli.main", "jobs", "--endpoint", server.url]
    listed = subprocess.run(cli + ["list"], env=env, capture_output=True, text=True, check=True)
    assert "ft-1" in listed.stdout and "Completed" in listed.stdout
    logs = subprocess.run(cli + ["logs", "ft-1", "--follow"], env=env, capture_output=True,
                          text=True, timeout=60)
    assert logs.returncode == 0 and "job completed" in logs.stdout
    assert "training data: 64 records" in logs.stdout
    got = subprocess.run(cli + ["get", "ft-1"], env=env, capture_output=True, text=True,
                         check=True)
    assert "Completed" in got.stdout and "training loss" in got.stdout
    models = subprocess.run([sys.executable, "-m", "afinar.cli.main", "models", "list",
                             "--endpoint", server.url], env=env, capture_output=True, text=True,
                            check=True)
    assert "mi-modelo-2" in models.stdout and CLAUDE in models.stdout


def test_list_paging_filters_and_sort(tmp_path, tiny_model_dir):
    """ListModelCustomizationJobs over a store of 25 jobs: maxResults + nextToken paging visits
    each once, status/name filters and both sort orders."""
    from afinar.config import load_settings
    from afinar.jobs.service import JobService
    from afinar.jobs.store import set_fields

    srv = Server(tmp_path / "srv", tiny_model_dir)
    svc = JobService(load_settings({"home": srv.home}))
    train = srv.put("d/train.jsonl", mapping_rows(8))
    for i in range(25):
        svc.create_job({"jobName": f"job-{i:02d}{'-x' if i % 5 == 0 else ''}",
                        "customModelName": f"m{i}", "roleArn": ROLE,
                        "baseModelIdentifier": "tiny", "trainingDataConfig": {"s3Uri": train},
                        "outputDataConfig": {"s3Uri": "s3://mi-bucket/out/"}})
        time.sleep(0.002)
    for i in range(25):
        svc_row = svc._job_row(f"job-{i:02d}{'-x' if i % 5 == 0 else ''}")
        set_fields(svc.engine, svc_row.id, status="Failed" if i % 2 else "Completed")
    srv.start()
    try:
        bedrock = srv.client()
        names, token, pages = [], None, 0
        while True:
            kw = {"maxResults": 10, **({"nextToken": token} if token else {})}
            page = bedrock.list_model_customization_jobs(**kw)
            names += [s["jobName"] for s in page["modelCustomizationJobSummaries"]]
            pages += 1
            token = page.get("nextToken")
            if not token:
                break
        assert pages == 3 and len(names) == 25 and len(set(names)) == 25
        assert names[0] == "job-24" and names[-1] == "job-00-x"  # newest first by default
        asc = bedrock.list_model_customization_jobs(sortOrder="Ascending", maxResults=3)
        assert [s["jobName"] for s in asc["modelCustomizationJobSummaries"]] == [
            "job-00-x", "job-01", "job-02"]
        failed = bedrock.list_model_customization_jobs(statusEquals="Failed")
        assert {s["status"] for s in failed["modelCustomizationJobSummaries"]} == {"Failed"}
        assert len(failed["modelCustomizationJobSummaries"]) == 12
        x = bedrock.list_model_customization_jobs(nameContains="x")
        assert len(x["modelCustomizationJobSummaries"]) == 5
        mid = bedrock.get_model_customization_job(jobIdentifier="job-12")["creationTime"]
        after = bedrock.list_model_customization_jobs(creationTimeAfter=mid)
        assert len(after["modelCustomizationJobSummaries"]) == 12
        paginator = bedrock.get_paginator("list_model_customization_jobs")
        assert sum(len(p["modelCustomizationJobSummaries"])
                   for p in paginator.paginate(PaginationConfig={"PageSize": 7})) == 25
    finally:
        srv.kill(signal.SIGTERM)


def _code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def test_errors_are_modelled_exceptions(server):
    bedrock = server.client()
    train = server.put("d/train.jsonl", mapping_rows(16))
    bad_hp = [({"epochCount": "abc"}, "epochCount"), ({"epochCount": "0"}, "epochCount"),
              ({"learningRate": "5"}, "learningRate"), ({"batchSize": "x"}, "batchSize"),
              ({"nonsense": "1"}, "nonsense")]
    for hp, field in bad_hp:
        with pytest.raises(bedrock.exceptions.ValidationException, match=field):
            _create(bedrock, "bad", "bad", train, hp=hp)
    with pytest.raises(bedrock.exceptions.ValidationException, match="smollm2-135m-instruct"):
        _create(bedrock, "bad", "bad", train, base="meta.llama3-8b-instruct-v1:0")
    for uri, what in (("s3://mi-bucket/../../etc/passwd", "'..'"),
                      ("/etc/passwd", "allowed_roots"), ("ftp://x/y", "scheme")):
        with pytest.raises(bedrock.exceptions.ValidationException, match=what):
            _create(bedrock, "bad", "bad", uri)
    with pytest.raises(bedrock.exceptions.ValidationException, match="teacherModelIdentifier"):
        _create(bedrock, "bad", "bad", train, customizationType="DISTILLATION")
    with pytest.raises(bedrock.exceptions.ValidationException, match="jobName"):
        _create(bedrock, "no spaces allowed", "bad", train)
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException, match="no-such-job"):
        bedrock.get_model_customization_job(jobIdentifier="no-such-job")
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_custom_model(modelIdentifier="no-such-model")
    with pytest.raises(bedrock.exceptions.ResourceNotFoundException):
        bedrock.get_foundation_model(modelIdentifier="nope.nope-v1")
    with pytest.raises(ParamValidationError):  # boto3 checks required fields itself
        bedrock.create_model_customization_job(jobName="x")

    # idempotency: the same clientRequestToken gives the same job; a reused one conflicts
    hp = {"epochCount": "1", "batchSize": "8", "learningRate": "0.01"}
    a = _create(bedrock, "idem", "idem-model", train, hp=hp, clientRequestToken="tok-1")
    b = _create(bedrock, "idem", "idem-model", train, hp=hp, clientRequestToken="tok-1")
    assert a == b
    with pytest.raises(bedrock.exceptions.ConflictException, match="tok-1"):
        _create(bedrock, "idem-2", "other", train, hp=hp, clientRequestToken="tok-1")
    with pytest.raises(bedrock.exceptions.ConflictException, match="already exists"):
        _create(bedrock, "idem", "another-model", train, hp=hp)
    with pytest.raises(bedrock.exceptions.ConflictException, match="idem-model"):
        _create(bedrock, "idem-3", "idem-model", train, hp=hp)
    _wait(bedrock, a)
    with pytest.raises(bedrock.exceptions.ValidationException, match="only InProgress"):
        bedrock.stop_model_customization_job(jobIdentifier=a)

    # raw HTTP: malformed requests are ValidationExceptions naming the problem, never a 500
    def raw(method, path, body: bytes):
        req = urllib.request.Request(server.url + path, data=body, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, r.headers, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            return e.code, e.headers, json.loads(e.read() or b"{}")

    st, h, body = raw("POST", "/model-customization-jobs", b"{not json")
    assert st == 400 and h["x-amzn-ErrorType"] == "ValidationException"
    assert "not valid JSON" in body["message"]
    req = {"jobName": "j", "customModelName": "m", "roleArn": ROLE, "baseModelIdentifier": "tiny",
           "trainingDataConfig": {"s3Uri": train},
           "outputDataConfig": {"s3Uri": "s3://mi-bucket/o/"}}
    st, h, body = raw("POST", "/model-customization-jobs",
                      json.dumps({**req, "surprise": 1}).encode())
    assert st == 400 and "surprise" in body["message"]
    st, h, body = raw("POST", "/model-customization-jobs",
                      json.dumps({**req, "hyperParameters": {"epochCount": 3}}).encode())
    assert st == 400 and "hyperParameters.epochCount" in body["message"]
    st, h, body = raw("POST", "/model-customization-jobs",
                      json.dumps({k: v for k, v in req.items() if k != "roleArn"}).encode())
    assert st == 400 and "roleArn" in body["message"]
    for bad in ("../../x/fake", "a/b", "a" * 63 + "b"):  # a name is never a path
        st, h, body = raw("POST", "/model-customization-jobs",
                          json.dumps({**req, "customModelName": bad}).encode())
        assert st == 400 and "customModelName" in body["message"], body
    st, h, body = raw("GET", "/model-customization-jobs?maxResults=5000", b"")
    assert st == 400 and "maxResults" in body["message"]


def test_foundation_models_and_aliases(server):
    bedrock = server.client()
    ids = [m["modelId"] for m in bedrock.list_foundation_models()["modelSummaries"]]
    assert "huggingfacetb.smollm2-135m-instruct" in ids and CLAUDE in ids
    d = bedrock.get_foundation_model(
        modelIdentifier="huggingfacetb.smollm2-135m-instruct")["modelDetails"]
    assert "FINE_TUNING" in d["customizationsSupported"]
    assert bedrock.get_foundation_model(modelIdentifier=d["modelArn"])["modelDetails"] == d
    alias = bedrock.get_foundation_model(modelIdentifier=CLAUDE)["modelDetails"]
    assert alias["modelId"] == CLAUDE and alias["providerName"] == "local"
    # every id afinar lists is taken here too: the registry id, a short alias (listed to boto3
    # as afinar.<alias>, which botocore's patterns take), the embedding model
    assert bedrock.get_foundation_model(modelIdentifier="smollm2-135m-instruct")[
        "modelDetails"] == d
    assert "afinar.tiny" in ids
    assert bedrock.get_foundation_model(modelIdentifier="tiny")["modelDetails"][
        "modelId"] == "afinar.tiny"
    emb = bedrock.list_foundation_models(byOutputModality="EMBEDDING")["modelSummaries"]
    assert [m["modelId"] for m in emb] == ["sentencetransformers.all-minilm-l6-v2"]
    assert bedrock.list_foundation_models(byProvider="nobody")["modelSummaries"] == []
    # the server process stays light: torch is loaded only by the job workers
    maps = Path(f"/proc/{server.proc.pid}/maps")
    if maps.exists():
        assert "libtorch" not in maps.read_text()


def test_bad_data_fails_fast_with_line_numbers(server):
    bedrock = server.client()
    lines = [json.dumps(r) for r in mapping_rows(20)]
    lines[2] = "{broken json"
    lines[5] = json.dumps({"prompt": "hi", "completion": ""})
    p = server.bucket / "d" / "bad.jsonl"
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("\n".join(lines) + "\n")
    j = _wait(bedrock, _create(bedrock, "bad-data", "m-bad", "s3://mi-bucket/d/bad.jsonl"),
              timeout=600)
    assert j["status"] == "Failed"
    assert j["statusDetails"]["validationDetails"]["status"] == "Failed"
    assert j["statusDetails"]["trainingDetails"]["status"] == "NotStarted"
    assert "line 3" in j["failureMessage"] and "line 6" in j["failureMessage"]
    missing = _wait(bedrock, _create(bedrock, "no-data", "m-none", "s3://mi-bucket/d/x.jsonl"),
                    timeout=600)
    assert missing["status"] == "Failed" and "does not exist" in missing["failureMessage"]


def _long_job(server, bedrock, name, model, ckpt=5):
    train = server.put(f"d/{name}.jsonl", mapping_rows(320))
    return _create(bedrock, name, model, train,
                   hp={"epochCount": "10", "batchSize": "2", "learningRate": "0.01",
                       "checkpoint_every": str(ckpt)})


def _training(j) -> bool:
    return j["statusDetails"]["trainingDetails"]["status"] == "InProgress" and \
        bool(j.get("trainingMetrics"))


def test_stop_mid_training_keeps_checkpoints(server):
    bedrock = server.client()
    arn = _long_job(server, bedrock, "to-stop", "m-stop")
    _wait(bedrock, arn, until=(), cond=_training, timeout=600)
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    st = bedrock.get_model_customization_job(jobIdentifier=arn)["status"]
    assert st in ("Stopping", "Stopped")
    j = _wait(bedrock, arn, timeout=600)
    assert j["status"] == "Stopped"
    assert j["statusDetails"]["trainingDetails"]["status"] == "Stopped"
    ckpts = list((server.home / "jobs" / arn[-12:] / "run" / "checkpoints").glob("step-*"))
    assert ckpts, "a stopped job keeps its checkpoint"
    with pytest.raises(ClientError):
        bedrock.get_custom_model(modelIdentifier="m-stop")


def test_sigkill_of_worker_fails_job_with_reason_then_resume(server):
    """A killed worker fails its job with the reason (no progress-bar noise quoted); `afinar
    jobs resume` queues it again and the new worker starts from the kept checkpoint."""
    bedrock = server.client()
    arn = _long_job(server, bedrock, "to-kill", "m-kill")
    ck = server.home / "jobs" / arn[-12:] / "run" / "checkpoints"
    _wait(bedrock, arn, until=(), cond=lambda j: _training(j) and any(ck.glob("step-*")),
          timeout=600)
    pid = server.status()["running"][arn[-12:]]
    os.kill(pid, signal.SIGKILL)
    j = _wait(bedrock, arn, timeout=600)
    assert j["status"] == "Failed" and "SIGKILL" in j["failureMessage"]
    assert "%|" not in j["failureMessage"] and "it/s]" not in j["failureMessage"]
    assert (server.home / "jobs" / arn[-12:] / "worker.log").exists()

    from afinar.cli.main import main
    assert main(["jobs", "--endpoint", server.url, "resume", "to-kill"]) == 0
    assert main(["jobs", "--endpoint", server.url, "resume", "to-kill"]) != 0  # InProgress now

    def resumed(_j) -> bool:
        return any("resuming from step-" in e["message"] for e in server.events(arn[-12:]))
    _wait(bedrock, arn, until=(), cond=resumed, timeout=600)
    bedrock.stop_model_customization_job(jobIdentifier=arn)
    assert _wait(bedrock, arn, timeout=600)["status"] in ("Stopped", "Completed")


def test_server_sigkill_then_restart_resumes_from_checkpoint(server):
    bedrock = server.client()
    train = server.put("d/resume.jsonl", mapping_rows(128))
    arn = _create(bedrock, "survivor", "m-survivor", train,
                  hp={"epochCount": "6", "batchSize": "2", "learningRate": "0.01",
                      "checkpoint_every": "20"})
    ck = server.home / "jobs" / arn[-12:] / "run" / "checkpoints"
    deadline = time.time() + 600
    while not list(ck.glob("step-*")) and time.time() < deadline:
        time.sleep(0.2)
    assert list(ck.glob("step-*")), "no checkpoint written"
    worker = server.status()["running"][arn[-12:]]
    server.kill(signal.SIGKILL)
    deadline = time.time() + 60
    while time.time() < deadline:  # the worker dies with the server
        try:
            os.kill(worker, 0)
            time.sleep(0.1)
        except ProcessLookupError:
            break
    else:
        pytest.fail("worker outlived the server")
    server.start()
    bedrock = server.client()
    j = _wait(bedrock, arn, timeout=600)
    assert j["status"] == "Completed", j.get("failureMessage")
    with urllib.request.urlopen(f"{server.url}/afinar/jobs/survivor/events") as r:
        log = " ".join(e["message"] for e in json.loads(r.read())["events"])
    assert "server restarted" in log and "resuming from step-" in log
    rows = list(csv.DictReader((server.home / "jobs" / arn[-12:] / "run" / "training_artifacts"
                                / "step_wise_training_metrics.csv").open()))
    steps = [int(r["step_number"]) for r in rows]
    # none lost or doubled: 6 epochs of 58 batches (128 rows, 13 held out to validate on)
    assert steps == list(range(len(steps))) and len(steps) == 348


def test_authentication_when_required(tmp_path, tiny_model_dir):
    srv = Server(tmp_path / "srv", tiny_model_dir, extra_toml=(
        'require_auth = true\napi_keys = ["k-123"]\n[access_keys]\nAKIDTEST = "s3cret"\n'))
    srv.start()
    try:
        ok = srv.client(aws_access_key_id="AKIDTEST", aws_secret_access_key="s3cret")
        assert ok.list_foundation_models()["modelSummaries"]
        assert ok.list_model_customization_jobs(maxResults=5, nameContains="a.b+c")[
            "modelCustomizationJobSummaries"] == []
        with pytest.raises(ok.exceptions.ResourceNotFoundException):  # signed ARN path label
            ok.get_custom_model(
                modelIdentifier="arn:aws:bedrock:us-east-1:000000000000:custom-model/a.b/"
                                "abcdefabcdef")
        messages = set()
        for akid, secret in (("AKIDTEST", "wrong"), ("NOPE", "s3cret")):
            with pytest.raises(ClientError, match="not valid") as e:
                srv.client(aws_access_key_id=akid,
                           aws_secret_access_key=secret).list_foundation_models()
            assert _code(e) == "AccessDeniedException"
            messages.add(str(e.value))
        assert len(messages) == 1  # unknown and wrong keys: one answer
        req = urllib.request.Request(f"{srv.url}/foundation-models")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=5)
        assert e.value.code == 401
        req.add_header("Authorization", "Bearer k-123")
        with urllib.request.urlopen(req, timeout=5) as r:
            assert json.loads(r.read())["modelSummaries"]
    finally:
        srv.kill(signal.SIGTERM)


def test_non_loopback_bind_without_keys_refused(tmp_path):
    from afinar.config import load_settings
    from afinar.errors import ConfigError
    from afinar.serve.app import serve

    with pytest.raises(ConfigError, match="authentication"):
        serve(load_settings({"home": tmp_path, "host": "0.0.0.0"}))


def test_postgresql_job_store(tmp_path, tiny_model_dir, postgres_url):
    """The same server on PostgreSQL: migrations apply once, the seed flow completes, listing
    and the event log work."""
    from sqlalchemy import create_engine, text

    from afinar import db

    srv = Server(tmp_path / "srv", tiny_model_dir, extra_toml=f'database_url = "{postgres_url}"')
    srv.start()
    try:
        bedrock = srv.client()
        train = srv.put("d/train.jsonl", mapping_rows(32))
        arn = _create(bedrock, "pg-job", "pg-model", train,
                      hp={"epochCount": "1", "learningRate": "0.01"})
        j = _wait(bedrock, arn, timeout=600)
        assert j["status"] == "Completed", j.get("failureMessage")
        jobs = bedrock.list_model_customization_jobs()["modelCustomizationJobSummaries"]
        assert [x["jobName"] for x in jobs] == ["pg-job"]
    finally:
        srv.kill(signal.SIGTERM)
    engine = create_engine(postgres_url)
    with engine.connect() as c:
        names = [r[0] for r in c.execute(text("SELECT name FROM schema_migrations ORDER BY 1"))]
        n_events = c.execute(text("SELECT count(*) FROM job_events")).scalar_one()
    assert names == [m[0] for m in db.MIGRATIONS] and n_events > 3
    assert db.migrate(engine) == []  # already applied


def test_continued_pre_training_job(server):
    """CONTINUED_PRE_TRAINING takes Bedrock's {"input": text} records and learns them; the same
    file as FINE_TUNING data fails validation, saying why."""
    bedrock = server.client()
    text = [{"input": f"The {t} is {c}. Everyone knows the {t} is {c}."}
            for t, c in zip(["apple", "grass", "sky", "coal"] * 16,
                            ["red", "green", "blue", "black"] * 16, strict=True)]
    uri = server.put("cpt/text.jsonl", text)
    arn = _create(bedrock, "cpt-1", "m-cpt", uri, customizationType="CONTINUED_PRE_TRAINING",
                  hp={"epochCount": "3", "batchSize": "4", "learningRate": "0.01",
                      "max_length": "64"})
    j = _wait(bedrock, arn)
    assert j["status"] == "Completed", j.get("failureMessage")
    assert j["customizationType"] == "CONTINUED_PRE_TRAINING"
    rows = list(csv.DictReader((server.home / "jobs" / arn[-12:] / "run" / "training_artifacts"
                                / "step_wise_training_metrics.csv").open()))
    assert float(rows[-1]["training_loss"]) < float(rows[0]["training_loss"]) - 0.5
    assert bedrock.get_custom_model(modelIdentifier="m-cpt")["customizationType"] == \
        "CONTINUED_PRE_TRAINING"
    ft = _wait(bedrock, _create(bedrock, "ft-on-text", "m-x", uri), timeout=600)
    assert ft["status"] == "Failed" and "CONTINUED_PRE_TRAINING" in ft["failureMessage"]


def test_preference_tuning_job_on_a_custom_model(server):
    """The usual recipe through boto3: a FINE_TUNING job, then a FINE_TUNING job with
    hyperParameters type=dpo on top of its custom model with preference pairs; the pairs are
    checked like any data (a broken one is named by line and field)."""
    from test_preference import openai_rows, pair_rows

    bedrock = server.client()
    sft = _wait(bedrock, _create(bedrock, "sft", "m-sft", server.put("p/sft.jsonl",
                                                                       mapping_rows(32))))
    assert sft["status"] == "Completed", sft.get("failureMessage")
    pairs = server.put("p/pairs.jsonl", pair_rows(64))
    val = server.put("p/val.jsonl", openai_rows(8))
    hp = {"type": "dpo", "loss": "dpo", "beta": "0.1", "method": "full", "epochCount": "4",
          "batchSize": "8", "learningRate": "0.01", "precision": "fp32", "warmup_steps": "0"}
    arn = _create(bedrock, "dpo", "m-dpo", pairs, base="m-sft", hp=hp,
                  validationDataConfig={"validators": [{"s3Uri": val}]})
    j = _wait(bedrock, arn)
    assert j["status"] == "Completed", j.get("failureMessage")
    assert j["hyperParameters"]["type"] == "dpo"
    assert j["baseModelArn"] == sft["outputModelArn"]
    rec = json.loads((server.home / "custom-models" / "m-dpo.json").read_text())
    assert rec["lineage"][-2:] == ["m-sft", "m-dpo"]
    out = server.bucket / "fine-tuning" / "output" / f"model-customization-job-{arn[-12:]}"
    log = [json.loads(x) for x in (out / "training_artifacts" / "training_log.jsonl")
           .read_text().splitlines()]
    last_val = [r for r in log if r["kind"] == "validation"][-1]
    # learning: below -log sigmoid(0) = 0.693, where every pair starts; most pairs ranked right
    assert last_val["loss"] < 0.6 and last_val["reward_margin"] > 0.1, last_val
    assert last_val["reward_accuracy"] >= 0.75, last_val
    assert any("reward accuracy" in e["message"] for e in server.events("dpo")), \
        server.events("dpo")
    # a pair without its non-preferred answer: the job fails in validation, saying where
    bad = server.put("p/bad.jsonl", pair_rows(8) + [{"prompt": "x", "chosen": "y"}])
    j = _wait(bedrock, _create(bedrock, "dpo-bad", "m-bad", bad, base="m-sft", hp=hp))
    assert j["status"] == "Failed" and "line 9" in j["failureMessage"] and \
        "'rejected'" in j["failureMessage"], j["failureMessage"]
    # preference pairs without type=dpo are refused with the way out
    j = _wait(bedrock, _create(bedrock, "sft-on-pairs", "m-bad2", pairs))
    assert j["status"] == "Failed" and "type" in j["failureMessage"] and \
        "dpo" in j["failureMessage"], j["failureMessage"]


GRADER_ARN = "arn:aws:lambda:us-east-1:000000000000:function:colour-grader"


def test_reinforcement_fine_tuning_job(tmp_path, tiny_model_dir):
    """REINFORCEMENT_FINE_TUNING through boto3: rftConfig's lambdaGrader ARN names a grader
    registered in the server's settings (a Python file here); rftConfig's hyperparameters are
    Bedrock's; the job samples, grades and trains on top of a custom model and records the
    rewards. Unregistered graders and unsupported settings are refused by name."""
    from test_rft import prompts

    grader = tmp_path / "grader.py"
    grader.write_text("def grade(sample, item):\n"
                      "    return float(sample['output_text'] == item['reference_answer'])\n")
    srv = Server(tmp_path / "srv", tiny_model_dir,
                 extra_toml=f'[graders]\n"{GRADER_ARN}" = "{grader}"').start()
    try:
        bedrock = srv.client()
        uniform = [{"prompt": f"Colour of {THINGS[i % 4]}?",
                    "completion": COLORS[(i // 4) % 4]} for i in range(64)]
        sft = _wait(bedrock, _create(bedrock, "sft", "m-sft", srv.put("r/sft.jsonl", uniform),
                                     hp={"method": "full", "epochCount": "4",
                                         "learningRate": "0.01", "precision": "fp32",
                                         "validation_split": "0"}))
        assert sft["status"] == "Completed", sft.get("failureMessage")
        data = srv.put("r/prompts.jsonl", prompts(32))
        rft = {"graderConfig": {"lambdaGrader": {"lambdaArn": GRADER_ARN}},
               "hyperParameters": {"epochCount": 2, "batchSize": 16, "learningRate": 0.001,
                                   "trainingSamplePerPrompt": 4, "inferenceMaxTokens": 4,
                                   "maxPromptLength": 256}}
        extra = {"method": "full", "precision": "fp32", "validation_split": "0"}
        arn = _create(bedrock, "rft", "m-rft", data, base="m-sft", hp=extra,
                      customizationType="REINFORCEMENT_FINE_TUNING",
                      customizationConfig={"rftConfig": rft})
        j = _wait(bedrock, arn)
        assert j["status"] == "Completed", j.get("failureMessage")
        assert j["customizationType"] == "REINFORCEMENT_FINE_TUNING"
        assert j["customizationConfig"]["rftConfig"]["graderConfig"] == rft["graderConfig"]
        out = srv.bucket / "fine-tuning" / "output" / f"model-customization-job-{arn[-12:]}"
        steps = [json.loads(x) for x in (out / "training_artifacts" / "training_log.jsonl")
                 .read_text().splitlines() if '"train"' in x]
        assert len(steps) == 4 and all(0 <= r["mean_reward"] <= 1 for r in steps), steps
        assert any("mean reward" in e["message"] for e in srv.events("rft"))
        assert bedrock.get_custom_model(modelIdentifier="m-rft")["customizationType"] == \
            "REINFORCEMENT_FINE_TUNING"

        def refused(**kw) -> str:
            with pytest.raises(bedrock.exceptions.ValidationException) as e:
                _create(bedrock, "rft-bad", "m-bad", data, base="m-sft",
                        customizationType="REINFORCEMENT_FINE_TUNING", **kw)
            return str(e.value)

        other = GRADER_ARN.replace("colour-grader", "unknown")
        assert "no grader is registered" in refused(customizationConfig={"rftConfig": {
            "graderConfig": {"lambdaGrader": {"lambdaArn": other}}}})
        assert "reasoningEffort" in refused(customizationConfig={"rftConfig": {
            **rft, "hyperParameters": {"reasoningEffort": "high"}}})
        assert "grader cannot be set by a request" in refused(
            hp={"grader": str(grader)}, customizationConfig={"rftConfig": rft})
        assert "rftConfig" in refused()
    finally:
        srv.kill(signal.SIGTERM)


@pytest.mark.slow
def test_default_model_job(tmp_path, tiny_model_dir):
    """One job on the real default model (SmolLM2-135M-Instruct), a few steps."""
    srv = Server(tmp_path / "srv", tiny_model_dir).start()
    try:
        bedrock = srv.client()
        train = srv.put("d/train.jsonl", mapping_rows(16))
        arn = _create(bedrock, "smol", "smol-tuned", train,
                      base="huggingfacetb.smollm2-135m-instruct",
                      hp={"epochCount": "auto", "batchSize": "4", "learningRate": "auto",
                          "max_steps": "3", "merge": "false"})
        j = _wait(bedrock, arn, timeout=600)
        assert j["status"] == "Completed", j.get("failureMessage")
        assert j["baseModelArn"].endswith("foundation-model/huggingfacetb.smollm2-135m-instruct")
        assert 0 < j["trainingMetrics"]["trainingLoss"] < 10
        # "auto" chosen from the data (16 rows in batches of 4) and the model's ~135M parameters
        auto = [e["message"] for e in srv.events("smol")
                if e["message"].startswith("auto hyperparameters:")]
        assert len(auto) == 1 and "epochs 5 (4 steps per epoch" in auto[0], auto
        assert "learning_rate 0.001 (LoRA on a 134M-parameter model" in auto[0], auto
        assert "batch_size" not in auto[0]  # given: not chosen
    finally:
        srv.kill(signal.SIGTERM)


def test_s3_compatible_endpoint(tmp_path, tiny_model_dir, monkeypatch):
    """With s3_endpoint_url set, data is read from and outputs written to an S3-compatible
    store over HTTP (moto's S3 server here), with boto3, not the local bucket root."""
    moto_server = pytest.importorskip("moto.server")
    s3srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=_free_port())
    s3srv.start()
    try:
        endpoint = f"http://127.0.0.1:{s3srv._server.server_port}"
        for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                     "AWS_DEFAULT_REGION": "us-east-1"}.items():
            monkeypatch.setenv(k, v)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket="remote-bucket")
        body = "\n".join(json.dumps(r) for r in mapping_rows(32)) + "\n"
        s3.put_object(Bucket="remote-bucket", Key="ft/train.jsonl", Body=body.encode())
        srv = Server(tmp_path / "srv", tiny_model_dir,
                     extra_toml=f's3_endpoint_url = "{endpoint}"').start()
        try:
            bedrock = srv.client()
            arn = bedrock.create_model_customization_job(
                jobName="remote", customModelName="m-remote", roleArn=ROLE,
                baseModelIdentifier="tiny",
                trainingDataConfig={"s3Uri": "s3://remote-bucket/ft/train.jsonl"},
                outputDataConfig={"s3Uri": "s3://remote-bucket/out/"},
                hyperParameters={"epochCount": "1", "learningRate": "0.01"})["jobArn"]
            j = _wait(bedrock, arn, timeout=600)
            assert j["status"] == "Completed", j.get("failureMessage")
            missing = _wait(bedrock, _create(bedrock, "remote-missing", "m-r2",
                                             "s3://remote-bucket/ft/nope.jsonl"), timeout=600)
            assert missing["status"] == "Failed" and "cannot read" in missing["failureMessage"]
        finally:
            srv.kill(signal.SIGTERM)
        keys = [o["Key"] for o in s3.list_objects_v2(Bucket="remote-bucket",
                                                    Prefix="out/")["Contents"]]
        prefix = f"out/model-customization-job-{arn[-12:]}/"
        assert prefix + "training_artifacts/step_wise_training_metrics.csv" in keys
        assert prefix + "adapter/adapter_model.safetensors" in keys
        assert not (srv.home / "s3").exists() or not any((srv.home / "s3").rglob("*.csv"))
    finally:
        s3srv.stop()


def test_distillation_job_from_a_file_and_from_the_invocation_log(tmp_path, tiny_model_dir):
    """DISTILLATION through boto3: a custom model (fine-tuned on a mapping by an SFT job) is
    the teacher of the tiny base on unlabelled prompts, and the student answers as the teacher
    does. Then invocation logging is turned on, calls are made (Converse and OpenAI chat, with
    request metadata), and a second job learns from the logged calls that match a filter,
    keeping their logged answers (usePromptResponse)."""
    from test_distill import SECRET

    srv = Server(tmp_path / "srv", tiny_model_dir).start()
    try:
        bedrock = srv.client()
        rt = boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                          aws_access_key_id="test", aws_secret_access_key="test")
        rows = [{"prompt": r["prompt"], "completion": SECRET[r["prompt"][10:-1]]}
                for r in mapping_rows(160)]
        full = {"method": "full", "epochCount": "8", "learningRate": "0.01",
                "precision": "fp32", "validation_split": "0"}
        t = _wait(bedrock, _create(bedrock, "teach", "m-teacher", srv.put("d/t.jsonl", rows),
                                   hp=full))
        assert t["status"] == "Completed", t.get("failureMessage")
        prompts = srv.put("d/prompts.jsonl", [{"prompt": r["prompt"]}
                                              for r in mapping_rows(160)])
        teacher = {"distillationConfig": {"teacherModelConfig": {
            "teacherModelIdentifier": "afinar.m-teacher", "maxResponseLengthForInference": 8}}}
        arn = _create(bedrock, "distil", "m-student", prompts, base="tiny", hp=full,
                      customizationType="DISTILLATION", customizationConfig=teacher)
        j = _wait(bedrock, arn)
        assert j["status"] == "Completed", j.get("failureMessage")
        assert j["customizationConfig"] == teacher
        out = srv.bucket / "fine-tuning" / "output" / f"model-customization-job-{arn[-12:]}"
        kept = (out / "distillation" / "training_responses.jsonl").read_text().splitlines()
        assert len(kept) == 160
        ask = [{"role": "user", "content": [{"text": f"Colour of {t}?"}]} for t in THINGS]

        def answers(model: str, **kw) -> list[str]:
            return [rt.converse(modelId=model, messages=[m], **kw)["output"]["message"][
                "content"][0]["text"] for m in ask]

        assert answers("m-student") == [SECRET[t] for t in THINGS]
        assert bedrock.get_custom_model(modelIdentifier="m-student")["customizationType"] == \
            "DISTILLATION"

        # -- the invocation log ---------------------------------------------------------------
        assert "loggingConfig" not in bedrock.get_model_invocation_logging_configuration()
        bedrock.put_model_invocation_logging_configuration(loggingConfig={
            "s3Config": {"bucketName": "mi-bucket", "keyPrefix": "invocations"},
            "textDataDeliveryEnabled": True})
        got = bedrock.get_model_invocation_logging_configuration()["loggingConfig"]
        assert got["s3Config"] == {"bucketName": "mi-bucket", "keyPrefix": "invocations"}
        answers("m-teacher", requestMetadata={"app": "colours"})
        answers("m-teacher", requestMetadata={"app": "other"})
        body = {"model": "m-teacher", "metadata": {"app": "colours"},
                "messages": [{"role": "user", "content": "Colour of sky?"}]}
        req = urllib.request.Request(f"{srv.url}/v1/chat/completions",
                                     json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as r:
            assert json.loads(r.read())["choices"][0]["message"]["content"] == SECRET["sky"]
        logs = {"invocationLogSource": {"s3Uri": "s3://mi-bucket/invocations/"},
                "usePromptResponse": True,
                "requestMetadataFilters": {"equals": {"app": "colours"}}}
        arn = bedrock.create_model_customization_job(
            jobName="from-logs", customModelName="m-logs", roleArn=ROLE,
            baseModelIdentifier="tiny", customizationType="DISTILLATION",
            customizationConfig=teacher, trainingDataConfig={"invocationLogsConfig": logs},
            outputDataConfig={"s3Uri": "s3://mi-bucket/fine-tuning/output/"},
            hyperParameters={"max_steps": "1", "precision": "fp32",
                             "validation_split": "0"})["jobArn"]
        j = _wait(bedrock, arn)
        assert j["status"] == "Completed", j.get("failureMessage")
        assert any("5 prompts; left out: 4 filtered out" in e["message"]
                   for e in srv.events("from-logs")), srv.events("from-logs")
        out = srv.bucket / "fine-tuning" / "output" / f"model-customization-job-{arn[-12:]}"
        kept = [json.loads(x) for x in (out / "distillation" / "training_responses.jsonl")
                .read_text().splitlines()]
        assert len(kept) == 5 and {k["answered_by"] for k in kept} == {"record"}
        assert {k["messages"][-1]["content"] for k in kept} == set(SECRET.values())
        bedrock.delete_model_invocation_logging_configuration()
        assert "loggingConfig" not in bedrock.get_model_invocation_logging_configuration()

        def refused(**kw) -> str:
            kw.setdefault("customizationType", "DISTILLATION")
            with pytest.raises(bedrock.exceptions.ValidationException) as e:
                _create(bedrock, "bad", "m-bad", prompts, base="tiny", **kw)
            return str(e.value)

        assert "teacherModelIdentifier" in refused()
        assert "teacherModelIdentifier: 'afinar.nope' is not a known model" in refused(
            customizationConfig={"distillationConfig": {"teacherModelConfig": {
                "teacherModelIdentifier": "afinar.nope"}}})
        assert "rftConfig does not fit customizationType DISTILLATION" in refused(
            customizationConfig={"rftConfig": {"graderConfig": {"lambdaGrader": {
                "lambdaArn": GRADER_ARN}}}})
        assert "teacher cannot be set by a request" in refused(
            customizationConfig=teacher, hp={"teacher": "m-teacher"})
        with pytest.raises(bedrock.exceptions.ValidationException, match="is for "
                           "customizationType DISTILLATION"):
            bedrock.create_model_customization_job(
                jobName="bad2", customModelName="m-bad2", roleArn=ROLE, baseModelIdentifier="tiny",
                trainingDataConfig={"invocationLogsConfig": logs},
                outputDataConfig={"s3Uri": "s3://mi-bucket/o/"})
        with pytest.raises(bedrock.exceptions.ValidationException, match="cloudWatchConfig"):
            bedrock.put_model_invocation_logging_configuration(loggingConfig={
                "cloudWatchConfig": {"logGroupName": "g", "roleArn": ROLE}})
    finally:
        srv.kill(signal.SIGTERM)
