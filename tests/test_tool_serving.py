"""Tools and structured output through the real clients applications use: the `openai` client,
boto3's Converse / ConverseStream / InvokeModel, and LangChain (ChatOpenAI, ChatBedrockConverse),
against `afinar serve` on 127.0.0.1 serving a random tiny model. A random model's free text is
noise, so these tests use what does not depend on its skill: forced tool calls and JSON schemas
(constrained decoding), and the wire shapes of a whole tool loop."""

from __future__ import annotations

import json
import signal

import boto3
import jsonschema
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from test_service import CLAUDE, Server

openai = pytest.importorskip("openai")

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city", "parameters": {
        "type": "object", "properties": {"city": {"type": "string", "maxLength": 10},
                                         "unit": {"enum": ["c", "f"]}},
        "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers", "parameters": {
        "type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
                                         "b": {"type": "integer", "minimum": 0, "maximum": 99}},
        "required": ["a", "b"], "additionalProperties": False}}}
PARAMS = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 10},
    "age": {"type": "integer", "minimum": 0, "maximum": 120}},
    "required": ["name", "age"], "additionalProperties": False}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def srv(tmp_path_factory, tiny_model_dir):
    s = Server(tmp_path_factory.mktemp("tools") / "srv", tiny_model_dir)
    with (s.home / "afinar.toml").open("a") as f:  # more provider ids, under [model_aliases]
        for mid in ("amazon.titan-text-express-v1", "meta.llama3-8b-instruct-v1:0",
                    "amazon.nova-lite-v1:0"):
            f.write(f'"{mid}" = "{tiny_model_dir}"\n')
        f.write('"text-embedding-3-small" = "all-minilm-l6-v2"\n')
    s.start()
    yield s
    s.kill(signal.SIGTERM)


@pytest.fixture(scope="module")
def oa(srv):
    return openai.OpenAI(base_url=srv.url + "/v1", api_key="x", max_retries=0, timeout=300)


def _valid(call_name: str, arguments) -> dict:
    args = json.loads(arguments) if isinstance(arguments, str) else arguments
    jsonschema.validate(args, PARAMS[call_name])
    return args


def test_openai_tool_choice_required_and_named(oa):
    r = oa.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, ADD],
                                   tool_choice="required", max_tokens=80,
                                   parallel_tool_calls=False)
    ch = r.choices[0]
    assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1
    call = ch.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    _valid(call.function.name, call.function.arguments)
    r = oa.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER, ADD],
                                   tool_choice={"type": "function", "function": {"name": "add"}},
                                   max_tokens=80, parallel_tool_calls=False)
    call = r.choices[0].message.tool_calls[0]
    assert call.function.name == "add"
    _valid("add", call.function.arguments)
    # tool_choice none: plain text, no calls
    r = oa.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER],
                                   tool_choice="none", max_tokens=5)
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason == "length"


def test_openai_streamed_tool_calls_assemble(oa):
    stream = oa.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER],
                                        tool_choice="required", max_tokens=80, stream=True,
                                        parallel_tool_calls=False,
                                        stream_options={"include_usage": True})
    calls: dict[int, dict] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage:
            usage = chunk.usage
        for ch in chunk.choices:
            finish = ch.finish_reason or finish
            for d in ch.delta.tool_calls or []:
                c = calls.setdefault(d.index, {"id": None, "name": "", "arguments": ""})
                c["id"] = d.id or c["id"]
                c["name"] += (d.function.name or "") if d.function else ""
                c["arguments"] += (d.function.arguments or "") if d.function else ""
    assert finish == "tool_calls" and len(calls) == 1 and calls[0]["name"] == "get_weather"
    _valid("get_weather", calls[0]["arguments"])
    assert usage is not None and usage.completion_tokens > 0


