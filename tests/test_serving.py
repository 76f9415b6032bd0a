"""Serving: the real server on 127.0.0.1, driven by boto3's `bedrock-runtime` client and the
`openai` client, on tiny models; a LoRA custom model served next to its base."""

from __future__ import annotations

import concurrent.futures as cf
import json
import signal
import urllib.request

import boto3
import pytest
from botocore.config import Config

from test_service import Server

from conftest import mapping_rows, write_jsonl

PROMPT = [{"role": "user", "content": [{"text": "Colour of sky?"}]}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    home = tmp_path_factory.mktemp("serving")
    s = Server(home / "srv", tiny_model_dir)
    # a LoRA custom model of the tiny base, trained in this home before the server starts
    import os

    from afinar.config import load_settings
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train
    old = os.environ.get("AFINAR_HOME")
    os.environ["AFINAR_HOME"] = str(s.home)
    try:
        train(parse_train_config({
            "train_data": str(write_jsonl(home / "tr.jsonl", mapping_rows(64))),
            "base_model": str(tiny_model_dir), "name": "tiny-lora", "epochs": 3,
            "learning_rate": 5e-2, "output_dir": str(s.home / "runs" / "tiny-lora"),
            "checkpoint_every": 0, "merge": False, "threads": 2}), load_settings())
    finally:
        if old is None:
            os.environ.pop("AFINAR_HOME")
        else:
            os.environ["AFINAR_HOME"] = old
    s.start()
    yield s
    s.kill(signal.SIGTERM)


def _runtime(srv):
    return boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y",
                        config=Config(retries={"max_attempts": 0}, read_timeout=300))


def test_converse_stream_and_invoke_agree(srv):
    rt = _runtime(srv)
    r = rt.converse(modelId="tiny", messages=PROMPT, inferenceConfig={"maxTokens": 6})
    text = r["output"]["message"]["content"][0]["text"]
    assert r["output"]["message"]["role"] == "assistant"
    assert r["usage"]["outputTokens"] == 6 and r["stopReason"] == "max_tokens"
    assert r["usage"]["totalTokens"] == r["usage"]["inputTokens"] + 6
    assert r["metrics"]["latencyMs"] >= 0

    events = list(rt.converse_stream(modelId="tiny", messages=PROMPT,
                                     inferenceConfig={"maxTokens": 6})["stream"])
    kinds = [next(iter(e)) for e in events]
    assert kinds[0] == "messageStart" and kinds[-3:] == ["contentBlockStop", "messageStop",
                                                         "metadata"]
    streamed = "".join(e["contentBlockDelta"]["delta"]["text"] for e in events
                       if "contentBlockDelta" in e)
    assert streamed == text  # greedy: the same answer, token by token
    assert events[-1]["metadata"]["usage"]["outputTokens"] == 6

    body = json.dumps({"messages": [{"role": "user", "content": "Colour of sky?"}],
                       "max_tokens": 6})
    out = json.loads(rt.invoke_model(modelId="tiny", body=body)["body"].read())
    assert out["output"] == text and out["usage"]["output_tokens"] == 6
    chunks = [json.loads(e["chunk"]["bytes"]) for e in rt.invoke_model_with_response_stream(
        modelId="tiny", body=body)["body"]]
    assert "".join(c.get("output", "") for c in chunks) == text
    assert chunks[-1]["stop_reason"] == "max_tokens"


def test_custom_lora_model_shares_its_base(srv):
    rt = _runtime(srv)
    ask = {"messages": PROMPT, "inferenceConfig": {"maxTokens": 4}}
    base = rt.converse(modelId="tiny", **ask)["output"]["message"]["content"][0]["text"]
    tuned = rt.converse(modelId="tiny-lora", **ask)["output"]["message"]["content"][0]["text"]
    assert tuned != base  # the adapter is applied for the custom model only
    again = rt.converse(modelId="tiny", **ask)["output"]["message"]["content"][0]["text"]
    assert again == base  # and disabled again for the base
    with urllib.request.urlopen(f"{srv.url}/afinar/engine") as r:
        loaded = json.loads(r.read())["loaded"]
    assert len(loaded) == 1 and next(iter(loaded.values()))["adapters"] == 1


