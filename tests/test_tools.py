"""Tool calling and structured output below the HTTP layer: the data checks (each bad record
with its line and field), the one tool-call format that training renders and serving parses,
constrained decoding on a random tiny model, and a tiny model that learns to call tools."""

from __future__ import annotations

import json

import jsonschema
import pytest

from afinar.data.check import check_file
from afinar.data.readers import RawRecord
from afinar.data.schema import normalize_record
from afinar.data.tokenize import IGNORE_INDEX, encode_example
from afinar.data.tools import CallStream, parse_tool_calls, render

from conftest import write_jsonl

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"},
                                                    "unit": {"enum": ["c", "f"]}},
                   "required": ["city"], "additionalProperties": False}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Local time in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"], "additionalProperties": False}}}


def _call(name, args, cid="c1", raw=False):
    return {"id": cid, "type": "function", "function": {
        "name": name, "arguments": args if raw else json.dumps(args)}}


def _conv(city="Paris", tool="get_weather", **over):
    rec = {"tools": [WEATHER, TIME], "messages": [
        {"role": "user", "content": f"Weather in {city}?"},
        {"role": "assistant", "content": None, "tool_calls": [_call(tool, {"city": city})]},
        {"role": "tool", "tool_call_id": "c1", "content": "21 C"},
        {"role": "assistant", "content": f"It is 21 C in {city}."}]}
    rec.update(over)
    return rec


def _bedrock(tool="get_weather", use_id="t1", result_id="t1", inp=None):
    spec = {"toolSpec": {"name": "get_weather", "description": "Weather",
                         "inputSchema": {"json": WEATHER["function"]["parameters"]}}}
    return {"schemaVersion": "bedrock-conversation-2024", "system": [{"text": "Be brief."}],
            "toolConfig": {"tools": [spec]}, "messages": [
                {"role": "user", "content": [{"text": "Weather in Lima?"}]},
                {"role": "assistant", "content": [{"toolUse": {
                    "toolUseId": use_id, "name": tool, "input": inp or {"city": "Lima"}}}]},
                {"role": "user", "content": [{"toolResult": {
                    "toolUseId": result_id, "content": [{"json": {"temp": 25}}]}}]},
                {"role": "assistant", "content": [{"text": "25 degrees."}]}]}


def test_good_tool_records_normalise_both_formats():
    issues = []
    ex = normalize_record(RawRecord(1, _conv()), "messages", issues)
    assert not issues and [t["name"] for t in ex.tools] == ["get_weather", "get_time"]
    assert ex.messages[1]["tool_calls"] == [{"id": "c1", "name": "get_weather",
                                             "arguments": {"city": "Paris"}}]
    ex = normalize_record(RawRecord(1, _bedrock()), "bedrock_conversation", issues)
    assert not issues
    assert [m["role"] for m in ex.messages] == ["system", "user", "assistant", "tool",
                                                "assistant"]
    assert ex.messages[3] == {"role": "tool", "tool_call_id": "t1", "content": '{"temp": 25}'}


BAD = [  # (record, field, code)
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        _call("get_weather", "{city: Paris", raw=True)]}]),
     "messages[1].tool_calls[0].function.arguments", "invalid_arguments"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        _call("get_weather", {"city": 3})]}]),
     "messages[1].tool_calls[0].function.arguments", "invalid_arguments"),
    (_conv(tool="book_flight"), "messages[1].tool_calls[0].function.name", "undefined_tool"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "tool", "tool_call_id": "zz",
                                                         "content": "1"},
                     {"role": "assistant", "content": "ok"}]),
     "messages[1].tool_call_id", "unmatched_tool_result"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "tool_calls": [
        _call("get_weather", {"city": "a"})]}, {"role": "tool", "content": "1"}]),
     "messages[2].tool_call_id", "missing"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y",
                                                         "weight": 0.5}]),
     "messages[1].weight", "wrong_value"),
    (_conv(tools=[{"type": "function", "function": {"name": "f", "parameters": {
        "type": "objekt"}}}], messages=[{"role": "user", "content": "x"},
                                        {"role": "assistant", "content": "y"}]),
     "tools[0].function.parameters", "invalid_schema"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": None}]),
     "messages[1].content", "empty"),
    (_conv(tools=[WEATHER, WEATHER]), "tools[1].function.name", "duplicate_tool"),
    (_conv(messages=[{"role": "user", "content": "x"}, {"role": "assistant", "content": "y",
                                                         "weight": 0}]),
     "messages", "no_target"),
    (_bedrock(tool="get_time"), "messages[1].content[0].toolUse.name", "undefined_tool"),
    (_bedrock(result_id="t9"), "messages[2].content[0].toolResult.toolUseId",
     "unmatched_tool_result"),
    (_bedrock(inp={"town": "Lima"}), "messages[1].content[0].toolUse.input",
     "invalid_arguments"),
]