def test_openai_two_turn_tool_loop(oa):
    r = oa.chat.completions.create(model="tiny", messages=ASK, tools=[WEATHER],
                                   tool_choice="required", max_tokens=80,
                                   parallel_tool_calls=False)
    msg = r.choices[0].message
    call = msg.tool_calls[0]
    history = ASK + [{"role": "assistant", "content": None, "tool_calls": [
        {"id": call.id, "type": "function", "function": {
            "name": call.function.name, "arguments": call.function.arguments}}]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    r2 = oa.chat.completions.create(model="tiny", messages=history, tools=[WEATHER],
                                    max_tokens=6)
    assert r2.choices[0].message.role == "assistant" and r2.usage.prompt_tokens > \
        r.usage.prompt_tokens
    # a tool result for a call that was never made is refused, naming the field
    bad = history[:-1] + [{"role": "tool", "tool_call_id": "call_nope", "content": "1"}]
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="tiny", messages=bad, tools=[WEATHER], max_tokens=4)
    assert e.value.body["param"] == "messages[2].tool_call_id"


def test_openai_json_schema_and_json_object(oa):
    r = oa.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "A person"}], max_tokens=120,
        response_format={"type": "json_schema", "json_schema": {
            "name": "person", "schema": PERSON, "strict": True}}, n=2, temperature=1.0,
        seed=7)
    assert len(r.choices) == 2
    for ch in r.choices:
        jsonschema.validate(json.loads(ch.message.content), PERSON)
    r = oa.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                   max_tokens=120, response_format={"type": "json_object"})
    assert isinstance(json.loads(r.choices[0].message.content), dict)


def test_openai_logprobs_seed_models_and_refusals(oa, srv):
    r = oa.chat.completions.create(model="tiny", messages=ASK, max_tokens=4, logprobs=True,
                                   top_logprobs=2)
    lp = r.choices[0].logprobs.content
    assert len(lp) == 4 and all(len(t.top_logprobs) == 2 and t.logprob <= 0 for t in lp)
    kw = {"model": "tiny", "messages": ASK, "max_tokens": 8, "temperature": 1.0}
    a, b = (oa.chat.completions.create(seed=3, **kw).choices[0].message.content
            for _ in range(2))
    assert a == b  # the same seed, the same sample
    assert oa.models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        oa.models.retrieve("no-such-model")
    for bad, param in (({"presence_penalty": 1.0}, "presence_penalty"),
                       ({"logit_bias": {"5": 10}}, "logit_bias"),
                       ({"n": 99}, "n")):
        with pytest.raises(openai.BadRequestError) as e:
            oa.chat.completions.create(model="tiny", messages=ASK, max_tokens=2, **bad)
        assert e.value.body["param"] == param
    with pytest.raises(openai.BadRequestError) as e:
        oa.chat.completions.create(model="tiny", messages=ASK, max_tokens=2,
                                   extra_body={"frobnicate": 1})
    assert "frobnicate" in e.value.body["message"]


def test_openai_embeddings_fields(oa, srv):
    r = oa.embeddings.create(model="all-minilm-l6-v2", input=["hola", "adiós"])
    assert len(r.data) == 2 and len(r.data[0].embedding) == 384
    aliased = oa.embeddings.create(model="text-embedding-3-small", input=["hola", "adiós"])
    assert aliased.data[0].embedding == pytest.approx(r.data[0].embedding, abs=1e-6)
    # token ids (what LangChain's OpenAIEmbeddings sends): read as cl100k_base where tiktoken
    # has that encoding; offline without it, a 400 that names the field and the fix
    ids = [71, 8083]
    try:
        import tiktoken
        text = tiktoken.get_encoding("cl100k_base").decode(ids)
    except Exception:
        text = None
    if text is None:
        with pytest.raises(openai.BadRequestError) as e:
            oa.embeddings.create(model="all-minilm-l6-v2", input=[ids])
        assert e.value.body["param"] == "input" and "check_embedding_ctx_length" in \
            e.value.body["message"]
    else:
        got = oa.embeddings.create(model="all-minilm-l6-v2", input=[ids]).data[0].embedding
        want = oa.embeddings.create(model="all-minilm-l6-v2", input=text).data[0].embedding
        assert got == pytest.approx(want, abs=1e-6)
    with pytest.raises(openai.BadRequestError) as e:
        oa.embeddings.create(model="all-minilm-l6-v2", input="x", dimensions=64)
    assert e.value.body["param"] == "dimensions"


