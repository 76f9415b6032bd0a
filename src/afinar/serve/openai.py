"""OpenAI-compatible routes: /v1/models, /v1/models/{id}, /v1/chat/completions, /v1/completions
(streaming or not, server-sent events) and /v1/embeddings (all-MiniLM-L6-v2), so the `openai`
client works with only `base_url` changed. Errors use OpenAI's shape:
{"error": {"message", "type", "code", "param"}}.

Chat completions honour tools / tool_choice / parallel_tool_calls (tool calls come back as
`tool_calls`, streamed as deltas the client assembles), response_format (json_object,
json_schema: enforced by constrained decoding), n, seed, logprobs / top_logprobs and
stream_options.include_usage. A field that is not honoured is refused with a 400 naming it,
unless it has its no-op value.
"""

from __future__ import annotations

import json
import time
import uuid

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse

from afinar import jsonutil
from afinar.data.chat import request_conversation
from afinar.data.tools import CallStream, openai_calls
from afinar.errors import AfinarError, InvalidRequest, NotFound
from afinar.inference.requests import (
    GenRequest,
)
from afinar.serve import errors
from afinar.serve.threads import inference, inference_iter

EMBEDDING_MODEL = "all-minilm-l6-v2"
EMBEDDING_NAMES = (EMBEDDING_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")
MAX_N = 8
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "tool_use": "tool_calls"}

# fields taken as they are (honoured), and fields accepted only at their no-op value
CHAT_FIELDS = {"model", "messages", "max_tokens", "max_completion_tokens", "temperature",
               "top_p", "stop", "stream", "stream_options", "n", "seed", "tools", "tool_choice",
               "parallel_tool_calls", "response_format", "logprobs", "top_logprobs", "user",
               "metadata", "store"}
COMPLETION_FIELDS = {"model", "prompt", "max_tokens", "temperature", "top_p", "stop", "stream",
                     "stream_options", "n", "seed", "user", "echo", "logprobs", "suffix",
                     "best_of"}
NO_OP = {"frequency_penalty": (0, 0.0, None), "presence_penalty": (0, 0.0, None),
         "logit_bias": (None, {}), "service_tier": (None, "auto", "default"),
         "modalities": (None, ["text"]), "functions": (None,), "function_call": (None,),
         "reasoning_effort": (None,), "prediction": (None,), "audio": (None,),
         "web_search_options": (None,), "verbosity": (None,)}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400,
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.code = message, param, status, code


def _error(status: int, message: str, kind: str = "invalid_request_error",
           code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "code": code,
                                   "param": param}}, status_code=status)


def _check_fields(body: dict, honoured: set[str]) -> None:
    for k, v in body.items():
        if k in honoured:
            continue
        if k in NO_OP:
            if v not in NO_OP[k]:
                raise BadRequest(f"'{k}' is not supported by afinar (only its default, "
                                 f"{NO_OP[k][0]!r}); remove it", k)
            continue
        raise BadRequest(f"unknown field '{k}'", k)


def _number(body: dict, key: str, default, kind=(int, float)):
    v = body.get(key)
    if v is None:
        return default
    if isinstance(v, bool) or not isinstance(v, kind):
        raise BadRequest(f"'{key}' must be a number", key)
    return v


def _sampling(body: dict, chat: bool) -> dict:
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 4:
        raise BadRequest("'stop' must be a string or a list of up to 4 strings", "stop")
    key = "max_completion_tokens" if chat and body.get("max_completion_tokens") is not None \
        else "max_tokens"
    out = {"max_tokens": _number(body, key, 256, int),
           "temperature": _number(body, "temperature", 0.0),
           "top_p": _number(body, "top_p", 1.0), "stop": stop,
           "seed": _number(body, "seed", None, int)}
    if body.get("store"):
        raise BadRequest("'store' is not supported (afinar keeps no completions)", "store")
    return out


