"""Bedrock runtime operations (Converse, ConverseStream, InvokeModel,
InvokeModelWithResponseStream) over the inference engine.

InvokeModel's body is model-specific in Bedrock; afinar's is documented here and in the README:
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

from afinar.inference.requests import GenRequest, Overloaded, RequestError
from afinar.serve import eventstream
from afinar.serve.awsproto import ApiError, validation

RUNTIME_OPERATIONS = ("Converse", "ConverseStream", "InvokeModel",
                      "InvokeModelWithResponseStream")
DEFAULT_MAX_TOKENS = 512
REQUEST_TIMEOUT_S = 600


class Runtime:
    def __init__(self, engine, resolve_model_id):
        self.engine = engine
        self.resolve_model_id = resolve_model_id  # Bedrock id/ARN -> afinar model identifier

    # -- request building --------------------------------------------------------------------
    def _submit(self, model_id: str, **kw) -> GenRequest:
        ident = self.resolve_model_id(model_id)
        try:
            return self.engine.submit(GenRequest(model=ident, **kw))
        except Overloaded as e:
            raise ApiError("ThrottlingException", e.message) from None
        except RequestError as e:
            if "unknown model" in e.message or "not installed" in e.message:
                raise ApiError("ResourceNotFoundException", e.message) from None
            raise validation(e.message) from None

    @staticmethod
    def _converse_messages(p: dict) -> list[dict]:
        msgs = []
        system = " ".join(b["text"] for b in p.get("system") or [] if b.get("text"))
        if system:
            msgs.append({"role": "system", "content": system})
        for i, m in enumerate(p.get("messages") or []):
            texts = []
            for j, block in enumerate(m["content"]):
                if "text" not in block:
                    kind = next(iter(block), "?")
                    raise validation(f"messages[{i}].content[{j}]: only text content blocks "
                                     f"are supported, got '{kind}'")
                texts.append(block["text"])
            msgs.append({"role": m["role"], "content": "".join(texts)})
        if not msgs or msgs[-1]["role"] != "user":
            raise validation("messages must end with a user message")
        return msgs

    @staticmethod
    def _inference(p: dict) -> dict:
        c = p.get("inferenceConfig") or {}
        return {"max_tokens": c.get("maxTokens", DEFAULT_MAX_TOKENS),
                "temperature": c.get("temperature", 0.0), "top_p": c.get("topP", 1.0),
                "stop": c.get("stopSequences") or []}

    # -- Converse ----------------------------------------------------------------------------
    def converse(self, p: dict) -> dict:
        t0 = time.time()
        req = self._submit(p["modelId"], messages=self._converse_messages(p),
                           **self._inference(p))
        r = self._wait(req)
        return {"output": {"message": {"role": "assistant", "content": [{"text": r.text}]}},
                "stopReason": r.stop_reason, "usage": _usage(r),
                "metrics": {"latencyMs": int((time.time() - t0) * 1000)}}

    def converse_stream(self, p: dict) -> Iterator[bytes]:
        t0 = time.time()
        req = self._submit(p["modelId"], messages=self._converse_messages(p),
                           **self._inference(p))

        def events():
            yield eventstream.event("messageStart", {"role": "assistant"})
            try:
                for piece in req.stream(timeout=REQUEST_TIMEOUT_S):
                    yield eventstream.event("contentBlockDelta", {
                        "delta": {"text": piece}, "contentBlockIndex": 0})
            except Exception as e:  # mid-stream: an exception event, as Bedrock sends
                yield eventstream.exception("modelStreamErrorException", str(e))
                return
            yield eventstream.event("contentBlockStop", {"contentBlockIndex": 0})
            yield eventstream.event("messageStop", {"stopReason": req.stop_reason})
            yield eventstream.event("metadata", {
                "usage": _usage(req), "metrics": {"latencyMs": int((time.time() - t0) * 1000)}})
        return events()

    # -- InvokeModel -------------------------------------------------------------------------
    def _invoke_request(self, p: dict) -> GenRequest:
        raw = p.get("body") or b""
        try:
            body = json.loads(raw)
        except ValueError as e:
            raise validation(f"body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise validation("body must be a JSON object")
        known = {"prompt", "messages", "system", "max_tokens", "maxTokens", "temperature",
                 "top_p", "topP", "stop"}
        if unknown := sorted(set(body) - known):
            raise validation(f"unknown body field(s) {unknown}; afinar takes "
                             f"{sorted(known)}")
        kw = {"max_tokens": body.get("max_tokens", body.get("maxTokens", DEFAULT_MAX_TOKENS)),
              "temperature": body.get("temperature", 0.0),
              "top_p": body.get("top_p", body.get("topP", 1.0)), "stop": body.get("stop") or []}
        for k in ("max_tokens", "temperature", "top_p"):
            if isinstance(kw[k], bool) or not isinstance(kw[k], int | float):
                raise validation(f"body.{k} must be a number")
        if "messages" in body:
            msgs = list(body["messages"])
            if body.get("system"):
                msgs.insert(0, {"role": "system", "content": body["system"]})
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                       and m.get("role") in ("system", "user", "assistant") for m in msgs):
                raise validation("body.messages must be [{\"role\": user|assistant|system, "
                                 "\"content\": str}]")
            return self._submit(p["modelId"], messages=msgs, **kw)
        if not isinstance(body.get("prompt"), str) or not body["prompt"]:
            raise validation("body needs a non-empty 'prompt' string or 'messages'")
        return self._submit(p["modelId"], messages=[{"role": "user", "content": body["prompt"]}],
                            **kw)

    def invoke(self, p: dict) -> bytes:
        r = self._wait(self._invoke_request(p))
        return json.dumps({"output": r.text, "stop_reason": r.stop_reason,
                           "usage": {"input_tokens": r.input_tokens,
                                     "output_tokens": r.output_tokens}}).encode()

    def invoke_stream(self, p: dict) -> Iterator[bytes]:
        req = self._invoke_request(p)

        def chunk(d: dict) -> bytes:
            return eventstream.event("chunk", {"bytes": base64.b64encode(
                json.dumps(d).encode()).decode()})

        def events():
            try:
                for piece in req.stream(timeout=REQUEST_TIMEOUT_S):
                    yield chunk({"output": piece})
            except Exception as e:
                yield eventstream.exception("modelStreamErrorException", str(e))
                return
            yield chunk({"stop_reason": req.stop_reason, "usage": {
                "input_tokens": req.input_tokens, "output_tokens": req.output_tokens}})
        return events()

    @staticmethod
    def _wait(req: GenRequest) -> GenRequest:
        try:
            return req.result(timeout=REQUEST_TIMEOUT_S)
        except TimeoutError as e:
            raise ApiError("ModelTimeoutException", str(e)) from None


def _usage(r: GenRequest) -> dict:
    return {"inputTokens": r.input_tokens, "outputTokens": r.output_tokens,
            "totalTokens": r.input_tokens + r.output_tokens}
