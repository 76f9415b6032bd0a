"""OpenAI-compatible routes: /v1/models, /v1/chat/completions, /v1/completions (streaming or
not, server-sent events) and /v1/embeddings (all-MiniLM-L6-v2), so the `openai` client works
with only `base_url` changed. Errors use OpenAI's shape: {"error": {"message", "type", "code"}}.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from afinar.inference.requests import GenRequest, Overloaded, RequestError

EMBEDDING_MODEL = "all-minilm-l6-v2"


def _error(status: int, message: str, kind: str = "invalid_request_error",
           code: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code,
                                   "param": None}}, status_code=status)


def router(get_engine, list_models, get_embedder) -> APIRouter:
    r = APIRouter(prefix="/v1")

    @r.get("/models")
    async def models():
        return {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "afinar"}
            for m in await run_in_threadpool(list_models)]}

    async def _body(request: Request) -> dict | JSONResponse:
        try:
            body = json.loads(await request.body())
        except ValueError as e:
            return _error(400, f"the request body is not valid JSON: {e}")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        return body

    def _params(body: dict) -> dict:
        stop = body.get("stop") or []
        return {"max_tokens": body.get("max_tokens") or body.get("max_completion_tokens") or 256,
                "temperature": body.get("temperature", 0.0) if body.get("temperature")
                is not None else 0.0, "top_p": body.get("top_p") or 1.0,
                "stop": [stop] if isinstance(stop, str) else list(stop)}

    async def _generate(body: dict, chat: bool):
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return _error(400, "'model' is required", code="missing_model")
        if chat:
            msgs = body.get("messages")
            if not isinstance(msgs, list) or not msgs:
                return _error(400, "'messages' must be a non-empty list")
            try:
                msgs = [{"role": m["role"], "content": m["content"] if isinstance(
                    m["content"], str) else "".join(p.get("text", "") for p in m["content"])}
                        for m in msgs]
            except (KeyError, TypeError, AttributeError):
                return _error(400, "each message needs 'role' and 'content'")
            kw = {"messages": msgs}
        else:
            prompt = body.get("prompt")
            if isinstance(prompt, list) and len(prompt) == 1:
                prompt = prompt[0]
            if not isinstance(prompt, str) or not prompt:
                return _error(400, "'prompt' must be a non-empty string")
            kw = {"prompt": prompt}
        try:
            engine = await run_in_threadpool(get_engine)
            req = await run_in_threadpool(engine.submit, GenRequest(model=model, **kw,
                                                                    **_params(body)))
        except Overloaded as e:
            return _error(429, e.message, "rate_limit_exceeded")
        except RequestError as e:
            nf = "unknown model" in e.message or "not installed" in e.message
            return _error(404 if nf else 400, e.message,
                          code="model_not_found" if nf else None)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        finish = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}
        obj = "chat.completion" if chat else "text_completion"
        if body.get("stream"):
            def sse():
                first = True
                for piece in req.stream(timeout=600):
                    if chat:
                        delta = {"content": piece} | ({"role": "assistant"} if first else {})
                        choice = {"index": 0, "delta": delta, "finish_reason": None}
                    else:
                        choice = {"index": 0, "text": piece, "finish_reason": None}
                    first = False
                    yield _sse({"id": rid, "object": obj + ".chunk" if chat else obj,
                                "created": created, "model": model, "choices": [choice]})
                end = ({"index": 0, "delta": {}, "finish_reason": finish.get(req.stop_reason, "stop")}
                       if chat else {"index": 0, "text": "",
                                     "finish_reason": finish.get(req.stop_reason, "stop")})
                yield _sse({"id": rid, "object": obj + ".chunk" if chat else obj,
                            "created": created, "model": model, "choices": [end]})
                yield "data: [DONE]\n\n"
            return StreamingResponse(sse(), media_type="text/event-stream")
        try:
            done = await run_in_threadpool(req.result, 600)
        except TimeoutError as e:
            return _error(504, str(e), "timeout")
        choice = ({"index": 0, "message": {"role": "assistant", "content": done.text},
                   "finish_reason": finish.get(done.stop_reason, "stop")} if chat else
                  {"index": 0, "text": done.text, "finish_reason": finish.get(done.stop_reason, "stop")})
        return {"id": rid, "object": obj, "created": created, "model": model,
                "choices": [choice], "usage": {
                    "prompt_tokens": done.input_tokens, "completion_tokens": done.output_tokens,
                    "total_tokens": done.input_tokens + done.output_tokens}}

    @r.post("/chat/completions")
    async def chat_completions(request: Request):
        body = await _body(request)
        return body if isinstance(body, JSONResponse) else await _generate(body, chat=True)

    @r.post("/completions")
    async def completions(request: Request):
        body = await _body(request)
        return body if isinstance(body, JSONResponse) else await _generate(body, chat=False)

    @r.post("/embeddings")
    async def embeddings(request: Request):
        body = await _body(request)
        if isinstance(body, JSONResponse):
            return body
        inp = body.get("input")
        texts = [inp] if isinstance(inp, str) else inp
        if not isinstance(texts, list) or not texts or not all(
                isinstance(t, str) for t in texts):
            return _error(400, "'input' must be a string or a list of strings")
        model = body.get("model") or EMBEDDING_MODEL
        if model not in (EMBEDDING_MODEL, "all-MiniLM-L6-v2",
                         "sentence-transformers/all-MiniLM-L6-v2"):
            return _error(404, f"embedding model '{model}' is not available; use "
                          f"{EMBEDDING_MODEL}", code="model_not_found")
        emb = await run_in_threadpool(get_embedder)
        vecs, n_tok = await run_in_threadpool(emb.embed, texts)
        return {"object": "list", "model": model, "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    return r


def _sse(d: dict) -> str:
    return f"data: {json.dumps(d)}\n\n"
