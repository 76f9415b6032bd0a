"""InvokeModel's model-specific bodies. Bedrock's InvokeModel takes and returns the native body
of the model's provider; applications (and langchain-aws' ChatBedrock / BedrockEmbeddings)
send those. The provider is read from the model id the client sent — its prefix, so an alias
such as `anthropic.claude-3-haiku-20240307-v1:0` mapped to a local model keeps Anthropic's
body — and any other id takes afinar's own body (see serve/runtime.py). Batch inference jobs read the
same bodies from their records (jobs/batch.py).

| provider | request | response |
|---|---|---|
| anthropic | anthropic_version, messages (text/tool_use/tool_result), system, max_tokens, tools, tool_choice | type "message", content blocks, stop_reason, usage |
| titan-text | inputText, textGenerationConfig | inputTextTokenCount, results[{outputText, completionReason}] |
| titan-embed | inputText, dimensions, normalize | embedding, inputTextTokenCount |
| llama | prompt (already in Llama's format), max_gen_len | generation, stop_reason |
| nova | messages (Converse blocks), system, inferenceConfig, toolConfig | output.message, stopReason, usage |
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

from afinar.data.chat import bedrock_tool_choice, request_conversation
from afinar.errors import InvalidRequest
from afinar.inference.requests import GenRequest

DEFAULT_MAX_TOKENS = 512
ANTHROPIC_STOP = {"end_turn": "end_turn", "stop_sequence": "stop_sequence",
                  "max_tokens": "max_tokens", "tool_use": "tool_use"}
TITAN_STOP = {"end_turn": "FINISH", "tool_use": "FINISH", "stop_sequence": "STOP_CRITERIA_MET",
              "max_tokens": "LENGTH"}


def provider(model_id: str) -> str:
    """The body family of a Bedrock model id (or ARN); 'afinar' for anything else."""
    tail = model_id.rsplit("/", 1)[-1]
    parts = tail.split(".")
    # cross-region inference profiles prefix a geography: us.anthropic..., eu.amazon.nova...
    if len(parts) > 2 and parts[0] in ("us", "eu", "apac", "global", "ca", "jp", "au"):
        tail = ".".join(parts[1:])
    if tail.startswith("anthropic."):
        return "anthropic"
    if tail.startswith("amazon.titan-embed"):
        return "titan-embed"
    if tail.startswith("amazon.titan-text") or tail.startswith("amazon.titan-tg1"):
        return "titan-text"
    if tail.startswith("meta.llama"):
        return "llama"
    if tail.startswith("amazon.nova"):
        return "nova"
    return "afinar"


def _known(body: dict, allowed: set[str], family: str) -> None:
    if unknown := sorted(set(body) - allowed):
        raise InvalidRequest(f"unknown field(s) {unknown} in a {family} body; afinar takes "
                         f"{sorted(allowed)}")


def _num(v, name: str, default):
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise InvalidRequest(f"body.{name} must be a number")
    return v


def _raise_issues(issues) -> None:
    if issues:
        raise InvalidRequest(f"body.{issues[0].field}: {issues[0].message}")


# -- requests -----------------------------------------------------------------------------------
def request(family: str, body: dict) -> dict:
    """A native body -> GenRequest fields."""
    return {"anthropic": _anthropic_request, "titan-text": _titan_request,
            "llama": _llama_request, "nova": _nova_request,
            "afinar": _afinar_request}[family](body)


def _afinar_request(body: dict) -> dict:
    """afinar's own body: {"prompt": str} or {"messages": [{"role", "content"}], "system"},
    with max_tokens, temperature, top_p, stop."""
    known = {"prompt", "messages", "system", "max_tokens", "maxTokens", "temperature",
             "top_p", "topP", "stop"}
    if unknown := sorted(set(body) - known):
        raise InvalidRequest(f"unknown body field(s) {unknown}; afinar takes {sorted(known)}")
    kw = {"max_tokens": body.get("max_tokens", body.get("maxTokens", DEFAULT_MAX_TOKENS)),
          "temperature": body.get("temperature", 0.0),
          "top_p": body.get("top_p", body.get("topP", 1.0)), "stop": body.get("stop") or []}
    for k in ("max_tokens", "temperature", "top_p"):
        if isinstance(kw[k], bool) or not isinstance(kw[k], int | float):
            raise InvalidRequest(f"body.{k} must be a number")
    if "messages" in body:
        msgs = list(body["messages"])
        if body.get("system"):
            msgs.insert(0, {"role": "system", "content": body["system"]})
        if not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                   and m.get("role") in ("system", "user", "assistant") for m in msgs):
            raise InvalidRequest("body.messages must be [{\"role\": user|assistant|system, "
                                 "\"content\": str}]")
        return kw | {"messages": msgs}
    if not isinstance(body.get("prompt"), str) or not body["prompt"]:
        raise InvalidRequest("body needs a non-empty 'prompt' string or 'messages'")
    return kw | {"messages": [{"role": "user", "content": body["prompt"]}]}


def _anthropic_request(b: dict) -> dict:
    _known(b, {"anthropic_version", "messages", "system", "max_tokens", "temperature", "top_p",
               "top_k", "stop_sequences", "tools", "tool_choice", "metadata"}, "Anthropic")
    if not isinstance(b.get("max_tokens"), int):
        raise InvalidRequest("body.max_tokens is required (an integer) in an Anthropic body")
    if b.get("top_k") not in (None, 0):
        raise InvalidRequest("body.top_k is not supported by afinar; use top_p")
    msgs: list[dict] = []
    system = b.get("system")
    if isinstance(system, list):
        system = "".join(p.get("text", "") for p in system if isinstance(p, dict))
    if system:
        msgs.append({"role": "system", "content": system})
    for i, m in enumerate(b.get("messages") or []):
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            msgs.append({"role": m.get("role"), "content": content})
            continue
        if not isinstance(content, list):
            raise InvalidRequest(f"body.messages[{i}].content must be a string or a list of blocks")
        texts, calls = [], []
        for j, p in enumerate(content):
            kind = p.get("type") if isinstance(p, dict) else None
            if kind == "text":
                texts.append(p.get("text", ""))
            elif kind == "tool_use":
                calls.append({"id": p.get("id"), "type": "function", "function": {
                    "name": p.get("name"), "arguments": json.dumps(p.get("input") or {})}})
            elif kind == "tool_result":
                c = p.get("content")
                if isinstance(c, list):
                    c = "".join(x.get("text", "") for x in c if isinstance(x, dict))
                msgs.append({"role": "tool", "tool_call_id": p.get("tool_use_id"),
                             "content": c or ""})
            else:
                raise InvalidRequest(f"body.messages[{i}].content[{j}]: block type {kind!r} is not "
                                 f"supported (text, tool_use, tool_result)")
        if texts or calls:
            msgs.append({"role": m.get("role"), "content": "".join(texts) or None}
                        | ({"tool_calls": calls} if calls else {}))
    tools = None
    if b.get("tools") is not None:
        tools = [{"type": "function", "function": {
            "name": t.get("name"), "description": t.get("description", ""),
            "parameters": t.get("input_schema")}} if isinstance(t, dict) else t
            for t in b["tools"]]
    msgs, tools, issues = request_conversation(msgs, tools)
    _raise_issues(issues)
    kw = {"messages": msgs, "tools": tools, "max_tokens": b["max_tokens"],
          "temperature": _num(b.get("temperature"), "temperature", 0.0),
          "top_p": _num(b.get("top_p"), "top_p", 1.0), "stop": b.get("stop_sequences") or []}
    tc = b.get("tool_choice") or {}
    kind = tc.get("type", "auto")
    if kind not in ("auto", "any", "tool", "none"):
        raise InvalidRequest("body.tool_choice.type must be auto, any, tool or none")
    kw["tool_choice"] = {"any": "required", "tool": {"name": tc.get("name")}}.get(kind, kind)
    if tc.get("disable_parallel_tool_use"):
        kw["parallel_tool_calls"] = False
    return kw


def _titan_request(b: dict) -> dict:
    _known(b, {"inputText", "textGenerationConfig"}, "Titan text")
    if not isinstance(b.get("inputText"), str) or not b["inputText"]:
        raise InvalidRequest("body.inputText must be a non-empty string")
    c = b.get("textGenerationConfig") or {}
    return {"messages": [{"role": "user", "content": b["inputText"]}],
            "max_tokens": _num(c.get("maxTokenCount"), "maxTokenCount", DEFAULT_MAX_TOKENS),
            "temperature": _num(c.get("temperature"), "temperature", 0.0),
            "top_p": _num(c.get("topP"), "topP", 1.0), "stop": c.get("stopSequences") or []}


def _llama_request(b: dict) -> dict:
    _known(b, {"prompt", "max_gen_len", "temperature", "top_p", "images"}, "Llama")
    if b.get("images"):
        raise InvalidRequest("body.images is not supported by afinar")
    if not isinstance(b.get("prompt"), str) or not b["prompt"]:
        raise InvalidRequest("body.prompt must be a non-empty string")
    # Llama's prompt arrives already formatted: it is completed as it is
    return {"prompt": b["prompt"],
            "max_tokens": _num(b.get("max_gen_len"), "max_gen_len", DEFAULT_MAX_TOKENS),
            "temperature": _num(b.get("temperature"), "temperature", 0.0),
            "top_p": _num(b.get("top_p"), "top_p", 1.0)}


def _nova_request(b: dict) -> dict:
    _known(b, {"schemaVersion", "messages", "system", "inferenceConfig", "toolConfig"}, "Nova")
    msgs, tools, issues = request_conversation(b.get("messages"), b.get("toolConfig"),
                                               bedrock=True, system=b.get("system"))
    _raise_issues(issues)
    c = b.get("inferenceConfig") or {}
    if c.get("topK") not in (None, 0) or c.get("top_k") not in (None, 0):
        raise InvalidRequest("body.inferenceConfig.topK is not supported by afinar; use topP")
    kw = {"messages": msgs, "tools": tools,
          "max_tokens": _num(c.get("maxTokens", c.get("max_new_tokens")), "maxTokens",
                             DEFAULT_MAX_TOKENS),
          "temperature": _num(c.get("temperature"), "temperature", 0.0),
          "top_p": _num(c.get("topP", c.get("top_p")), "topP", 1.0),
          "stop": c.get("stopSequences") or []}
    kw["tool_choice"] = bedrock_tool_choice(b.get("toolConfig"))
    return kw


# -- responses ----------------------------------------------------------------------------------
def response(family: str, r: GenRequest, model_id: str) -> dict:
    if family == "afinar":
        return {"output": r.text, "stop_reason": r.stop_reason,
                "usage": {"input_tokens": r.input_tokens, "output_tokens": r.output_tokens}}
    if family == "anthropic":
        content = ([{"type": "text", "text": r.text}] if r.text or not r.tool_calls else []) + [
            {"type": "tool_use", "id": c["id"], "name": c["name"], "input": c["arguments"]}
            for c in r.tool_calls]
        return {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                "model": model_id, "content": content,
                "stop_reason": ANTHROPIC_STOP.get(r.stop_reason, "end_turn"),
                "stop_sequence": None, "usage": {"input_tokens": r.input_tokens,
                                                 "output_tokens": r.output_tokens}}
    if family == "titan-text":
        return {"inputTextTokenCount": r.input_tokens, "results": [{
            "tokenCount": r.output_tokens, "outputText": r.text,
            "completionReason": TITAN_STOP.get(r.stop_reason, "FINISH")}]}
    if family == "llama":
        return {"generation": r.text, "prompt_token_count": r.input_tokens,
                "generation_token_count": r.output_tokens,
                "stop_reason": "length" if r.stop_reason == "max_tokens" else "stop"}
    content = ([{"text": r.text}] if r.text or not r.tool_calls else []) + [
        {"toolUse": {"toolUseId": c["id"], "name": c["name"], "input": c["arguments"]}}
        for c in r.tool_calls]
    return {"output": {"message": {"role": "assistant", "content": content}},
            "stopReason": r.stop_reason, "usage": {
                "inputTokens": r.input_tokens, "outputTokens": r.output_tokens,
                "totalTokens": r.input_tokens + r.output_tokens}}


def answer_text(family: str, out: dict) -> str | None:
    """The answer's text in a response body of this family (an invocation log's output)."""
    if family == "afinar":
        return out.get("output")
    if family == "anthropic":
        return "".join(b.get("text", "") for b in out.get("content", [])
                       if b.get("type") == "text") or None
    if family == "titan-text":
        return out["results"][0].get("outputText")
    if family == "llama":
        return out.get("generation")
    return "".join(b.get("text", "") for b in out["output"]["message"]["content"]) or None


def stream(family: str, r: GenRequest, model_id: str, timeout: float) -> Iterator[dict]:
    """The chunks of InvokeModelWithResponseStream in the provider's streaming shape. Tool
    calls, where the request has tools, come whole at the end (as the full response has
    them)."""
    pieces = r.stream(timeout=timeout)
    if family == "anthropic":
        yield {"type": "message_start", "message": {
            "id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
            "model": model_id, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": r.input_tokens, "output_tokens": 0}}}
        yield {"type": "content_block_start", "index": 0,
               "content_block": {"type": "text", "text": ""}}
        text = ""
        for piece in pieces:
            text += piece
            if not r.parse_tools:
                yield {"type": "content_block_delta", "index": 0,
                       "delta": {"type": "text_delta", "text": piece}}
        if r.parse_tools and r.text:
            yield {"type": "content_block_delta", "index": 0,
                   "delta": {"type": "text_delta", "text": r.text}}
        yield {"type": "content_block_stop", "index": 0}
        for k, c in enumerate(r.tool_calls, start=1):
            yield {"type": "content_block_start", "index": k, "content_block": {
                "type": "tool_use", "id": c["id"], "name": c["name"], "input": {}}}
            yield {"type": "content_block_delta", "index": k, "delta": {
                "type": "input_json_delta", "partial_json": json.dumps(c["arguments"])}}
            yield {"type": "content_block_stop", "index": k}
        yield {"type": "message_delta", "delta": {
            "stop_reason": ANTHROPIC_STOP.get(r.stop_reason, "end_turn"),
            "stop_sequence": None}, "usage": {"output_tokens": r.output_tokens}}
        yield {"type": "message_stop", "amazon-bedrock-invocationMetrics": {
            "inputTokenCount": r.input_tokens, "outputTokenCount": r.output_tokens}}
        return
    if family in ("titan-text", "llama"):
        for piece in pieces:
            yield ({"outputText": piece, "index": 0} if family == "titan-text"
                   else {"generation": piece})
        if family == "titan-text":
            yield {"outputText": "", "index": 0, "inputTextTokenCount": r.input_tokens,
                   "totalOutputTextTokenCount": r.output_tokens,
                   "completionReason": TITAN_STOP.get(r.stop_reason, "FINISH")}
        else:
            yield response(family, r, model_id) | {"generation": ""}
        return
    # nova
    yield {"messageStart": {"role": "assistant"}}
    for piece in pieces:
        if not r.parse_tools:
            yield {"contentBlockDelta": {"delta": {"text": piece}, "contentBlockIndex": 0}}
    if r.parse_tools and r.text:
        yield {"contentBlockDelta": {"delta": {"text": r.text}, "contentBlockIndex": 0}}
    yield {"contentBlockStop": {"contentBlockIndex": 0}}
    for k, c in enumerate(r.tool_calls, start=1):
        yield {"contentBlockStart": {"start": {"toolUse": {"toolUseId": c["id"],
                                                           "name": c["name"]}},
                                     "contentBlockIndex": k}}
        yield {"contentBlockDelta": {"delta": {"toolUse": {"input": json.dumps(
            c["arguments"])}}, "contentBlockIndex": k}}
        yield {"contentBlockStop": {"contentBlockIndex": k}}
    yield {"messageStop": {"stopReason": r.stop_reason}}
    yield {"metadata": {"usage": {"inputTokens": r.input_tokens,
                                  "outputTokens": r.output_tokens}}}
