"""The vLLM serving backend behind the real openai and boto3 clients: afinar starts and
supervises vLLM (the CPU build here, the GPU build in production) for the default model, loads a
LoRA custom model into it at runtime, streams, and restarts it when it dies.

Runs where vLLM's own virtualenv exists: AFINAR_TEST_VLLM_COMMAND is how its OpenAI server
starts, e.g. "/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server" (see the README)."""

from __future__ import annotations

import json
import os
import signal

import pytest

from servers import Server

from conftest import mapping_rows, write_jsonl

pytestmark = pytest.mark.vllm
VLLM = os.environ.get("AFINAR_TEST_VLLM_COMMAND")


@pytest.fixture(scope="module")
def vsrv(tmp_path_factory, default_model_dir):
    if not VLLM:
        pytest.skip("AFINAR_TEST_VLLM_COMMAND is not set (vLLM's own virtualenv; see README)")
    home = tmp_path_factory.mktemp("vllm")
    s = Server(home / "srv", default_model_dir, extra_toml=(
        f'serve_backend = "vllm"\nvllm_command = {json.dumps(VLLM)}\n'
        f'vllm_args = ["--max-model-len", "1024", "--dtype", "bfloat16", '
        f'"--gpu-memory-utilization", "0.15"]\n'))
    # a LoRA custom model of the default model, trained briefly in this home
    from afinar.config import load_settings
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train
    old = os.environ.get("AFINAR_HOME")
    os.environ["AFINAR_HOME"] = str(s.home)
    try:
        rows = [{"prompt": r["prompt"], "completion": "Zyx " + r["completion"]}
                for r in mapping_rows(32)]
        train(parse_train_config({
            "train_data": str(write_jsonl(home / "tr.jsonl", rows)),
            "base_model": str(default_model_dir), "name": "smol-zyx", "epochs": 4,
            "learning_rate": 2e-3, "checkpoint_every": 0, "merge": False,
            "lora_layers": 20}), load_settings())
    finally:
        os.environ.pop("AFINAR_HOME") if old is None else os.environ.update(AFINAR_HOME=old)
    s.start()
    yield s
    s.kill(signal.SIGTERM)


def test_openai_and_bedrock_clients_on_vllm(vsrv):
    import boto3
    from openai import OpenAI

    client = OpenAI(base_url=f"{vsrv.url}/v1", api_key="x", timeout=900)
    msgs = [{"role": "user", "content": "Colour of sky?"}]
    base = client.chat.completions.create(model="tiny", messages=msgs, max_tokens=8,
                                          temperature=0)  # "tiny" = the default model here
    tuned = client.chat.completions.create(model="smol-zyx", messages=msgs, max_tokens=8,
                                           temperature=0)
    assert tuned.choices[0].message.content.startswith("Zyx"), tuned
    assert not base.choices[0].message.content.startswith("Zyx")
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="smol-zyx", messages=msgs, max_tokens=8, temperature=0, stream=True)]
    assert "".join(pieces) == tuned.choices[0].message.content
    stopped = client.chat.completions.create(model="smol-zyx", messages=msgs, max_tokens=8,
                                             temperature=0, stop=["Zyx"])
    assert stopped.choices[0].message.content == "" and \
        stopped.choices[0].finish_reason == "stop"
    rt = boto3.client("bedrock-runtime", endpoint_url=vsrv.url, region_name="us-east-1",
                      aws_access_key_id="x", aws_secret_access_key="x")
    r = rt.converse(modelId="smol-zyx", messages=[{"role": "user", "content": [
        {"text": "Colour of sky?"}]}], inferenceConfig={"maxTokens": 8, "temperature": 0})
    assert r["output"]["message"]["content"][0]["text"] == tuned.choices[0].message.content
    lp = client.chat.completions.create(model="smol-zyx", messages=msgs, max_tokens=4,
                                        temperature=0, logprobs=True, top_logprobs=3)
    entries = lp.choices[0].logprobs.content
    assert 0 < len(entries) <= lp.usage.completion_tokens and len(entries[0].top_logprobs) == 3
    assert "".join(e.token for e in entries) == lp.choices[0].message.content
    assert entries[0].top_logprobs[0].token == entries[0].token  # greedy: the top one
    assert all(e.logprob <= 0 for e in entries)


def _gone(p, timeout=60):
    """Until the killed process is dead (a zombie until the server reaps it)."""
    import time

    import psutil
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                return
        except psutil.NoSuchProcess:
            return
        time.sleep(0.1)
    raise TimeoutError(f"process {p.pid} still alive")


def test_vllm_restarted_when_it_dies(vsrv):
    import urllib.request

    from openai import OpenAI

    with urllib.request.urlopen(f"{vsrv.url}/afinar/engine") as r:
        loaded = json.loads(r.read())["loaded"]
    server = next(iter(loaded.values()))
    assert server["alive"] and server["backend"] == "vllm"
    import psutil
    for p in psutil.Process(vsrv.proc.pid).children(recursive=True):
        if str(server["port"]) in " ".join(p.cmdline()):
            p.kill()
            _gone(p)
    client = OpenAI(base_url=f"{vsrv.url}/v1", api_key="x", timeout=900)
    out = client.chat.completions.create(model="smol-zyx", max_tokens=8, temperature=0,
                                         messages=[{"role": "user", "content": "Colour of sky?"}])
    assert out.choices[0].message.content.startswith("Zyx")
    with urllib.request.urlopen(f"{vsrv.url}/afinar/engine") as r:
        assert next(iter(json.loads(r.read())["loaded"].values()))["restarts"] == 1