def test_data_check_reports_each_bad_tool_record_with_line_and_field(tmp_path):
    # one file per format; each bad record on its own line, after a good one
    openai_rows = [_conv()] + [r for r, f, c in BAD if "schemaVersion" not in r]
    bedrock_rows = [_bedrock()] + [r for r, f, c in BAD if "schemaVersion" in r]
    got = {}
    for name, rows in (("o", openai_rows), ("b", bedrock_rows)):
        rep = check_file(write_jsonl(tmp_path / f"{name}.jsonl", rows))
        assert rep.valid == 1 and not rep.ok
        for e in rep.errors:
            got.setdefault((name, e["line"]), []).append((e["field"], e["code"]))
    expected_o = [(f, c) for r, f, c in BAD if "schemaVersion" not in r]
    expected_b = [(f, c) for r, f, c in BAD if "schemaVersion" in r]
    for name, exp in (("o", expected_o), ("b", expected_b)):
        for line, (field, code) in enumerate(exp, start=2):
            assert (field, code) in got.get((name, line), []), (name, line, got.get((name, line)))
    assert len(expected_o) + len(expected_b) >= 8


def test_loss_on_tool_calls_never_on_tool_results(tokenizer):
    rec = _conv()
    rec["messages"][3]["weight"] = 0
    ex = normalize_record(RawRecord(1, rec), "messages", [])
    enc = encode_example(tokenizer, ex, 4096)
    learned = tokenizer.decode([t for t in enc.labels if t != IGNORE_INDEX])
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>' \
        in learned
    assert "21 C" not in learned  # the tool result, and the weight-0 answer that quotes it
    full = tokenizer.decode(enc.input_ids)
    assert "<tools>" in full and "<tool_response>\n21 C\n</tool_response>" in full


def test_render_and_parse_round_trip(tokenizer):
    msgs = [{"role": "user", "content": "hi"},
            {"role": "assistant", "content": "Let me check.", "tool_calls": [
                {"id": "a", "name": "get_weather", "arguments": {"city": "Oslo"}},
                {"id": "b", "name": "get_time", "arguments": {"city": "Oslo"}}]}]
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"]["parameters"]} for t in (WEATHER, TIME)]
    text = render(tokenizer, msgs, tools, generation_prompt=False)
    answer = text.split("<|im_start|>assistant\n")[-1].split("<|im_end|>")[0]
    content, calls = parse_tool_calls(answer)
    assert content == "Let me check."
    assert calls == [{"name": "get_weather", "arguments": {"city": "Oslo"}},
                     {"name": "get_time", "arguments": {"city": "Oslo"}}]
    # streamed in awkward pieces, the splitter finds the same text and calls
    events = []
    cs = CallStream()
    for i in range(0, len(answer), 3):
        events += cs.feed(answer[i:i + 3])
    events += cs.finish()
    assert "".join(v for k, v in events if k == "text").strip() == "Let me check."
    assert [v for k, v in events if k == "call"] == calls
    assert parse_tool_calls("no calls <tool_call>{broken</tool_call>")[1] == []


@pytest.fixture(scope="module")
def engine(tmp_path_factory, tiny_model_dir):
    from afinar.config import Settings
    from afinar.inference.engine import Engine

    e = Engine(Settings(home=tmp_path_factory.mktemp("eng")))
    yield e
    e.close()


PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 12},
    "age": {"type": "integer", "minimum": 0, "maximum": 150},
    "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
    "role": {"enum": ["admin", "user"]}},
    "required": ["name", "age", "role"], "additionalProperties": False}