def _tools(body: dict) -> dict:
    """tools, tool_choice, parallel_tool_calls, response_format -> GenRequest fields."""
    out: dict = {}
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if choice is not None and not tools:
        if choice != "none":
            raise BadRequest("'tool_choice' needs 'tools'", "tool_choice")
    if choice in (None, "auto", "none", "required"):
        out["tool_choice"] = choice or "auto"
    elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(
            (choice.get("function") or {}).get("name"), str):
        out["tool_choice"] = {"name": choice["function"]["name"]}
    else:
        raise BadRequest("'tool_choice' must be 'auto', 'none', 'required' or {\"type\": "
                         "\"function\", \"function\": {\"name\": ...}}", "tool_choice")
    ptc = body.get("parallel_tool_calls")
    if ptc is not None and not isinstance(ptc, bool):
        raise BadRequest("'parallel_tool_calls' must be true or false", "parallel_tool_calls")
    out["parallel_tool_calls"] = ptc is not False
    rf = body.get("response_format")
    if rf is not None:
        kind = rf.get("type") if isinstance(rf, dict) else None
        if kind == "json_schema":
            js = rf.get("json_schema")
            if not isinstance(js, dict) or not isinstance(js.get("schema", {}), dict):
                raise BadRequest("response_format.json_schema must be {\"name\", \"schema\": "
                                 "{...}, \"strict\"}", "response_format.json_schema")
            out["json_schema"] = js.get("schema") or {"type": "object"}
        elif kind == "json_object":
            out["json_mode"] = True
        elif kind != "text":
            raise BadRequest("response_format.type must be 'text', 'json_object' or "
                             "'json_schema'", "response_format.type")
    return out


def _logprobs(body: dict) -> dict:
    lp, top = body.get("logprobs"), body.get("top_logprobs")
    if lp is not None and not isinstance(lp, bool):
        raise BadRequest("'logprobs' must be true or false (chat completions)", "logprobs")
    if top is not None:
        if not lp:
            raise BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs")
        if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= 20:
            raise BadRequest("'top_logprobs' must be an integer from 0 to 20", "top_logprobs")
    return {"logprobs": bool(lp), "top_logprobs": top or 0}


def chat_request(body: dict) -> tuple[dict, int, bool]:
    """A chat-completions body -> (GenRequest fields, n, include_usage)."""
    _check_fields(body, CHAT_FIELDS)
    msgs, tools, issues = request_conversation(body.get("messages"), body.get("tools"))
    if issues:
        raise BadRequest(issues[0].message, issues[0].field)
    kw = {"messages": msgs, "tools": tools} | _sampling(body, True) | _tools(body) | \
        _logprobs(body)
    return kw, _n(body), _include_usage(body)


def completion_request(body: dict) -> tuple[dict, int, bool]:
    _check_fields(body, COMPLETION_FIELDS)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("'prompt' must be a non-empty string", "prompt")
    for k, ok in (("echo", (None, False)), ("suffix", (None, "")), ("best_of", (None, 1)),
                  ("logprobs", (None, 0))):
        if body.get(k) not in ok:
            raise BadRequest(f"'{k}' is not supported on /v1/completions; remove it", k)
    return {"prompt": prompt} | _sampling(body, False), _n(body), _include_usage(body)


def _n(body: dict) -> int:
    n = body.get("n", 1)
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
        raise BadRequest(f"'n' must be an integer from 1 to {MAX_N}", "n")
    return n


def _include_usage(body: dict) -> bool:
    so = body.get("stream_options")
    if so is None:
        return False
    if not body.get("stream"):
        raise BadRequest("'stream_options' is only allowed with 'stream': true",
                         "stream_options")
    if not isinstance(so, dict) or set(so) - {"include_usage", "include_obfuscation"}:
        raise BadRequest("stream_options takes 'include_usage'", "stream_options")
    return bool(so.get("include_usage"))


# -- responses ----------------------------------------------------------------------------------
def _logprobs_out(r: GenRequest) -> dict | None:
    if not r.logprobs:
        return None
    return {"content": [{"token": e["token"], "logprob": e["logprob"],
                         "bytes": list(e["token"].encode()),
                         "top_logprobs": [{"token": t["token"], "logprob": t["logprob"],
                                           "bytes": list(t["token"].encode())}
                                          for t in e.get("top_logprobs", [])]}
                        for e in r.token_logprobs], "refusal": None}


def _usage(reqs: list[GenRequest]) -> dict:
    p, c = reqs[0].input_tokens, sum(r.output_tokens for r in reqs)
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _choices(reqs: list[GenRequest], chat: bool) -> list[dict]:
    return [_chat_choice(i, q) if chat else
            {"index": i, "text": q.text, "logprobs": None,
             "finish_reason": FINISH.get(q.stop_reason, "stop")}
            for i, q in enumerate(reqs)]


def _chat_choice(i: int, r: GenRequest) -> dict:
    msg = {"role": "assistant", "content": r.text if (r.text or not r.tool_calls) else None,
           "refusal": None}
    if r.tool_calls:
        msg["tool_calls"] = openai_calls(r.tool_calls)
    return {"index": i, "message": msg, "logprobs": _logprobs_out(r),
            "finish_reason": FINISH.get(r.stop_reason, "stop")}