def test_runtime_errors(srv):
    rt = _runtime(srv)
    with pytest.raises(rt.exceptions.ResourceNotFoundException):
        rt.converse(modelId="nope.nothing-v1", messages=PROMPT)
    with pytest.raises(rt.exceptions.ValidationException, match="limit is 4096"):
        rt.converse(modelId="tiny", messages=[{"role": "user", "content": [
            {"text": "word " * 5000}]}])
    with pytest.raises(rt.exceptions.ValidationException, match="prompt"):
        rt.invoke_model(modelId="tiny", body=json.dumps({"max_tokens": 3}))
    with pytest.raises(rt.exceptions.ValidationException, match="between 1 and 1024"):
        rt.converse(modelId="tiny", messages=PROMPT, inferenceConfig={"maxTokens": 5000})


def test_openai_client(srv):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused")
    ids = [m.id for m in client.models.list().data]
    assert "smollm2-135m-instruct" in ids and "tiny" in ids and "tiny-lora" in ids
    msgs = [{"role": "user", "content": "Colour of sky?"}]
    full = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=5)
    assert full.choices[0].finish_reason == "length" and full.usage.completion_tokens == 5
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="tiny", messages=msgs, max_tokens=5, stream=True)]
    assert "".join(pieces) == full.choices[0].message.content
    comp = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4)
    assert comp.usage.completion_tokens == 4
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=msgs)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="tiny", messages=[], max_tokens=3)

    emb = client.embeddings.create(model="all-minilm-l6-v2", input=[
        "The cat sat on the mat.", "A cat was sitting on a rug.", "Quarterly revenue rose."])
    v = [d.embedding for d in emb.data]
    assert len(v[0]) == 384

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(v[0], v[1]) > cos(v[0], v[2]) + 0.2  # a real sentence encoder


def test_lora_model_structured_output_in_a_shared_batch(srv):
    """json_schema on a LoRA custom model and on its base, submitted together: each row follows
    its own grammar (or none) under its own adapter."""
    import jsonschema
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="unused", max_retries=0)
    schema = {"type": "object", "properties": {"colour": {"enum": ["red", "green", "blue"]},
                                               "n": {"type": "integer", "minimum": 0,
                                                     "maximum": 9}},
              "required": ["colour", "n"], "additionalProperties": False}
    fmt = {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}}
    msgs = [{"role": "user", "content": "Colour of sky?"}]
    jobs = [("tiny-lora", fmt), ("tiny", fmt), ("tiny-lora", None)]
    with cf.ThreadPoolExecutor(3) as ex:
        outs = list(ex.map(lambda j: client.chat.completions.create(
            model=j[0], messages=msgs, max_tokens=40, **({"response_format": j[1]} if j[1]
                                                         else {})), jobs))
    for o in outs[:2]:
        jsonschema.validate(json.loads(o.choices[0].message.content), schema)
    free = outs[2].choices[0].message.content  # the unconstrained row stayed free
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(free), schema)


def test_concurrent_requests_are_batched(srv):
    rt = _runtime(srv)
    with urllib.request.urlopen(f"{srv.url}/afinar/engine") as r:
        before = json.loads(r.read())["stats"]
    prompts = [[{"role": "user", "content": [{"text": f"Colour of thing {i}?"}]}]
               for i in range(8)]
    with cf.ThreadPoolExecutor(8) as ex:
        outs = list(ex.map(lambda m: rt.converse(modelId="tiny", messages=m,
                                                 inferenceConfig={"maxTokens": 8}), prompts))
    assert all(o["usage"]["outputTokens"] == 8 for o in outs)
    with urllib.request.urlopen(f"{srv.url}/afinar/engine") as r:
        after = json.loads(r.read())["stats"]
    assert after["requests"] - before["requests"] == 8
    assert after["batches"] - before["batches"] < 8  # several requests shared a batch
    assert after["max_batch_seen"] > 1


