"""Bedrock runtime operations (Converse, ConverseStream, InvokeModel,
InvokeModelWithResponseStream) over the inference engine. Converse takes toolConfig (tools,
toolChoice auto/any/tool), toolUse / toolResult blocks and outputConfig.textFormat (a JSON
schema, enforced by constrained decoding).

InvokeModel's body is model-specific in Bedrock: ids of Anthropic, Titan, Llama and Nova models
take their provider's native body (inference/bodies.py); for any other id afinar's own body,
documented here and in the README:
request `{"prompt": str}` or `{"messages": [{"role", "content"}], "system": str}`, with
`max_tokens`, `temperature`, `top_p`, `stop` (list); response `{"output": str, "stop_reason":
str, "usage": {"input_tokens", "output_tokens"}}`; streamed as chunks `{"output": piece}` and a
last chunk with `stop_reason` and `usage`.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

from afinar import jsonutil
from afinar.data.chat import bedrock_tool_choice, request_conversation
from afinar.data.tools import CallStream
from afinar.errors import AfinarError
from afinar.inference import bodies as invoke_bodies
from afinar.inference.requests import (
    GenRequest,
)
from afinar.serve import eventstream
from afinar.serve.awsproto import ApiError, validation
from afinar.serve.errors import aws_error

RUNTIME_OPERATIONS = ("Converse", "ConverseStream", "InvokeModel",
                      "InvokeModelWithResponseStream")
DEFAULT_MAX_TOKENS = 512
REQUEST_TIMEOUT_S = 600


class Runtime:
    def __init__(self, engine, resolve_model_id, get_embedder=None, log=None,
                 model_kind=lambda _m: None):
        self.engine = engine
        self.resolve_model_id = resolve_model_id  # Bedrock id/ARN -> afinar model identifier
        self.model_kind = model_kind  # model id -> generative | encoder | classifier | None
        self.get_embedder = get_embedder  # Titan embeddings bodies
        self.log = log  # inference/invocation_log.py: off unless configured

    def _record(self, op: str, p: dict, body: dict, out: dict, r: GenRequest | None = None,
                embedding: bool = False, tokens: int = 0) -> None:
        if self.log is not None:
            md = p.get("requestMetadata") if isinstance(p.get("requestMetadata"), dict) else None
            self.log.record(op, p["modelId"], body, out, r.input_tokens if r else tokens,
                            r.output_tokens if r else 0, md, embedding)

    # -- request building --------------------------------------------------------------------
    def _submit(self, model_id: str, **kw) -> GenRequest:
        ident = self.resolve_model_id(model_id)
        try:
            return self.engine.submit(GenRequest(model=ident, **kw))
        except AfinarError as e:
            raise aws_error(e) from None

    def _converse_request(self, p: dict) -> GenRequest:
        """Converse's request -> a submitted GenRequest (tools, toolResult turns, structured
        output included); fields afinar does not honour are refused by name."""
        for k in ("guardrailConfig", "additionalModelRequestFields", "promptVariables",
                  "additionalModelResponseFieldPaths"):
            if p.get(k):
                raise validation(f"{k} is not supported by afinar; remove it")
        if (p.get("performanceConfig") or {}).get("latency", "standard") != "standard":
            raise validation("performanceConfig.latency: only 'standard' is supported")
        if (p.get("serviceTier") or {}).get("type", "default") != "default":
            raise validation("serviceTier: only the default tier is supported")
        msgs, tools, issues = request_conversation(p.get("messages"), p.get("toolConfig"),
                                                   bedrock=True, system=p.get("system"))
        if issues:
            raise validation(f"{issues[0].field}: {issues[0].message}")
        raw = p.get("messages") or []
        if not raw or raw[-1].get("role") != "user":
            raise validation("messages must end with a user message")
        kw = {"messages": msgs, "tools": tools} | self._inference(p)
        kw["tool_choice"] = bedrock_tool_choice(p.get("toolConfig"))
        out = p.get("outputConfig") or {}
        if out.get("effort"):
            raise validation("outputConfig.effort is not supported by afinar; remove it")
        fmt = out.get("textFormat")
        if fmt:
            try:
                kw["json_schema"] = jsonutil.loads(fmt["structure"]["jsonSchema"]["schema"])
            except (KeyError, TypeError, ValueError) as e:
                raise validation(f"outputConfig.textFormat.structure.jsonSchema.schema must be "
                                 f"a JSON schema as a string: {e}") from None
        return self._submit(p["modelId"], **kw)

    @staticmethod
    def _inference(p: dict) -> dict:
        c = p.get("inferenceConfig") or {}
        return {"max_tokens": c.get("maxTokens", DEFAULT_MAX_TOKENS),
                "temperature": c.get("temperature", 0.0), "top_p": c.get("topP", 1.0),
                "stop": c.get("stopSequences") or []}

    # -- Converse ----------------------------------------------------------------------------
    def converse(self, p: dict) -> dict:
        t0 = time.time()
        r = self._wait(self._converse_request(p))
        out = {"output": {"message": _message(r)}, "stopReason": r.stop_reason,
               "usage": _usage(r), "metrics": {"latencyMs": int((time.time() - t0) * 1000)}}
        self._record("Converse", p, _converse_body(p), out, r)
        return out

    def converse_stream(self, p: dict) -> Iterator[bytes]:
        t0 = time.time()
        req = self._converse_request(p)

        def events():
            yield eventstream.event("messageStart", {"role": "assistant"})
            blocks = _Blocks()
            splitter = CallStream() if req.parse_tools else None
            try:
                for piece in req.stream(timeout=REQUEST_TIMEOUT_S):
                    for ev in splitter.feed(piece) if splitter else [("text", piece)]:
                        yield from blocks.add(*ev)
                for ev in splitter.finish() if splitter else []:
                    yield from blocks.add(*ev)
            except Exception as e:  # mid-stream: an exception event, as Bedrock sends
                yield eventstream.exception("modelStreamErrorException", str(e))
                return
            yield from blocks.close()
            reason = "tool_use" if blocks.calls and req.stop_reason in (
                "end_turn", "stop_sequence") else req.stop_reason
            yield eventstream.event("messageStop", {"stopReason": reason})
            yield eventstream.event("metadata", {
                "usage": _usage(req), "metrics": {"latencyMs": int((time.time() - t0) * 1000)}})
            self._record("ConverseStream", p, _converse_body(p), {
                "output": {"message": _message(req)}, "stopReason": reason,
                "usage": _usage(req)}, req)
        return events()

    # -- InvokeModel -------------------------------------------------------------------------
    def _invoke_request(self, p: dict) -> tuple[str, GenRequest]:
        """(the body family, the submitted request) of an InvokeModel call."""
        body = _json_body(p)
        family = invoke_bodies.provider(p["modelId"])
        if self._embeds(p["modelId"]):
            raise validation("this is an embedding model: call InvokeModel (not the streaming "
                             "operation) with {\"inputText\"}")
        return family, self._submit(p["modelId"], **invoke_bodies.request(family, body))

    def _embeds(self, model_id: str) -> bool:
        """Titan embedding ids, and any id of the embedding model afinar serves: their
        InvokeModel body is Titan's embeddings body."""
        return invoke_bodies.provider(model_id) == "titan-embed" or \
            self.model_kind(model_id) == "encoder"

    def invoke(self, p: dict) -> bytes:
        if self._embeds(p["modelId"]):
            out = self._titan_embed(_json_body(p))
            self._record("InvokeModel", p, _json_body(p), out, embedding=True,
                         tokens=out["inputTextTokenCount"])
            return json.dumps(out).encode()
        family, req = self._invoke_request(p)
        r = self._wait(req)
        out = invoke_bodies.response(family, r, p["modelId"])
        self._record("InvokeModel", p, _json_body(p), out, r)
        return json.dumps(out).encode()

    def _titan_embed(self, body: dict) -> dict:
        """Titan embeddings' body, answered by the embedding model afinar serves (MiniLM)."""
        if unknown := sorted(set(body) - {"inputText", "dimensions", "normalize",
                                          "embeddingTypes"}):
            raise validation(f"unknown field(s) {unknown} in a Titan embeddings body")
        if not isinstance(body.get("inputText"), str) or not body["inputText"]:
            raise validation("body.inputText must be a non-empty string")
        if self.get_embedder is None:
            raise validation("no embedding model is configured")
        emb = self.get_embedder()
        vecs, n_tok = emb.embed([body["inputText"]])
        if body.get("dimensions") not in (None, len(vecs[0])):
            raise validation(f"body.dimensions {body['dimensions']} is not supported: the "
                             f"embedding model has {len(vecs[0])} dimensions")
        if body.get("embeddingTypes") not in (None, ["float"]):
            raise validation("body.embeddingTypes: only ['float'] is supported")
        return {"embedding": vecs[0], "inputTextTokenCount": n_tok}

    def invoke_stream(self, p: dict) -> Iterator[bytes]:
        family, req = self._invoke_request(p)

        def chunk(d: dict) -> bytes:
            return eventstream.event("chunk", {"bytes": base64.b64encode(
                json.dumps(d).encode()).decode()})

        def logged() -> None:
            self._record("InvokeModelWithResponseStream", p, _json_body(p),
                         invoke_bodies.response(family, req, p["modelId"]), req)

        def events():
            try:
                if family != "afinar":
                    for d in invoke_bodies.stream(family, req, p["modelId"],
                                                  REQUEST_TIMEOUT_S):
                        yield chunk(d)
                    return logged()
                for piece in req.stream(timeout=REQUEST_TIMEOUT_S):
                    yield chunk({"output": piece})
            except Exception as e:
                yield eventstream.exception("modelStreamErrorException", str(e))
                return
            yield chunk({"stop_reason": req.stop_reason, "usage": {
                "input_tokens": req.input_tokens, "output_tokens": req.output_tokens}})
            logged()
        return events()

    @staticmethod
    def _wait(req: GenRequest) -> GenRequest:
        try:
            return req.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError as e:
            raise ApiError("ModelTimeoutException", str(e)) from None


