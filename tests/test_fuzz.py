"""Fuzzing the readers and request parsers (hypothesis, a bounded number of examples, so it runs
in CI): whatever bytes or JSON come in, the answer is a typed error or a result, never another
exception."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                 max_size=4),
    max_leaves=25)
RECORD_KEYS = ["prompt", "completion", "messages", "role", "content", "system", "input",
               "text", "label", "tools", "tool_calls", "toolConfig", "weight", "function",
               "name", "arguments", "type", "schemaVersion"]
records = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(RECORD_KEYS),
                                                                 inner, max_size=4),
    max_leaves=20)


@FUZZ
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_readers_and_check_take_any_bytes(tmp_path, data, suffix):
    from afinar.data.check import check_file
    from afinar.errors import DataError

    p = tmp_path / f"f{suffix}"
    p.write_bytes(data)
    try:
        check_file(p)
    except DataError:
        pass


@FUZZ
@given(rows=st.lists(st.dictionaries(st.sampled_from(RECORD_KEYS), records, max_size=5),
                     min_size=1, max_size=5))
def test_data_check_takes_any_records(tmp_path, rows):
    from afinar.data.check import check_file
    from afinar.errors import DataError

    p = tmp_path / "f.jsonl"
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    try:
        rep = check_file(p)
    except DataError:
        return
    assert rep.to_dict()["records"] == len(rows)


@FUZZ
@given(text=st.text(max_size=200) | st.binary(max_size=200))
def test_jsonutil_raises_only_json_problem(text):
    from afinar import jsonutil
    try:
        jsonutil.loads(text)
    except jsonutil.JSONProblem:
        pass


@pytest.fixture(scope="module")
def create_job_op():
    from afinar.serve.awsproto import service_model
    return service_model("bedrock").operation_model("CreateModelCustomizationJob")


@FUZZ
@given(body=st.dictionaries(st.sampled_from(
    ["jobName", "customModelName", "roleArn", "baseModelIdentifier", "trainingDataConfig",
     "outputDataConfig", "hyperParameters", "validationDataConfig", "customizationType",
     "vpcConfig", "bogus"]), json_values, max_size=8) | json_values)
def test_bedrock_request_parser(create_job_op, body):
    from afinar.serve.awsproto import ApiError, parse_request
    raw = json.dumps(body).encode()
    try:
        parse_request(create_job_op, {}, "", {}, raw)
    except ApiError as e:
        assert e.code == "ValidationException"


@FUZZ
@given(body=st.dictionaries(st.sampled_from(
    ["model", "messages", "max_tokens", "temperature", "top_p", "stop", "tools",
     "tool_choice", "response_format", "n", "seed", "logprobs", "top_logprobs", "stream",
     "stream_options", "parallel_tool_calls", "user", "bogus"]), json_values | records,
    max_size=8))
def test_openai_chat_request_parser(body):
    from afinar.serve.openai import BadRequest, chat_request
    try:
        chat_request(body)
    except BadRequest as e:
        assert e.status in (400, 404)


@FUZZ
@given(messages=records, tools=records, system=records)
def test_conversation_parser(messages, tools, system):
    from afinar.data.chat import request_conversation
    for bedrock in (False, True):
        msgs, tls, issues = request_conversation(messages, tools, bedrock=bedrock,
                                                 system=system if bedrock else None)
        assert issues or isinstance(msgs, list)