def test_evaluation_job_route(srv):
    data = write_jsonl(srv.home / "s3" / "mi-bucket" / "eval.jsonl", mapping_rows(8))
    assert data.exists()

    def call(method, path, body=None):
        req = urllib.request.Request(srv.url + path, method=method, data=None if body is None
                                     else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    st, body = call("POST", "/afinar/evaluations", {"models": ["tiny"], "data": "/etc/passwd"})
    assert st == 400 and "allowed_roots" in body["message"]
    st, ev = call("POST", "/afinar/evaluations", {
        "models": ["tiny-lora"], "compareBase": True, "data": "s3://mi-bucket/eval.jsonl"})
    assert st == 201 and ev["status"] == "Queued"  # a job, until a worker picks it up
    import time
    deadline = time.time() + 240
    while ev["status"] in ("Queued", "InProgress") and time.time() < deadline:
        time.sleep(1)
        _, ev = call("GET", f"/afinar/evaluations/{ev['id']}")
    assert ev["status"] == "Completed", ev
    assert "tiny-lora" in ev["metrics"] and len(ev["metrics"]) == 2  # and its base
    assert ev["task"] == "generation" and "exact_match" in ev["metrics"]["tiny-lora"]
    with urllib.request.urlopen(f"{srv.url}/afinar/evaluations/{ev['id']}/report.html") as r:
        assert b"data:image/png;base64," in r.read()
    assert call("GET", "/afinar/evaluations/eval-nope")[0] == 404


def test_abandoned_stream_is_cancelled(tiny_model_dir, settings):
    """A client that stops reading frees its batch row: generation for it stops at once
    instead of running to max_tokens."""
    from afinar.inference.engine import Engine
    from afinar.inference.requests import GenRequest

    engine = Engine(settings, batch_window_ms=1)
    try:
        req = engine.submit(GenRequest(model=str(tiny_model_dir), max_tokens=1000,
                                       messages=[{"role": "user", "content": "Hi"}]))
        stream = req.stream(timeout=60)
        next(stream)
        next(stream)
        stream.close()  # what Starlette does when the client goes away
        while True:
            kind, _ = req.events.get(timeout=60)
            if kind == "done":
                break
        assert req.stop_reason == "cancelled" and req.output_tokens < 1000
    finally:
        engine.close()


def test_full_queue_is_throttled_in_every_api(tmp_path, tiny_model_dir):
    """One row decoding, one request waiting (serve_max_queue = 1): the next request gets
    429 — ThrottlingException through boto3, RateLimitError through the openai client — from
    the one error table (serve/errors.py); the waiting one is served once the row is free."""
    import threading
    import time

    import openai
    from botocore.exceptions import ClientError

    s = Server(tmp_path / "srv", tiny_model_dir,
               extra_toml="serve_max_batch = 1\nserve_max_queue = 1\n").start()
    try:
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="x", max_retries=0,
                               timeout=300)
        msgs = [{"role": "user", "content": "hi"}]
        client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1)  # loaded
        running = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=1000,
                                                 stream=True)
        next(iter(running))  # decoding: the only row
        waited = []
        waiter = threading.Thread(target=lambda: waited.append(client.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=3)))
        waiter.start()
        deadline = time.time() + 120
        while json.loads(urllib.request.urlopen(f"{s.url}/afinar/engine").read())[
                "queued"] < 1:
            assert time.time() < deadline, "the second request never queued"
            time.sleep(0.01)
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="tiny", messages=msgs, max_tokens=3)
        rt = boto3.client("bedrock-runtime", endpoint_url=s.url, region_name="us-east-1",
                          aws_access_key_id="x", aws_secret_access_key="y",
                          config=Config(retries={"max_attempts": 0}))
        with pytest.raises(ClientError) as e:
            rt.converse(modelId="tiny", messages=[{"role": "user", "content": [{"text": "hi"}]}])
        assert e.value.response["Error"]["Code"] == "ThrottlingException"
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        running.close()  # the client goes away: its row is freed
        waiter.join(timeout=300)
        assert waited and waited[0].choices[0].message.content is not None
    finally:
        s.kill()


def test_error_table_covers_the_engine_errors():
    from afinar.errors import ModelNotFoundError
    from afinar.inference.requests import (
        BackendUnavailable,
        ModelUnavailable,
        Overloaded,
        RequestError,
    )
    from afinar.serve.errors import aws_error, lookup

    assert lookup(Overloaded("x")) == (429, "ThrottlingException", "rate_limit_exceeded")
    assert lookup(ModelUnavailable("x"))[:2] == (404, "ResourceNotFoundException")
    assert lookup(ModelNotFoundError("x", hint="y"))[1] == "ResourceNotFoundException"
    assert lookup(BackendUnavailable("x"))[0] == 503
    assert lookup(RequestError("x"))[:2] == (400, "ValidationException")
    assert aws_error(ModelNotFoundError("gone", hint="use another")).message == \
        "gone; use another"
    with pytest.raises(TypeError):
        lookup(KeyError("not ours"))
