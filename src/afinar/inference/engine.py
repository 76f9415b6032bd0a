"""The serving engine: models loaded once, requests batched, tokens streamed.

- Models: an LRU of loaded base models under a memory budget. A LoRA custom model does not get a
  copy of its base: its adapter is loaded into the base's PeftModel under its own name and
  switched on per batch (base requests run with adapters disabled).
- Batching: one generation thread. It takes the oldest request, waits `batch_window_ms` for
  others, and runs every queued request for the same (base, adapter, sampling) together in one
  left-padded `generate`. Per-row stopping (EOS, max tokens, stop sequences, cancellation)
  happens in a StoppingCriteria that also streams each row's new text to its request.
- Limits: prompt tokens, output tokens, queue length (a full queue is an Overloaded error the
  routes turn into 429 / ThrottlingException).
- Tools and structured output: prompts render tools as training did (data/tools.py); a forced
  tool call or a JSON schema is a per-row grammar (inference/constrain.py) masked into the
  logits at each step, so constrained and free rows, base and adapter requests alike, share a
  batch; finished text is parsed back into tool calls.
- Logprobs: the chosen token's log-probability (and the top k) from the distribution the row
  sampled from (after its grammar mask, before temperature).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from afinar.config import Settings
from afinar.inference.requests import (
    GenRequest,
    Overloaded,
    RequestError,
    adapter_key,
    check_request,
    encode_prompt,
    resolve_request_model,
)


@dataclass
class _Base:
    path: str
    model: object  # a PeftModel once an adapter was added, else the plain model
    tokenizer: object
    adapters: set = field(default_factory=set)
    nbytes: int = 0
    grammars: object = None  # constrain.Grammars, made on the first constrained request

    def grammar_compiler(self):
        if self.grammars is None:
            from afinar.inference.constrain import Grammars

            vocab = self.model.get_output_embeddings().weight.shape[0]
            self.grammars = Grammars(self.tokenizer, vocab)
        return self.grammars


MAX_GATHER_S = 0.25
MIN_LOGPROB = -9999.0  # OpenAI's floor for impossible tokens (JSON has no -inf)


class Engine:
    def __init__(self, settings: Settings, max_batch: int = 8, batch_window_ms: float = 30,
                 max_queue: int = 256, max_prompt_tokens: int = 4096,
                 max_output_tokens: int = 1024, memory_budget_mb: int = 8192,
                 precision: str = "auto", confined: bool = False):
        self.settings = settings
        self.confined = confined  # model ids come from clients: only what check_served allows
        self.max_batch, self.window = max_batch, batch_window_ms / 1000
        self.max_queue, self.max_prompt, self.max_output = max_queue, max_prompt_tokens, \
            max_output_tokens
        self.budget = memory_budget_mb * 2**20
        self.precision = precision  # "auto": bf16 where the hardware has it fast
        self.bases: collections.OrderedDict[str, _Base] = collections.OrderedDict()
        self.routes: dict[str, tuple[str, str | None]] = {}  # model id -> (base path, adapter)
        self.pending: collections.deque[GenRequest] = collections.deque()
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()
        self.wake = threading.Event()
        self.closed = False
        self.stats = {"batches": 0, "requests": 0, "max_batch_seen": 0}
        self.thread = threading.Thread(target=self._loop, name="afinar-generate", daemon=True)
        self.thread.start()

    # -- models ------------------------------------------------------------------------------
    def resolve(self, model_id: str) -> tuple[_Base, str | None]:
        """Load (once) what `model_id` needs; returns its base and adapter name."""
        with self.load_lock:
            if model_id in self.routes:
                path, adapter = self.routes[model_id]
                if path in self.bases:
                    self.bases.move_to_end(path)
                    return self.bases[path], adapter
            r, adapter_dir = resolve_request_model(model_id, self.settings, self.confined)
            if adapter_dir and r.base and Path(r.base).exists():
                base = self._base(r.base)
                name = adapter_key(adapter_dir)
                if name not in base.adapters:
                    from peft import PeftModel
                    if not base.adapters:
                        base.model = PeftModel.from_pretrained(base.model, adapter_dir,
                                                               adapter_name=name)
                    else:
                        base.model.load_adapter(adapter_dir, adapter_name=name)
                    base.model.eval()
                    base.adapters.add(name)
                self.routes[model_id] = (base.path, name)
                return base, name
            base = self._base(r.path)
            self.routes[model_id] = (base.path, None)
            return base, None

    def _base(self, path: str) -> _Base:
        if path in self.bases:
            self.bases.move_to_end(path)
            return self.bases[path]
        from afinar.data.tokenize import ensure_chat_template
        from afinar.models.loading import load_causal_lm, load_tokenizer
        from afinar.training.runtime import choose_device, choose_dtype

        device = choose_device()
        dtype, _ = choose_dtype(self.precision, device)
        model = load_causal_lm(path, dtype, device).eval()
        tok = load_tokenizer(path, padding_side="left")
        ensure_chat_template(tok)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        while self.bases and sum(b.nbytes for b in self.bases.values()) + nbytes > self.budget:
            old, _ = self.bases.popitem(last=False)  # least recently used
            self.routes = {k: v for k, v in self.routes.items() if v[0] != old}
        b = _Base(path, model, tok, nbytes=nbytes)
        self.bases[path] = b
        return b

    def loaded(self) -> dict:
        return {p: {"adapters": len(b.adapters), "bytes": b.nbytes}
                for p, b in self.bases.items()}

    # -- requests ----------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> GenRequest:
        if self.closed:
            raise Overloaded("the engine is shutting down")
        check_request(req, self.max_output)
        base, adapter = self.resolve(req.model)
        req.matcher = self._matcher(base, req)
        encode_prompt(req, base.tokenizer, self.max_prompt)
        req.key = (base.path, adapter, req.temperature > 0, round(req.temperature, 4),
                   round(req.top_p, 4),
                   # a seeded request runs alone: its random stream is then its own
                   None if req.seed is None or req.temperature == 0 else id(req))
        with self.lock:
            if len(self.pending) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already waiting; retry later")
            self.pending.append(req)
        self.wake.set()
        return req

    @staticmethod
    def _matcher(base: _Base, req: GenRequest):
        """The grammar a request must follow, or None."""
        from afinar.inference import constrain

        choice = req.tool_choice
        if req.tools and (choice == "required" or isinstance(choice, dict)):
            name = choice.get("name") if isinstance(choice, dict) else None
            # a named function is called once; "required" may call several when parallel
            grammar = constrain.tool_call_grammar(req.tools, name,
                                                  req.parallel_tool_calls and name is None)
            return base.grammar_compiler().matcher(grammar, "tool_choice")
        if req.json_schema is not None or req.json_mode:
            return base.grammar_compiler().matcher(constrain.json_grammar(req.json_schema),
                                                   "response_format")
        return None

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def _take_batch(self) -> list[GenRequest]:
        with self.lock:
            if not self.pending:
                return []
            first = self.pending[0]
        # gather: wait while requests keep arriving (each within `window` of the last), up
        # to a full batch or MAX_GATHER_S after the first. Clients that submit together then
        # share a batch, and finish and come back together, instead of splitting into cohorts
        # that alternate (measured: 8 clients ran as two alternating batches of 4 with a
        # fixed 15 ms window).
        while True:
            with self.lock:
                same = [r for r in self.pending if r.key == first.key]
                last = max(r.created for r in same)
            now = time.time()
            if (len(same) >= self.max_batch or now - last >= self.window
                    or now - first.created >= MAX_GATHER_S):
                break
            time.sleep(0.003)
        with self.lock:
            batch = [r for r in self.pending if r.key == first.key][: self.max_batch]
            for r in batch:
                self.pending.remove(r)
        return [r for r in batch if not r.cancelled.is_set()]

    def _loop(self) -> None:
        while not self.closed:
            batch = self._take_batch()
            if not batch:
                self.wake.wait(0.5)
                self.wake.clear()
                continue
            try:
                self._run(batch)
            except Exception as e:  # the requests get the error; the engine keeps running
                for r in batch:
                    r.events.put(("error", e))

    @torch.no_grad()
    def _run(self, batch: list[GenRequest]) -> None:
        from transformers import LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        base_path, adapter = batch[0].key[0], batch[0].key[1]
        with self.load_lock:
            base = self.bases.get(base_path)
        if base is None:
            raise RequestError("the model was unloaded; retry")
        model, tok = base.model, base.tokenizer
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(batch))
        n = max(len(r.prompt_ids) for r in batch)
        pad = tok.pad_token_id
        ids = torch.full((len(batch), n), pad, dtype=torch.long)
        mask = torch.zeros((len(batch), n), dtype=torch.long)
        for i, r in enumerate(batch):
            ids[i, n - len(r.prompt_ids):] = torch.tensor(r.prompt_ids)
            mask[i, n - len(r.prompt_ids):] = 1
        device = next(model.parameters()).device
        eos = {i for i in (tok.eos_token_id, getattr(model.generation_config, "eos_token_id",
                                                     None)) if isinstance(i, int)}
        done = [False] * len(batch)
        sent = [""] * len(batch)
        rows = _Rows(batch, done, base)

        class Rows(StoppingCriteria):
            """Per-row stop + streaming: called after every decoding step."""

            def __call__(self, input_ids, scores, **kw):
                out = torch.zeros(len(batch), dtype=torch.bool, device=input_ids.device)
                for i, r in enumerate(batch):
                    if done[i]:
                        out[i] = True
                        continue
                    gen = input_ids[i, n:].tolist()
                    r.output_tokens = len(gen)
                    hit_eos = bool(gen) and gen[-1] in eos
                    rows.took(i, gen[-1], hit_eos, tok)
                    text = tok.decode(gen[:-1] if hit_eos else gen, skip_special_tokens=True)
                    rows.saw(i, text, tok)
                    stop_at = min((text.find(s) for s in r.stop if s and s in text),
                                  default=-1)
                    if stop_at >= 0:
                        text, r.stop_reason = text[:stop_at], "stop_sequence"
                    elif hit_eos:
                        r.stop_reason = "end_turn"
                    elif len(gen) >= r.max_tokens:
                        r.stop_reason = "max_tokens"
                    # hold back a partial multi-byte character (decoded as U+FFFD)
                    ready = text if (stop_at >= 0 or hit_eos) else text.rstrip("\ufffd")
                    if ready.startswith(sent[i]) and len(ready) > len(sent[i]):
                        r.events.put(("text", ready[len(sent[i]):]))
                        sent[i] = ready
                    if r.cancelled.is_set() and not (stop_at >= 0 or hit_eos):
                        r.stop_reason = "cancelled"  # the client went away (internal only)
                    if stop_at >= 0 or hit_eos or len(gen) >= r.max_tokens or \
                            r.cancelled.is_set():
                        done[i] = True
                        r.text = ready
                        out[i] = True
                return out

        kw = {"max_new_tokens": max(r.max_tokens for r in batch), "pad_token_id": pad,
              "eos_token_id": sorted(eos) or None,
              "stopping_criteria": StoppingCriteriaList([Rows()])}
        if rows.active:
            kw["logits_processor"] = LogitsProcessorList([rows])
        if batch[0].seed is not None and batch[0].temperature > 0:
            torch.manual_seed(batch[0].seed)
        if batch[0].temperature > 0:
            kw.update(do_sample=True, temperature=batch[0].temperature, top_p=batch[0].top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        ctx = _adapter(model, adapter)
        with ctx:
            model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), **kw)
        for i, r in enumerate(batch):
            if not done[i]:  # generate ended first (max_new_tokens of the batch)
                r.text = sent[i]
                r.stop_reason = "max_tokens"
            if r.parse_tools:
                _tool_calls(r)
            r.events.put(("done", r))


def _tool_calls(r: GenRequest) -> None:
    """Finished text -> tool calls (stop reason "tool_use") where it holds any."""
    import uuid

    from afinar.data.tools import parse_tool_calls

    content, calls = parse_tool_calls(r.text)
    if calls:
        r.tool_calls = [{"id": f"call_{uuid.uuid4().hex[:24]}"} | c for c in calls]
        r.text = content or ""
        if r.stop_reason in ("end_turn", "stop_sequence"):
            r.stop_reason = "tool_use"


class _Rows:
    """Per-row grammar masks and logprobs, as a logits processor (called before each token is
    chosen); `took` is told each row's chosen token (from the stopping criteria, after)."""

    def __init__(self, batch: list[GenRequest], done: list[bool], base: _Base):
        self.batch, self.done, self.base = batch, done, base
        self.constrained = [i for i, r in enumerate(batch) if r.matcher is not None]
        # tool_choice auto: free until the row writes <tool_call>, then held to the schemas
        self.watched = {i for i, r in enumerate(batch)
                        if r.parse_tools and r.tool_choice == "auto" and r.matcher is None}
        self.want_lp = [i for i, r in enumerate(batch) if r.logprobs]
        self.active = bool(self.constrained or self.want_lp or self.watched)
        self.grammars = base.grammar_compiler() if self.constrained or self.watched else None
        self.bitmask = self.grammars.bitmask(len(batch)) if self.grammars else None
        self.pending: dict[int, torch.Tensor] = {}  # row -> log-probs of its next token

    def __call__(self, input_ids, scores):
        for i in self.want_lp:  # the model's own distribution, before any grammar mask
            if not self.done[i]:
                self.pending[i] = torch.log_softmax(scores[i].float(), dim=-1)
        live = [(self.batch[i].matcher, i) for i in self.constrained if not self.done[i]]
        if live:
            self.grammars.fill(live, self.bitmask)
            self.grammars.apply(scores, self.bitmask)
        return scores

    def saw(self, i: int, text: str, tok) -> None:
        """A watched row that has just opened a tool call gets the call's grammar, fed with
        what it already wrote after the tag."""
        from afinar.data.tools import CALL_OPEN
        from afinar.inference import constrain

        if i not in self.watched or CALL_OPEN not in text:
            return
        self.watched.discard(i)
        r = self.batch[i]
        rest = text.split(CALL_OPEN, 1)[1]
        try:
            m = self.grammars.matcher(constrain.tool_call_grammar(
                r.tools, None, r.parallel_tool_calls, started=True), "tools")
        except RequestError:
            return  # a grammar llguidance cannot build: the call stays free, parsed as now
        if rest and not m.consume_tokens(tok(rest, add_special_tokens=False)["input_ids"]):
            return  # already off the schema: left free
        r.matcher = m
        self.constrained.append(i)

    def took(self, i: int, token: int, is_eos: bool, tok) -> None:
        r = self.batch[i]
        if r.matcher is not None and not r.matcher.is_stopped():
            r.matcher.consume_token(token)
        lp = self.pending.pop(i, None)
        if lp is None or is_eos:
            return
        entry = {"token": tok.decode([token]), "logprob": max(float(lp[token]), MIN_LOGPROB)}
        if r.top_logprobs:
            vals, ids = torch.topk(lp, r.top_logprobs)
            entry["top_logprobs"] = [{"token": tok.decode([int(t)]),
                                      "logprob": max(float(v), MIN_LOGPROB)}
                                     for v, t in zip(vals, ids, strict=True)]
        r.token_logprobs.append(entry)


class _adapter:
    """Run with one named adapter active, or with adapters disabled for the base model."""

    def __init__(self, model, name: str | None):
        self.model, self.name, self.ctx = model, name, None

    def __enter__(self):
        from peft import PeftModel

        if not isinstance(self.model, PeftModel):
            return
        if self.name is None:
            self.ctx = self.model.disable_adapter()
            self.ctx.__enter__()
        else:
            self.model.set_adapter(self.name)

    def __exit__(self, *exc):
        if self.ctx is not None:
            self.ctx.__exit__(*exc)