class _Blocks:
    """ConverseStream's content blocks: text deltas in one block, each tool call a block of
    its own (contentBlockStart with the toolUse id and name, then its input as JSON)."""

    def __init__(self):
        self.index, self.text_open, self.calls = 0, False, 0

    def add(self, kind: str, val) -> Iterator[bytes]:
        if kind == "text":
            self.text_open = True
            yield eventstream.event("contentBlockDelta", {"delta": {"text": val},
                                                          "contentBlockIndex": self.index})
            return
        yield from self._end_text()
        import uuid

        yield eventstream.event("contentBlockStart", {"start": {"toolUse": {
            "toolUseId": f"tooluse_{uuid.uuid4().hex[:22]}", "name": val["name"]}},
            "contentBlockIndex": self.index})
        yield eventstream.event("contentBlockDelta", {"delta": {"toolUse": {
            "input": json.dumps(val["arguments"], ensure_ascii=False)}},
            "contentBlockIndex": self.index})
        yield eventstream.event("contentBlockStop", {"contentBlockIndex": self.index})
        self.index, self.calls = self.index + 1, self.calls + 1

    def _end_text(self) -> Iterator[bytes]:
        if self.text_open:
            yield eventstream.event("contentBlockStop", {"contentBlockIndex": self.index})
            self.index, self.text_open = self.index + 1, False

    def close(self) -> Iterator[bytes]:
        if not self.text_open and not self.calls:  # an empty answer is one empty text block
            self.text_open = True
        yield from self._end_text()


def _message(r: GenRequest) -> dict:
    """Converse's assistant message for a finished request."""
    content = ([{"text": r.text}] if r.text or not r.tool_calls else []) + [
        {"toolUse": {"toolUseId": c["id"], "name": c["name"], "input": c["arguments"]}}
        for c in r.tool_calls]
    return {"role": "assistant", "content": content}


def _converse_body(p: dict) -> dict:
    """What a Converse call sent (its invocation-log input body)."""
    return {k: v for k, v in p.items() if k != "modelId" and v is not None}


def _json_body(p: dict) -> dict:
    try:
        body = jsonutil.loads(p.get("body") or b"")
    except ValueError as e:
        raise validation(f"body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise validation("body must be a JSON object")
    return body


def _usage(r: GenRequest) -> dict:
    return {"inputTokens": r.input_tokens, "outputTokens": r.output_tokens,
            "totalTokens": r.input_tokens + r.output_tokens}
