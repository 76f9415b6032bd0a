"""Bedrock batch inference (model invocation jobs) through boto3 against a real server: records
in Anthropic's native body answered in Bedrock's output layout, a bad record failing alone, a
queued job stopped, and the customization APIs not seeing these jobs."""

from __future__ import annotations

import json
import time

import pytest
from botocore.exceptions import ClientError

from servers import CLAUDE, ROLE, Server


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    s = Server(tmp_path_factory.mktemp("batch") / "home", tiny_model_dir).start()
    yield s
    s.kill()


def _records(n: int, start: int = 0) -> list:
    return [{"recordId": f"r{i:03d}", "modelInput": {
        "anthropic_version": "bedrock-2023-05-31", "max_tokens": 6,
        "messages": [{"role": "user", "content": f"Say something about {i}."}]}}
        for i in range(start, start + n)]


def _wait(client, arn: str, timeout: float = 900) -> dict:
    deadline = time.time() + timeout
    while True:
        job = client.get_model_invocation_job(jobIdentifier=arn)
        if job["status"] in ("Completed", "Failed", "Stopped"):
            return job
        assert time.time() < deadline, job
        time.sleep(0.5)


def test_batch_job_answers_every_record_in_bedrocks_layout(srv):
    rows = _records(5)
    rows[2]["modelInput"].pop("max_tokens")  # an invalid body: this record fails alone
    src = srv.put("batch/input.jsonl", rows)
    with open(srv.bucket / "batch/input.jsonl", "a", encoding="utf-8") as f:
        f.write("this line is not JSON\n")
    client = srv.client()
    arn = client.create_model_invocation_job(
        jobName="batch-1", roleArn=ROLE, modelId=CLAUDE, clientRequestToken="tok-1",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": src}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/batch-out/"}},
    )["jobArn"]
    assert ":model-invocation-job/" in arn
    # the same token and parameters: the same job
    assert client.create_model_invocation_job(
        jobName="batch-1", roleArn=ROLE, modelId=CLAUDE, clientRequestToken="tok-1",
        inputDataConfig={"s3InputDataConfig": {"s3Uri": src}},
        outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/batch-out/"}},
    )["jobArn"] == arn
    job = _wait(client, arn)
    assert job["status"] == "Completed", job
    assert (job["totalRecordCount"], job["successRecordCount"], job["errorRecordCount"]) == \
        (6, 4, 2)
    job_id = arn.rsplit("/", 1)[-1]
    out = srv.bucket / "batch-out" / job_id
    lines = [json.loads(x) for x in (out / "input.jsonl.out").read_text().splitlines()]
    assert [x["recordId"] for x in lines] == ["r000", "r001", "r002", "r003", "r004", "line-6"]
    ok = [x for x in lines if "modelOutput" in x]
    assert len(ok) == 4 and all(x["modelOutput"]["type"] == "message" and
                                x["modelOutput"]["content"][0]["text"] for x in ok)
    assert all(x["modelOutput"]["usage"]["output_tokens"] <= 6 for x in ok)
    bad = {x["recordId"]: x["error"]["errorMessage"] for x in lines if "error" in x}
    assert "max_tokens" in bad["r002"] and "not JSON" in bad["line-6"]
    manifest = json.loads((out / "manifest.json.out").read_text())
    assert manifest["successRecordCount"] == 4 and manifest["errorRecordCount"] == 2
    listed = client.list_model_invocation_jobs(nameContains="batch-")["invocationJobSummaries"]
    assert [j["jobArn"] for j in listed] == [arn]
    # customization jobs and invocation jobs are separate lists
    assert client.list_model_customization_jobs()["modelCustomizationJobSummaries"] == []
    with pytest.raises(ClientError) as e:
        client.get_model_customization_job(jobIdentifier="batch-1")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_bad_requests_are_refused_before_any_work(srv):
    client = srv.client()
    base = dict(roleArn=ROLE, modelId=CLAUDE,
                outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/o/"}})
    cases = [
        ({"jobName": "b1", "inputDataConfig": {"s3InputDataConfig": {
            "s3Uri": "s3://mi-bucket/prefix/"}}}, "one .jsonl file"),
        ({"jobName": "b2", "inputDataConfig": {"s3InputDataConfig": {
            "s3Uri": "s3://mi-bucket/x.jsonl"}}, "modelId": "no-such-model"}, "not available"),
        ({"jobName": "b3", "inputDataConfig": {"s3InputDataConfig": {
            "s3Uri": "s3://mi-bucket/x.jsonl"}}, "tags": [{"key": "a", "value": "b"}]}, "tags"),
    ]
    for extra, words in cases:
        with pytest.raises(ClientError) as e:
            client.create_model_invocation_job(**(base | extra))
        assert words in e.value.response["Error"]["Message"], e.value.response
    with pytest.raises(ClientError) as e:
        client.get_model_invocation_job(jobIdentifier="abcdefghijkl")
    assert e.value.response["Error"]["Code"] == "ResourceNotFoundException"


def test_a_queued_job_is_stopped_before_it_starts(tmp_path, tiny_model_dir):
    """One job at a time: the second waits in the queue, and a stop ends it there."""
    s = Server(tmp_path / "home", tiny_model_dir, extra_toml="max_concurrent_jobs = 1\n")
    s.start()
    try:
        client = s.client()
        cfg = dict(roleArn=ROLE, modelId=CLAUDE,
                   outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/o/"}})
        first = client.create_model_invocation_job(jobName="long", inputDataConfig={
            "s3InputDataConfig": {"s3Uri": s.put("long.jsonl", _records(400))}}, **cfg)
        second = client.create_model_invocation_job(jobName="queued", inputDataConfig={
            "s3InputDataConfig": {"s3Uri": s.put("short.jsonl", _records(2))}}, **cfg)
        assert client.get_model_invocation_job(
            jobIdentifier=second["jobArn"])["status"] == "Submitted"
        client.stop_model_invocation_job(jobIdentifier=second["jobArn"])
        assert _wait(client, second["jobArn"])["status"] == "Stopped"
        try:
            client.stop_model_invocation_job(jobIdentifier=first["jobArn"])
        except ClientError as e:  # it may have finished already on a fast machine
            assert "Completed" in e.response["Error"]["Message"]
        assert _wait(client, first["jobArn"])["status"] in ("Stopped", "Completed")
    finally:
        s.kill()


def test_job_limits_hold_a_kind_to_its_limit(tmp_path, tiny_model_dir):
    """max_concurrent_jobs = 2 but batch-inference limited to 1: the second batch job starts
    only after the first has ended."""
    s = Server(tmp_path / "home", tiny_model_dir, extra_toml=(
        "max_concurrent_jobs = 2\n[job_limits]\nbatch-inference = 1\n")).start()
    try:
        client = s.client()
        cfg = dict(roleArn=ROLE, modelId=CLAUDE,
                   outputDataConfig={"s3OutputDataConfig": {"s3Uri": "s3://mi-bucket/o/"}})
        arns = [client.create_model_invocation_job(jobName=f"b{i}", inputDataConfig={
            "s3InputDataConfig": {"s3Uri": s.put(f"in{i}.jsonl", _records(3))}},
            **cfg)["jobArn"] for i in range(2)]
        for arn in arns:
            assert _wait(client, arn)["status"] == "Completed"
        ids = [a.rsplit("/", 1)[-1] for a in arns]
        first_end = max(e["id"] for e in s.events(ids[0]) if e["message"].startswith("job completed"))
        second_start = min(e["id"] for e in s.events(ids[1])
                           if e["message"].startswith("worker started"))
        assert second_start > first_end, (s.events(ids[0]), s.events(ids[1]))
    finally:
        s.kill()
