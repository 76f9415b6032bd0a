"""A generation request and the engine's errors: light (no torch), so the HTTP layer can
import them without loading the engine."""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

from afinar.errors import AfinarError


class Overloaded(AfinarError):
    """The request queue is full."""


class RequestError(AfinarError):
    """A request the engine cannot serve (unknown model, too long, bad parameters)."""


class BackendUnavailable(AfinarError):
    """The inference backend cannot serve now (vLLM failed to start): 503."""


class ModelUnavailable(RequestError):
    """The request names a model this engine does not serve (404 / ResourceNotFound)."""


def resolve_request_model(model_id: str, settings, confined: bool):
    """A request's model (confined to what check_served allows when it came from a client) ->
    (ResolvedModel, adapter dir or None), with the engines' typed errors."""
    from afinar.errors import ModelNotFoundError
    from afinar.models.registry import check_served, resolve_model
    try:
        ident = check_served(model_id, settings, kind="generative") if confined else model_id
        r = resolve_model(ident, settings)
    except ModelNotFoundError as e:
        raise ModelUnavailable(str(e).replace("\n  hint: ", "; ")) from None
    except AfinarError as e:
        raise RequestError(str(e).replace("\n  hint: ", "; ")) from None
    return r, r.adapter_path if r.kind in ("adapter", "custom") else None


def check_request(req: GenRequest, max_output: int) -> None:
    """The limits every engine holds a request to, before any work."""
    if not 1 <= req.max_tokens <= max_output:
        raise RequestError(f"max tokens must be between 1 and {max_output}; got "
                           f"{req.max_tokens}")
    if not 0 <= req.temperature <= 2 or not 0 < req.top_p <= 1:
        raise RequestError("temperature must be in [0, 2] and top_p in (0, 1]")
    if req.top_logprobs and not 0 <= req.top_logprobs <= 20:
        raise RequestError(f"top_logprobs must be between 0 and 20; got {req.top_logprobs}")


def encode_prompt(req: GenRequest, tok, max_prompt: int) -> None:
    """The request's prompt ids (chat messages rendered with the model's template and tools):
    `prompt_ids` and `input_tokens`, within the prompt limit."""
    if req.messages is not None:
        from afinar.data.tokenize import render_prompt
        # tool_choice "none": the tools are not offered, so the model answers in text
        text = render_prompt(tok, req.messages, req.tools if req.parse_tools else None)
        req.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    elif req.prompt is not None or not req.prompt_ids:  # else: token ids given (training)
        req.prompt_ids = tok(req.prompt or "", add_special_tokens=False)["input_ids"]
    req.input_tokens = len(req.prompt_ids)
    if req.input_tokens > max_prompt:
        raise RequestError(f"the input is {req.input_tokens} tokens; the limit is {max_prompt}")
    if req.input_tokens == 0:
        raise RequestError("the input is empty")


def adapter_key(adapter_dir: str) -> str:
    """One short name per adapter directory (PEFT adapter names, vLLM LoRA names)."""
    return "a" + str(abs(hash(adapter_dir)) % 10**10)


@dataclass
class GenRequest:
    model: str
    messages: list[dict] | None = None  # chat; or:
    prompt: str | None = None  # raw completion prompt
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    tools: list[dict] | None = None  # canonical tools (data/chat.py)
    tool_choice: str | dict = "auto"  # "auto" | "none" | "required" | {"name": function}
    parallel_tool_calls: bool = True
    json_schema: dict | None = None  # structured output: a JSON value of this schema ...
    json_mode: bool = False  # ... or (json_schema None) any JSON object
    logprobs: bool = False
    top_logprobs: int = 0
    seed: int | None = None
    # filled by the engine
    events: queue.Queue = field(default_factory=queue.Queue)  # ("text", s) | ("done", result)
    cancelled: threading.Event = field(default_factory=threading.Event)
    created: float = field(default_factory=time.time)
    text: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    stop_reason: str = "end_turn"
    prompt_ids: list[int] = field(default_factory=list)  # given (no messages, no prompt) or
    # rendered from the messages / prompt
    output_ids: list[int] = field(default_factory=list)  # the generated ids, end of turn kept
    matcher: object = None  # the grammar of a constrained request (inference/constrain.py)
    tool_calls: list[dict] = field(default_factory=list)  # [{"id", "name", "arguments"}]
    token_logprobs: list[dict] = field(default_factory=list)  # with logprobs: one per token

    @property
    def parse_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def result(self, timeout: float | None = None) -> GenRequest:
        """Block until done; returns self with text, token counts and stop_reason."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.time())
            try:
                kind, val = self.events.get(timeout=left)
            except queue.Empty:
                self.cancelled.set()
                raise TimeoutError(f"generation took longer than {timeout} s") from None
            if kind == "done":
                return self
            if kind == "error":
                raise val

    def stream(self, timeout: float | None = None):
        """Yield text pieces as they are generated; cancels the request if abandoned."""
        try:
            while True:
                try:
                    kind, val = self.events.get(timeout=timeout)
                except queue.Empty:
                    raise TimeoutError(f"no token for {timeout} s") from None
                if kind == "text":
                    yield val
                elif kind == "error":
                    raise val
                else:
                    return
        finally:
            self.cancelled.set()  # a client that went away frees its batch slot