def test_constrained_decoding_random_model_satisfies_schema(engine, tiny_model_dir):
    from afinar.inference.requests import GenRequest

    tools = [{"name": t["function"]["name"], "description": "",
              "parameters": t["function"]["parameters"] | {"properties": {
                  "city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["c", "f"]}}}}
             for t in (WEATHER,)]
    tools.append({"name": "get_time", "description": "", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Oslo", "Lima"]}},
        "required": ["city"], "additionalProperties": False}})
    msgs = [{"role": "user", "content": "Tell me"}]
    reqs = [GenRequest(model=str(tiny_model_dir), messages=msgs, json_schema=PERSON,
                       max_tokens=200, temperature=t, seed=i) for i, t in enumerate((0, 1, 1))]
    reqs.append(GenRequest(model=str(tiny_model_dir), messages=msgs, json_mode=True,
                           max_tokens=200))
    reqs.append(GenRequest(model=str(tiny_model_dir), messages=msgs, tools=tools,
                           tool_choice="required", parallel_tool_calls=False, max_tokens=200))
    reqs.append(GenRequest(model=str(tiny_model_dir), messages=msgs, tools=tools,
                           tool_choice={"name": "get_time"}, max_tokens=200,
                           parallel_tool_calls=False))
    free = GenRequest(model=str(tiny_model_dir), messages=msgs, max_tokens=20, logprobs=True,
                      top_logprobs=3)
    for r in reqs + [free]:  # constrained and free rows in the same batch
        engine.submit(r)
    for r in reqs[:3]:
        r.result(300)
        assert r.stop_reason == "end_turn", r.text
        jsonschema.validate(json.loads(r.text), PERSON)
    assert isinstance(json.loads(reqs[3].result(300).text), dict)
    for r, name in ((reqs[4], None), (reqs[5], "get_time")):
        r.result(300)
        assert r.stop_reason == "tool_use" and len(r.tool_calls) == 1, r.text
        call = r.tool_calls[0]
        tool = next(t for t in tools if t["name"] == call["name"])
        assert name is None or call["name"] == name
        jsonschema.validate(call["arguments"], tool["parameters"])
    free.result(300)
    assert len(free.token_logprobs) == free.output_tokens - (free.stop_reason == "end_turn")
    assert all(e["logprob"] <= 0 and len(e["top_logprobs"]) == 3 for e in free.token_logprobs)
    assert all(e["top_logprobs"][0]["logprob"] >= e["logprob"] for e in free.token_logprobs)
    # unconstrained, the random model does not produce this schema's JSON
    plain = engine.submit(GenRequest(model=str(tiny_model_dir), messages=msgs, max_tokens=30))
    with pytest.raises((ValueError, jsonschema.ValidationError)):
        jsonschema.validate(json.loads(plain.result(300).text), PERSON)


def test_auto_tool_call_is_held_to_the_schema_once_opened(engine, tiny_model_dir):
    """tool_choice auto: the row is free until it writes <tool_call>; from there the call's
    grammar (fed with what follows the tag) holds it to the tools' schemas."""
    from afinar.inference.engine import _Row
    from afinar.inference.requests import GenRequest

    tools = [{"name": "get_weather", "description": "", "parameters": {
        "type": "object", "properties": {"city": {"enum": ["Rome", "Oslo"]}},
        "required": ["city"]}}]
    base, _ = engine.resolve(str(tiny_model_dir))
    tok = base.tokenizer

    def rows_for(text):
        r = GenRequest(model=str(tiny_model_dir), messages=[], tools=tools)
        row = _Row(r, base, None)
        assert row.watched
        row._watch("Checking.", base)
        assert r.matcher is None and row.watched  # free text: no grammar yet
        row._watch(text, base)
        return r

    def accepts(m, s):
        return m.consume_tokens(tok(s, add_special_tokens=False)["input_ids"]) and \
            not m.is_error()

    r = rows_for('Let me check. <tool_call>\n{"name": "get_')
    assert r.matcher is not None
    assert not accepts(r.matcher.deep_copy(), 'weather", "arguments": {"city": "Lima"}}')
    assert accepts(r.matcher, 'weather", "arguments": {"city": "Rome"}}\n</tool_call>')
    assert r.matcher.is_accepting()
    # already off the schema when the tag closes its token: left free (parsed as before)
    assert rows_for('<tool_call>\n{"nme"').matcher is None


CITIES = ["Paris", "Lima", "Oslo", "Tokyo"]


def tool_rows(n: int) -> list[dict]:
    """Requests a tiny model can learn to turn into the right call."""
    rows = []
    for i in range(n):
        city, tool = CITIES[i % 4], ("get_weather", "get_time")[(i // 4) % 2]
        ask = "Weather in" if tool == "get_weather" else "Time in"
        rows.append({"tools": [WEATHER, TIME], "messages": [
            {"role": "user", "content": f"{ask} {city}?"},
            {"role": "assistant", "tool_calls": [_call(tool, {"city": city})]}]})
    return rows


def test_tiny_model_learns_to_call_the_right_tool(tmp_path, tiny_model_dir, settings):
    from afinar.config import Settings
    from afinar.inference.engine import Engine
    from afinar.inference.requests import GenRequest
    from afinar.training.config import parse_train_config
    from afinar.training.trainer import train

    data = write_jsonl(tmp_path / "tools.jsonl", tool_rows(160))
    assert check_file(data).ok
    train(parse_train_config({"train_data": str(data), "base_model": str(tiny_model_dir),
                              # 2e-2 plateaued at loss 0.065 choosing one tool for all
                              # (transformers 5.24); 1e-2 learns the choice (loss 0.008)
                              "method": "full", "epochs": 10, "learning_rate": 1e-2,
                              "name": "tool-caller", "output_dir": str(tmp_path / "run"),
                              "checkpoint_every": 0, "precision": "fp32",
                              # the tool choice, not copying values (test_augment.py): without
                              # value variants the 10 epochs take half the time
                              "validation_split": 0, "value_variants": 0}), settings)
    tools = [{"name": t["function"]["name"], "description": t["function"]["description"],
              "parameters": t["function"]["parameters"]} for t in (WEATHER, TIME)]
    e = Engine(Settings(home=settings.home), precision="fp32")  # see test_training
    try:
        got = {}
        for model in (str(tiny_model_dir), "tool-caller"):
            reqs = [e.submit(GenRequest(model=model, messages=r["messages"][:1], tools=tools,
                                        max_tokens=40)) for r in tool_rows(8)]
            got[model] = [(c["name"], c["arguments"]) for r in reqs
                          for c in r.result(300).tool_calls[:1]]
    finally:
        e.close()
    # the right tool, with arguments its schema accepts (a 64-wide, 2-layer model learns the
    # format and the choice; copying the city is left to the demo's real model)
    want = [r["messages"][1]["tool_calls"][0]["function"]["name"] for r in tool_rows(8)]
    assert [name for name, _ in got["tool-caller"]] == want, got["tool-caller"]
    for name, args in got["tool-caller"]:
        jsonschema.validate(args, (WEATHER if name == "get_weather" else TIME)["function"][
            "parameters"])
    assert [name for name, _ in got[str(tiny_model_dir)]] != want  # the random base cannot


def test_tools_demo_pipeline_on_tiny_model(tmp_path, settings, tiny_model_dir):
    """`afinar demo tools` end to end on a tiny model: data, check, training, a loopback server
    scored through the openai client, the full loop. (The real model's numbers: README.)"""
    from afinar.demo.tools import TOOLS, ToolsDemoOptions, conversations, run_tools_demo

    rows = conversations(12, seed=1)
    assert {r["call"]["name"] for r in rows} == {t["function"]["name"] for t in TOOLS}
    assert sum(len(r["messages"]) > 3 for r in rows) == 3  # every 4th has the whole loop
    said = []
    rep = run_tools_demo(ToolsDemoOptions(train_examples=12, test_examples=4, epochs=1,
                                          base_model=str(tiny_model_dir), lora_layers=None,
                                          output_dir=str(tmp_path / "demo")),
                         settings, say=said.append)
    assert [m["model"] for m in rep["models"]] == [str(tiny_model_dir), rep["name"]]
    for m in rep["models"]:
        assert 0 <= m["exact_arguments"] <= m["right_function"] <= m["tool_call_rate"] <= 1
    assert len(rep["examples"]) == 4 and "request" in rep["loop"]
    assert (tmp_path / "demo" / "report.json").exists() and said[0].startswith("[1/4]")


def test_declared_only_reaches_properties_named_like_keywords():
    """Objects under a property named `examples` or `default` (JSON-schema keywords whose
    values are data elsewhere) are held to their declared properties too: before, such a
    property was copied as data, and a model could add keys of any length inside it."""
    from afinar.inference.constrain import _declared_only

    item = {"type": "object", "properties": {"prompt": {"type": "string"}}}
    got = _declared_only({"type": "object", "properties": {
        "examples": {"type": "array", "items": item}, "default": item},
        "examples": [{"prompt": "kept as data"}]})
    assert got["properties"]["examples"]["items"]["additionalProperties"] is False
    assert got["properties"]["default"]["additionalProperties"] is False
    assert got["examples"] == [{"prompt": "kept as data"}] and got["additionalProperties"] is False


def test_a_canonical_conversation_goes_to_converse_and_back():
    """converse_conversation (a Bedrock teacher's request) is the reverse of reading a Converse
    request: system, tool calls and tool results survive the round trip."""
    from afinar.data.chat import converse_conversation, request_conversation

    tools = [{"name": "get_weather", "description": "Weather in a city",
              "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                             "required": ["city"]}}]
    msgs = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Weather in Oslo and Rome?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "name": "get_weather", "arguments": {"city": "Oslo"}},
                {"id": "c2", "name": "get_weather", "arguments": {"city": "Rome"}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "-3 C"},
            {"role": "tool", "tool_call_id": "c2", "content": "18 C"},
            {"role": "user", "content": "Which is warmer?"}]
    conv = converse_conversation(msgs, tools)
    assert [t["role"] for t in conv["messages"]] == ["user", "assistant", "user"]
    back, back_tools, issues = request_conversation(conv["messages"], conv["toolConfig"],
                                                    bedrock=True, system=conv["system"])
    assert not issues
    assert back == msgs and back_tools == tools