def _runtime(srv):
    return boto3.client("bedrock-runtime", endpoint_url=srv.url, region_name="us-east-1",
                        aws_access_key_id="x", aws_secret_access_key="y",
                        config=Config(retries={"max_attempts": 0}, read_timeout=300))


def _tool_config(choice):
    return {"tools": [{"toolSpec": {"name": t["function"]["name"],
                                    "description": t["function"]["description"],
                                    "inputSchema": {"json": t["function"]["parameters"]}}}
                      for t in (WEATHER, ADD)], "toolChoice": choice}


def test_converse_tool_use_loop_and_stream(srv):
    rt = _runtime(srv)
    msgs = [{"role": "user", "content": [{"text": "Weather in Paris?"}]}]
    r = rt.converse(modelId="tiny", messages=msgs, toolConfig=_tool_config(
        {"tool": {"name": "get_weather"}}), inferenceConfig={"maxTokens": 80})
    assert r["stopReason"] == "tool_use"
    use = [b["toolUse"] for b in r["output"]["message"]["content"] if "toolUse" in b][0]
    assert use["name"] == "get_weather"
    _valid("get_weather", use["input"])
    follow = msgs + [r["output"]["message"], {"role": "user", "content": [{"toolResult": {
        "toolUseId": use["toolUseId"], "content": [{"json": {"temp": 21}}]}}]}]
    r2 = rt.converse(modelId="tiny", messages=follow, toolConfig=_tool_config({"auto": {}}),
                     inferenceConfig={"maxTokens": 5})
    assert r2["output"]["message"]["role"] == "assistant"
    events = list(rt.converse_stream(modelId="tiny", messages=msgs, toolConfig=_tool_config(
        {"tool": {"name": "add"}}), inferenceConfig={"maxTokens": 80})["stream"])
    starts = [e["contentBlockStart"]["start"]["toolUse"] for e in events
              if "contentBlockStart" in e]
    inputs = "".join(e["contentBlockDelta"]["delta"]["toolUse"]["input"] for e in events
                     if "contentBlockDelta" in e and "toolUse" in e["contentBlockDelta"]["delta"])
    assert starts and starts[0]["toolUseId"]
    _valid(starts[0]["name"], inputs)
    assert [e["messageStop"]["stopReason"] for e in events if "messageStop" in e] == \
        ["tool_use"]
    with pytest.raises(ClientError) as e:
        rt.converse(modelId="tiny", messages=follow[:2] + [{"role": "user", "content": [
            {"toolResult": {"toolUseId": "nope", "content": [{"text": "1"}]}}]}],
            toolConfig=_tool_config({"auto": {}}))
    assert e.value.response["Error"]["Code"] == "ValidationException"


def test_converse_structured_output(srv):
    r = _runtime(srv).converse(
        modelId="tiny", messages=[{"role": "user", "content": [{"text": "A person"}]}],
        inferenceConfig={"maxTokens": 120}, outputConfig={"textFormat": {
            "type": "json_schema", "structure": {"jsonSchema": {
                "schema": json.dumps(PERSON), "name": "person"}}}})
    jsonschema.validate(json.loads(r["output"]["message"]["content"][0]["text"]), PERSON)