def _chat_chunks(i: int, r: GenRequest, base: dict):
    """One choice's stream: role, text and tool-call deltas, then its finish reason."""
    def chunk(delta: dict, finish=None, logprobs=None) -> str:
        return _sse(base | {"choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    splitter = CallStream() if r.parse_tools else None
    n_calls, lp_sent = 0, 0
    for piece in r.stream(timeout=600):
        events = splitter.feed(piece) if splitter else [("text", piece)]
        for kind, val in events:
            if kind == "text":
                lp = None
                if r.logprobs:
                    lp = {"content": _logprobs_out(r)["content"][lp_sent:]}
                    lp_sent += len(lp["content"])
                yield chunk({"content": val}, logprobs=lp)
            else:
                yield from _call_chunks(chunk, n_calls, val)
                n_calls += 1
    for kind, val in splitter.finish() if splitter else []:
        if kind == "text":
            yield chunk({"content": val})
        else:
            yield from _call_chunks(chunk, n_calls, val)
            n_calls += 1
    reason = r.stop_reason if not (n_calls and r.stop_reason in ("end_turn", "stop_sequence")) \
        else "tool_use"
    yield chunk({}, FINISH.get(reason, "stop"))


def _call_chunks(chunk, index: int, call: dict):
    cid = f"call_{uuid.uuid4().hex[:24]}"
    yield chunk({"tool_calls": [{"index": index, "id": cid, "type": "function",
                                 "function": {"name": call["name"], "arguments": ""}}]})
    yield chunk({"tool_calls": [{"index": index, "function": {
        "arguments": json.dumps(call["arguments"], ensure_ascii=False)}}]})


def router(get_engine, list_models, get_embedder, embedding_id, invocation_log=None,
           model_kind=lambda _m: None) -> APIRouter:
    """`embedding_id`: an embeddings request's model -> the served embedding model, or
    NotFound / InvalidRequest (a model of another kind); `model_kind`: any id afinar lists ->
    its kind (None: not a model afinar knows)."""
    r = APIRouter(prefix="/v1")

    def record(chat: bool, body: dict, reqs: list[GenRequest], out: dict) -> None:
        """The call in the invocation log (inference/invocation_log.py), when it is on."""
        if invocation_log is not None:
            u = _usage(reqs)
            md = body.get("metadata") if isinstance(body.get("metadata"), dict) else None
            invocation_log.record("ChatCompletions" if chat else "Completions", body["model"],
                                  body, out, u["prompt_tokens"], u["completion_tokens"], md)

    def _model_obj(m: str) -> dict:
        return {"id": m, "object": "model", "created": 0, "owned_by": "afinar"}

    @r.get("/models")
    async def models():
        return {"object": "list", "data": [_model_obj(m)
                                           for m in await run_in_threadpool(list_models)]}

    @r.get("/models/{model_id:path}")
    async def model(model_id: str):
        if model_id in await run_in_threadpool(list_models) or model_id in EMBEDDING_NAMES or \
                await run_in_threadpool(model_kind, model_id) is not None:
            return _model_obj(model_id)
        return _error(404, f"the model '{model_id}' does not exist", code="model_not_found",
                      param="model")

    async def _body(request: Request) -> dict:
        try:
            body = jsonutil.loads(await request.body())
        except ValueError as e:
            raise BadRequest(f"the request body is not valid JSON: {e}") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise BadRequest("'model' is required", "model", code="missing_model")
        return body

    async def _submit(model: str, kw: dict, n: int) -> list[GenRequest]:
        engine = await inference(get_engine)
        reqs = []
        try:
            for i in range(n):
                seed = kw.get("seed")
                one = kw | ({"seed": seed + i} if seed is not None and i else {})
                reqs.append(await inference(engine.submit, GenRequest(model=model, **one)))
        except AfinarError as e:
            for q in reqs:
                q.cancelled.set()
            status, _, code = errors.lookup(e)
            raise BadRequest(errors.message(e), "model" if status == 404 else None, status,
                             None if code == "invalid_request_error" else code) from None
        return reqs

    async def _generate(request: Request, chat: bool):
        try:
            body = await _body(request)
            kw, n, include_usage = (chat_request if chat else completion_request)(body)
            reqs = await _submit(body["model"], kw, n)
        except BadRequest as e:
            kind = {429: "rate_limit_exceeded", 503: "server_error"}.get(e.status,
                                                                       "invalid_request_error")
            return _error(e.status, e.message, kind, e.code, e.param)
        model = body["model"]
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
        obj = "chat.completion" if chat else "text_completion"
        base = {"id": rid, "object": obj + ".chunk" if chat else obj, "created": int(time.time()),
                "model": model, "system_fingerprint": "afinar"}
        if body.get("stream"):
            def sse():
                for i, q in enumerate(reqs):
                    if chat:
                        yield from _chat_chunks(i, q, base)
                        continue
                    for piece in q.stream(timeout=600):
                        yield _sse(base | {"choices": [{"index": i, "text": piece,
                                                        "finish_reason": None}]})
                    yield _sse(base | {"choices": [{"index": i, "text": "", "finish_reason":
                                                    FINISH.get(q.stop_reason, "stop")}]})
                if include_usage:
                    yield _sse(base | {"choices": [], "usage": _usage(reqs)})
                yield "data: [DONE]\n\n"
                record(chat, body, reqs, base | {"object": obj, "choices": _choices(
                    reqs, chat), "usage": _usage(reqs)})
            return StreamingResponse(inference_iter(sse()), media_type="text/event-stream")
        try:
            for q in reqs:
                await inference(q.result, 600)
        except TimeoutError as e:
            return _error(504, str(e), "timeout")
        out = base | {"object": obj, "choices": _choices(reqs, chat), "usage": _usage(reqs)}
        record(chat, body, reqs, out)
        return out

    @r.post("/chat/completions")
    async def chat_completions(request: Request):
        return await _generate(request, chat=True)

    @r.post("/completions")
    async def completions(request: Request):
        return await _generate(request, chat=False)

    @r.post("/embeddings")
    async def embeddings(request: Request):
        try:
            body = await _body(request)
            texts = _embedding_input(body)
            try:
                await run_in_threadpool(embedding_id, str(body["model"]))
            except NotFound as e:
                raise BadRequest(e.message, "model", 404, "model_not_found") from None
            except InvalidRequest as e:
                raise BadRequest(str(e).replace("\n  hint: ", "; "), "model") from None
            if body.get("dimensions") not in (None, 384):
                raise BadRequest(f"'dimensions' {body['dimensions']} is not supported: "
                                 f"{EMBEDDING_MODEL} has 384 dimensions and cannot be shortened",
                                 "dimensions")
            if body.get("encoding_format") not in (None, "float", "base64"):
                raise BadRequest("'encoding_format' must be 'float' or 'base64'",
                                 "encoding_format")
            if unknown := set(body) - {"model", "input", "dimensions", "encoding_format",
                                       "user"}:
                raise BadRequest(f"unknown field '{sorted(unknown)[0]}'", sorted(unknown)[0])
        except BadRequest as e:
            return _error(e.status, e.message, code=e.code, param=e.param)
        emb = await inference(get_embedder)
        vecs, n_tok = await inference(emb.embed, texts)
        if body.get("encoding_format") == "base64":
            import base64

            import numpy as np
            vecs = [base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode()
                    for v in vecs]
        return {"object": "list", "model": body["model"], "data": [
            {"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vecs)],
            "usage": {"prompt_tokens": n_tok, "total_tokens": n_tok}}

    return r


def _embedding_input(body: dict) -> list[str]:
    """Strings, or token arrays (OpenAI's cl100k_base ids, which LangChain's OpenAIEmbeddings
    sends) decoded back to text with tiktoken where its encoding is available."""
    inp = body.get("input")
    if isinstance(inp, str):
        return [inp]
    if isinstance(inp, list) and inp and all(isinstance(t, str) for t in inp):
        return inp
    if isinstance(inp, list) and inp and all(isinstance(t, int) for t in inp):
        inp = [inp]
    if isinstance(inp, list) and inp and all(
            isinstance(a, list) and a and all(isinstance(t, int) for t in a) for a in inp):
        return [_decode_tokens(a) for a in inp]
    raise BadRequest("'input' must be a string, a list of strings, or token arrays", "input")


def _decode_tokens(ids: list[int]) -> str:
    try:
        import tiktoken

        return tiktoken.get_encoding("cl100k_base").decode(ids)
    except Exception as e:  # not installed, or its encoding file cannot be fetched offline
        raise BadRequest(
            f"'input' holds token ids, which afinar reads as OpenAI's cl100k_base tokens, but "
            f"that encoding is not available here ({type(e).__name__}); send text instead "
            f"(LangChain: OpenAIEmbeddings(check_embedding_ctx_length=False))", "input") from None


def _sse(d: dict) -> str:
    return f"data: {json.dumps(d)}\n\n"