def test_invoke_model_provider_bodies(srv):
    rt = _runtime(srv)

    def invoke(model, body, stream=False):
        if stream:
            return [json.loads(e["chunk"]["bytes"]) for e in
                    rt.invoke_model_with_response_stream(modelId=model,
                                                         body=json.dumps(body))["body"]]
        return json.loads(rt.invoke_model(modelId=model, body=json.dumps(body))["body"].read())

    out = invoke(CLAUDE, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 80,
                          "system": "Be brief.", "messages": [
                              {"role": "user", "content": "Weather in Paris?"}],
                          "tools": [{"name": "get_weather", "description": "Weather",
                                     "input_schema": PARAMS["get_weather"]}],
                          "tool_choice": {"type": "any", "disable_parallel_tool_use": True}})
    assert out["type"] == "message" and out["stop_reason"] == "tool_use"
    use = [b for b in out["content"] if b["type"] == "tool_use"][0]
    _valid("get_weather", use["input"])
    out = invoke(CLAUDE, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                          "messages": [{"role": "user", "content": [
                              {"type": "text", "text": "hi"}]}]})
    assert out["content"][0]["type"] == "text" and out["usage"]["output_tokens"] == 3
    chunks = invoke(CLAUDE, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                             "messages": [{"role": "user", "content": "hi"}]}, stream=True)
    assert [c["type"] for c in chunks][0] == "message_start" and chunks[-1]["type"] == \
        "message_stop"
    assert "".join(c["delta"]["text"] for c in chunks if c["type"] == "content_block_delta") \
        == out["content"][0]["text"]

    out = invoke("amazon.titan-text-express-v1", {"inputText": "hi", "textGenerationConfig": {
        "maxTokenCount": 3}})
    assert out["results"][0]["completionReason"] == "LENGTH" and out["results"][0][
        "tokenCount"] == 3
    out = invoke("meta.llama3-8b-instruct-v1:0", {"prompt": "hi", "max_gen_len": 3})
    assert out["stop_reason"] == "length" and out["generation_token_count"] == 3
    out = invoke("amazon.nova-lite-v1:0", {"schemaVersion": "messages-v1", "messages": [
        {"role": "user", "content": [{"text": "hi"}]}], "inferenceConfig": {"maxTokens": 3}})
    assert out["stopReason"] == "max_tokens" and out["usage"]["outputTokens"] == 3
    out = invoke("amazon.titan-embed-text-v2:0", {"inputText": "hola"})
    assert len(out["embedding"]) == 384 and out["inputTextTokenCount"] > 0
    with pytest.raises(ClientError) as e:
        invoke(CLAUDE, {"anthropic_version": "bedrock-2023-05-31", "max_tokens": 3,
                        "messages": [{"role": "user", "content": "hi"}], "top_k": 5})
    assert "top_k" in e.value.response["Error"]["Message"]


def test_langchain_clients(srv):
    lc_openai = pytest.importorskip("langchain_openai")
    lc_aws = pytest.importorskip("langchain_aws")
    from typing import Literal

    from pydantic import BaseModel, Field

    llm = lc_openai.ChatOpenAI(model="tiny", base_url=srv.url + "/v1", api_key="x",
                               max_tokens=80, temperature=0, max_retries=0)

    class get_weather(BaseModel):  # noqa: N801 (a tool's name)
        """Weather in a city."""
        city: str = Field(max_length=10)
        unit: Literal["c", "f"]

    msg = llm.bind_tools([get_weather], tool_choice="get_weather", strict=True).invoke(
        "Weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
    assert set(msg.tool_calls[0]["args"]) == {"city", "unit"}

    class Person(BaseModel):
        name: str = Field(max_length=10)
        age: int = Field(ge=0, le=120)

    p = llm.with_structured_output(Person).invoke("A person")
    assert isinstance(p, Person)

    conv = lc_aws.ChatBedrockConverse(
        model=CLAUDE, endpoint_url=srv.url, region_name="us-east-1",
        aws_access_key_id="x", aws_secret_access_key="y", max_tokens=80, temperature=0)
    msg = conv.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert msg.tool_calls and msg.tool_calls[0]["name"] == "get_weather"
