"""The serving engine: models loaded once, requests batched continuously, tokens streamed.

- Models: an LRU of loaded base models under a memory budget. A LoRA custom model does not get a
  copy of its base: its adapter is added to the base's per-row LoRA (inference/multilora.py);
  an adapter that cannot be applied per row (DoRA, trained embeddings, ...) is merged into its
  own copy of the base.
- Continuous batching: one generation thread keeps, per base model, a batch of rows being
  decoded together, one token per row per step. A request joins at the next step: its prompt is
  prefilled in chunks of at most `prefill_chunk` tokens between decoding steps (so a long prompt
  never stalls the running rows for more than one chunk), then its cache is merged into the
  batch's (inference/kvbatch.py). A request leaves the batch at the step it finishes (EOS, max
  tokens, a stop sequence, its client gone); nobody waits for anybody else's batch to end.
  Rows of different LoRA adapters and of the base share a batch (each row's adapter is applied
  to its row only), and so do greedy and sampled rows (each samples with its own temperature,
  top-p and seed).
- Why our own scheduler: transformers' ContinuousBatchingManager (5.24) has no mixed-adapter
  batches and no per-request logits processors (grammars), both needed here, and measured
  slower on CPU: benchmarks/batching.py, 32 requests of 8-96 tokens, SmolLM2-135M, 2-core
  AVX512-BF16 CPU: this engine 346 tokens/s in bf16 (181 in fp32), transformers' continuous
  batching 172 (99), static `generate` batches 122 (65).
- Limits: prompt tokens, output tokens, queue length (a full queue is an Overloaded error the
  routes turn into 429 / ThrottlingException).
- Tools and structured output: prompts render tools as training did (data/tools.py); a forced
  tool call or a JSON schema is a per-row grammar (inference/constrain.py) masked into the
  logits at each step, so constrained and free rows share a batch; finished text is parsed back
  into tool calls.
- Logprobs: the chosen token's log-probability (and the top k) from the model's own
  distribution (before the grammar mask and temperature).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from afinar.config import Settings
from afinar.errors import ModelNotFoundError
from afinar.inference import kvbatch
from afinar.inference.requests import (
    GenRequest,
    ModelUnavailable,
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
    model: object
    tokenizer: object
    adapters: set = field(default_factory=set)
    lora: object = None  # multilora.MultiLora, made with the first adapter
    nbytes: int = 0
    grammars: object = None  # constrain.Grammars, made on the first constrained request

    def grammar_compiler(self):
        if self.grammars is None:
            from afinar.inference.constrain import Grammars

            vocab = self.model.get_output_embeddings().weight.shape[0]
            self.grammars = Grammars(self.tokenizer, vocab)
        return self.grammars


MAX_GATHER_S = 0.25
_live_engines: set[int] = set()  # ids of the engines running in this process


def engine_running() -> bool:
    """Whether a generation engine runs in this process: other torch work here (embeddings)
    then keeps to one thread, so that it leaves no idle OpenMP team beside the engine's (see
    Engine.resolve)."""
    return bool(_live_engines)
MIN_LOGPROB = -9999.0  # OpenAI's floor for impossible tokens (JSON has no -inf)


class Engine:
    def __init__(self, settings: Settings, max_batch: int = 32, batch_window_ms: float = 30,
                 max_queue: int = 256, max_prompt_tokens: int = 4096,
                 max_output_tokens: int = 1024, memory_budget_mb: int = 8192,
                 precision: str = "auto", confined: bool = False, prefill_chunk: int = 512,
                 background: bool = True):
        """background False: no generation thread; the caller submits requests and then runs
        them on its own thread with run_pending() (training's sampling: one thread does all
        the torch work, see resolve)."""
        self.settings = settings
        self.confined = confined  # model ids come from clients: only what check_served allows
        self.max_batch, self.window = max_batch, batch_window_ms / 1000
        self.max_queue, self.max_prompt, self.max_output = max_queue, max_prompt_tokens, \
            max_output_tokens
        self.budget = memory_budget_mb * 2**20
        self.precision = precision  # "auto": bf16 where the hardware has it fast
        self.bases: collections.OrderedDict[str, _Base] = collections.OrderedDict()
        self.routes: dict[str, tuple[str, str | None]] = {}  # model id -> (base path, adapter)
        self.prefill_chunk = prefill_chunk
        self.pending: collections.deque[_Row] = collections.deque()
        self.calls: collections.deque = collections.deque()  # (future, fn, args) to run here
        self.batches: dict[str, _Batch] = {}  # base path -> its running batch (engine thread)
        self.lock = threading.Lock()
        self.load_lock = threading.Lock()
        self.model_lock = threading.RLock()  # a decoding step, or an adapter being added
        self.rng = torch.Generator()
        self.rng.seed()
        self.wake = threading.Event()
        self.closed = False
        # batches: groups of requests admitted together; steps: decoding steps;
        # max_batch_seen: the most rows decoded together
        self.stats = {"batches": 0, "requests": 0, "steps": 0, "max_batch_seen": 0}
        self.thread = None
        if background:
            self.thread = threading.Thread(target=self._loop, name="afinar-generate",
                                           daemon=True)
            self.thread.start()
            _live_engines.add(id(self))

    # -- models ------------------------------------------------------------------------------
    def resolve(self, model_id: str) -> tuple[_Base, str | None]:
        """Load (once) what `model_id` needs; returns its base and adapter name."""
        with self.load_lock:
            if model_id in self.routes:
                path, adapter = self.routes[model_id]
                if path in self.bases:
                    self.bases.move_to_end(path)
                    return self.bases[path], adapter
        # Loading runs on the engine thread, like every other torch call of the engine: a
        # second thread that has run parallel torch work keeps its OpenMP team alive beside
        # the engine's for as long as it lives, which was measured to halve decoding speed on
        # a 2-core CPU (24 -> 48 ms a step) once a request thread had loaded the model.
        return self._on_engine_thread(self._load, model_id)

    def _on_engine_thread(self, fn, *args):
        if self.thread is None or threading.current_thread() is self.thread:
            return fn(*args)
        done: concurrent.futures.Future = concurrent.futures.Future()
        with self.lock:
            if self.closed:
                raise Overloaded("the engine is shutting down")
            self.calls.append((done, fn, args))
        self.wake.set()
        return done.result()

    def _run_calls(self) -> None:
        while True:
            with self.lock:
                if not self.calls:
                    return
                done, fn, args = self.calls.popleft()
            try:
                done.set_result(fn(*args))
            except Exception as e:  # the caller gets it
                done.set_exception(e)

    def _load(self, model_id: str) -> tuple[_Base, str | None]:
        with self.load_lock:
            if model_id in self.routes:  # loaded by an earlier call meanwhile
                path, adapter = self.routes[model_id]
                if path in self.bases:
                    return self.bases[path], adapter
            r, adapter_dir = resolve_request_model(model_id, self.settings, self.confined)
            if adapter_dir and r.base and Path(r.base).exists():
                from afinar.inference.multilora import Unsupported

                base = self._base(r.base)
                name = adapter_key(adapter_dir)
                try:
                    if name not in base.adapters:
                        self._add_adapter(base, name, adapter_dir)
                except Unsupported:  # served merged, in its own copy of the base
                    base = self._base(r.base, merge=adapter_dir)
                    name = None
                self.routes[model_id] = (base.path, name)
                return base, name
            base = self._base(r.path)
            self.routes[model_id] = (base.path, None)
            return base, None

    def serve_module(self, model_id: str, model, tokenizer) -> None:
        """Serve a model object as `model_id`, as it is (no copy, no prepacking: its weights
        may change between requests; training samples from the policy it trains this way).
        Not counted against the memory budget."""
        with self.load_lock:
            key = f"module:{model_id}"
            self.bases[key] = _Base(key, model, tokenizer)
            self.routes[model_id] = (key, None)

    def _add_adapter(self, base: _Base, name: str, adapter_dir: str) -> None:
        """Between two decoding steps (the running rows keep their caches: the base's weights
        do not change)."""
        from afinar.inference.multilora import MultiLora

        with self.model_lock:
            if base.lora is None:
                base.lora = MultiLora(base.model)
            base.lora.add(name, adapter_dir)
            base.adapters.add(name)

    def _base(self, path: str, merge: str | None = None) -> _Base:
        """A loaded base model (with `merge`: that adapter merged into a copy of it)."""
        key = f"{path} + {merge}" if merge else path
        if key in self.bases:
            self.bases.move_to_end(key)
            return self.bases[key]
        from afinar.data.tokenize import ensure_chat_template
        from afinar.models.loading import load_causal_lm, load_tokenizer
        from afinar.runtime import choose_device, choose_dtype

        device = choose_device()
        dtype, _ = choose_dtype(self.precision, device)
        model = load_causal_lm(path, dtype, device).eval()
        if merge:
            from peft import PeftModel
            model = PeftModel.from_pretrained(model, merge).merge_and_unload().eval()
        tok = load_tokenizer(path, padding_side="left")
        ensure_chat_template(tok)
        nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
        from afinar.inference import fastlinear
        fastlinear.pack(model)  # bf16 on CPU: oneDNN's prepacked weights (measured there)
        while sum(b.nbytes for b in self.bases.values()) + nbytes > self.budget:
            old = next((k for k in self.bases if not k.startswith("module:")), None)
            if old is None:  # only served modules left: they stay
                break
            del self.bases[old]  # least recently used
            self.routes = {k: v for k, v in self.routes.items() if v[0] != old}
        b = _Base(key, model, tok, nbytes=nbytes)
        self.bases[key] = b
        return b

    def loaded(self) -> dict:
        return {p: {"adapters": len(b.adapters), "bytes": b.nbytes}
                for p, b in self.bases.items()}

    # -- requests ----------------------------------------------------------------------------
    def submit(self, req: GenRequest) -> GenRequest:
        if self.closed:
            raise Overloaded("the engine is shutting down")
        check_request(req, self.max_output)
        if self.confined and req.model in self.routes:  # a model deleted since it was loaded
            from afinar.models.registry import check_served  # is served no more
            try:
                check_served(req.model, self.settings)
            except ModelNotFoundError as e:
                raise ModelUnavailable(str(e).replace("\n  hint: ", "; ")) from None
        base, adapter = self.resolve(req.model)
        req.matcher = self._matcher(base, req)
        encode_prompt(req, base.tokenizer, self.max_prompt)
        with self.lock:
            if len(self.pending) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already waiting; retry later")
            self.pending.append(_Row(req, base, adapter))
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
        _live_engines.discard(id(self))
        self.wake.set()
        if self.thread is None:
            self._fail_waiting()
        elif threading.current_thread() is not self.thread:
            self.thread.join(timeout=30)  # ends after the step it is in

    # -- scheduling --------------------------------------------------------------------------
    def _gather(self) -> None:
        """On an idle engine, wait while requests keep arriving (each within `window` of the
        last), up to a full batch or MAX_GATHER_S after the first: clients that submit together
        are then prefilled together (one prompt pass instead of several)."""
        with self.lock:
            first = self.pending[0].req.created
        while True:
            with self.lock:
                n, last = len(self.pending), max(r.req.created for r in self.pending)
            now = time.time()
            if n >= self.max_batch or now - last >= self.window or now - first >= MAX_GATHER_S:
                return
            time.sleep(0.003)

    def _admit(self) -> None:
        """Waiting requests start prefilling: for each base whose batch has free rows and no
        group prefilling already, one group of the oldest requests for it."""
        with self.lock:
            if not self.pending:
                return
        if self.thread is not None and not any(b.rows or b.joining
                                               for b in self.batches.values()):
            self._gather()  # (a threadless engine has all its requests already)
        groups: dict[str, list[_Row]] = {}
        with self.lock:
            for row in list(self.pending):
                if row.req.cancelled.is_set():  # gone before it started
                    self.pending.remove(row)
                    row.req.stop_reason = "cancelled"
                    row.req.events.put(("done", row.req))
                    continue
                b = self.batches.get(row.base.path)
                busy = b is not None and (b.joining is not None or (b.closed and b.rows))
                room = self.max_batch - (len(b.rows) if b else 0)
                group = groups.setdefault(row.base.path, [])
                if not busy and len(group) < room:
                    group.append(row)
                    self.pending.remove(row)
        for path, rows in groups.items():
            if rows:
                b = self.batches.setdefault(path, _Batch(rows[0].base))
                b.joining = _Prefill(rows, b.base)
                self.stats["batches"] += 1
                self.stats["requests"] += len(rows)

    def _loop(self) -> None:
        while not self.closed:
            if not self._turn():
                self.wake.wait(0.5)
                self.wake.clear()
        self._fail_waiting()

    def run_pending(self) -> None:
        """A threadless engine (background False): run until every submitted request is
        done, on the calling thread."""
        while not self.closed and self._turn():
            pass

    def _turn(self) -> bool:
        """Queued calls, admissions, then one step of every running batch; False when there
        was nothing to step."""
        self._run_calls()
        self._admit()
        busy = False
        for path, b in list(self.batches.items()):
            if not (b.rows or b.joining):
                del self.batches[path]
                continue
            busy = True
            try:
                with self.model_lock, torch.inference_mode():
                    self._step(b)
            except Exception as e:  # its requests get the error; the engine keeps running
                for row in b.rows + (b.joining.rows if b.joining else []):
                    row.req.events.put(("error", e))
                del self.batches[path]
        return busy

    def _fail_waiting(self) -> None:
        with self.lock:
            for done, _, _ in self.calls:
                done.set_exception(Overloaded("the engine is shutting down"))
            self.calls.clear()
            waiting = [r.req for r in self.pending] + [
                r.req for b in self.batches.values()
                for r in b.rows + (b.joining.rows if b.joining else [])]
        for req in waiting:
            req.events.put(("error", Overloaded("the engine is shutting down")))

    def _step(self, b: _Batch) -> None:
        """One decoding step for the batch's rows, then one prefill chunk of the joining group
        (which joins the rows once its prompts are through)."""
        if b.rows:
            ids = torch.tensor([[r.last] for r in b.rows])
            pos = torch.tensor([[r.pos] for r in b.rows])
            b.mask = torch.cat([b.mask, b.mask.new_ones(len(b.rows), 1)], dim=1)
            logits = self._forward(b.base, b.rows, ids, b.mask, pos, b.cache)
            for r in b.rows:
                r.pos += 1
            self.stats["steps"] += 1
            self.stats["max_batch_seen"] = max(self.stats["max_batch_seen"], len(b.rows))
            keep = self._advance(b.base, b.rows, logits)
            if len(keep) < len(b.rows):
                b.rows = [b.rows[i] for i in keep]
                if b.rows:
                    b.mask = kvbatch.select(b.cache, b.mask, keep)
        p = b.joining
        if p is None:
            return
        width = max(1, self.prefill_chunk // len(p.rows))
        s, e = p.done, min(p.ids.shape[1], p.done + width)
        logits = self._forward(b.base, p.rows, p.ids[:, s:e], p.mask[:, :e], p.pos[:, s:e],
                               p.cache)
        p.done = e
        if e < p.ids.shape[1]:
            return
        b.joining = None
        keep = self._advance(b.base, p.rows, logits)
        if not keep:
            return
        rows, mask = [p.rows[i] for i in keep], p.mask
        if len(keep) < len(p.rows):
            mask = kvbatch.select(p.cache, mask, keep)
        if not b.rows:
            b.rows, b.cache, b.mask = rows, p.cache, mask
            b.closed = not kvbatch.joinable(p.cache)
        else:
            b.cache, b.mask = kvbatch.merge(b.cache, b.mask, p.cache, mask)
            b.rows += rows

    @staticmethod
    def _forward(base: _Base, rows: list[_Row], ids, mask, pos, cache) -> torch.Tensor:
        """The model on `ids` (rows x new tokens) -> each row's next-token logits (float)."""
        model = base.model
        device = next(model.parameters()).device
        lora = base.lora.step([r.adapter for r in rows]) if base.lora else contextlib.nullcontext()
        with lora:
            out = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                        position_ids=pos.to(device), cache=cache, use_cache=True,
                        logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _advance(self, base: _Base, rows: list[_Row], logits: torch.Tensor) -> list[int]:
        """Choose each row's next token, stream it and check its stops; returns the indices of
        the rows that go on."""
        tokens = self._choose(base, rows, logits)
        keep = []
        for i, (row, token) in enumerate(zip(rows, tokens, strict=True)):
            if row.took(token, base):
                keep.append(i)
            else:
                if row.req.parse_tools:
                    _tool_calls(row.req)
                row.req.events.put(("done", row.req))
        return keep

    def _choose(self, base: _Base, rows: list[_Row], scores: torch.Tensor) -> list[int]:
        """Each row's token: logprobs from the model's own distribution, then the row's grammar
        mask, then greedy or its own temperature / top-p (and its own seed)."""
        for i, r in enumerate(rows):
            if r.req.logprobs:
                r.lp = torch.log_softmax(scores[i], dim=-1)
        live = [(r.req.matcher, i) for i, r in enumerate(rows) if r.req.matcher is not None]
        if live:
            grammars = base.grammar_compiler()
            bitmask = grammars.bitmask(len(rows))
            grammars.fill(live, bitmask)
            grammars.apply(scores, bitmask)
        out = scores.argmax(dim=-1).tolist()  # greedy rows keep these
        hot = [i for i, r in enumerate(rows) if r.req.temperature > 0 and r.req.top_p >= 1]
        if hot:
            # Gumbel-max: argmax(logits / T + Gumbel noise) is a draw from softmax(logits / T),
            # for all these rows in one batched op (each row's noise from its own seed's
            # stream). Measured on 64 rows of SmolLM2-135M's 49k vocabulary, 2-core CPU: a
            # softmax and a multinomial per row took ~90 ms of a ~320 ms decoding step.
            temps = torch.tensor([rows[i].req.temperature for i in hot], dtype=scores.dtype)
            u = torch.stack([torch.rand(scores.shape[-1], generator=rows[i].rng or self.rng)
                             for i in hot])
            drawn = (scores[hot] / temps[:, None] - torch.log(-torch.log(u))).argmax(dim=-1)
            for i, t in zip(hot, drawn.tolist(), strict=True):
                out[i] = t
        for i, r in enumerate(rows):
            if r.req.temperature > 0 and r.req.top_p < 1:
                # the smallest set of tokens whose probability reaches top_p
                probs = torch.softmax(scores[i] / r.req.temperature, dim=-1)
                p, idx = probs.sort(descending=True)
                p[(p.cumsum(0) - p) >= r.req.top_p] = 0
                probs = torch.zeros_like(probs).scatter_(0, idx, p)
                out[i] = int(torch.multinomial(probs, 1, generator=r.rng or self.rng))
        return out


class _Row:
    """A request in the engine: its model, what it generated and streamed, its position."""

    def __init__(self, req: GenRequest, base: _Base, adapter: str | None):
        self.req, self.base, self.adapter = req, base, adapter
        self.gen: list[int] = []
        self.sent = ""
        self.pos = len(req.prompt_ids)  # the position of the next token fed to the model
        self.last = 0  # the token fed at the next step
        self.lp = None  # log-probs of the token being chosen (with logprobs)
        # a seeded request samples from its own random stream, whatever shares its batch
        self.rng = (torch.Generator().manual_seed(req.seed)
                    if req.seed is not None and req.temperature > 0 else None)
        # tool_choice auto: free until the row writes <tool_call>, then held to the schemas
        self.watched = req.parse_tools and req.tool_choice == "auto" and req.matcher is None
        tok, model = base.tokenizer, base.model
        self.eos = {i for i in (tok.eos_token_id, getattr(model.generation_config,
                                                          "eos_token_id", None))
                    if isinstance(i, int)}

    def took(self, token: int, base: _Base) -> bool:
        """Record the chosen token, stream the new text; False once the request is finished
        (end of turn, stop sequence, max tokens, or its client went away)."""
        r, tok = self.req, base.tokenizer
        self.gen.append(token)
        self.last = token
        r.output_tokens = len(self.gen)
        hit_eos = token in self.eos
        if r.matcher is not None and not r.matcher.is_stopped():
            r.matcher.consume_token(token)
        if self.lp is not None and not hit_eos:
            self._logprob(token, tok)
        self.lp = None
        text = tok.decode(self.gen[:-1] if hit_eos else self.gen, skip_special_tokens=True)
        if self.watched:
            self._watch(text, base)
        stop_at = min((text.find(s) for s in r.stop if s and s in text), default=-1)
        if stop_at >= 0:
            text, r.stop_reason = text[:stop_at], "stop_sequence"
        elif hit_eos:
            r.stop_reason = "end_turn"
        elif len(self.gen) >= r.max_tokens:
            r.stop_reason = "max_tokens"
        # hold back a partial multi-byte character (decoded as U+FFFD)
        ready = text if (stop_at >= 0 or hit_eos) else text.rstrip("\ufffd")
        if ready.startswith(self.sent) and len(ready) > len(self.sent):
            r.events.put(("text", ready[len(self.sent):]))
            self.sent = ready
        finished = stop_at >= 0 or hit_eos or len(self.gen) >= r.max_tokens
        if r.cancelled.is_set() and not finished:
            r.stop_reason = "cancelled"  # the client went away (internal only)
            finished = True
        if finished:
            r.text, r.output_ids = ready, list(self.gen)
        return not finished

    def _logprob(self, token: int, tok) -> None:
        lp, r = self.lp, self.req
        entry = {"token": tok.decode([token]), "logprob": max(float(lp[token]), MIN_LOGPROB)}
        if r.top_logprobs:
            vals, ids = torch.topk(lp, r.top_logprobs)
            entry["top_logprobs"] = [{"token": tok.decode([int(t)]),
                                      "logprob": max(float(v), MIN_LOGPROB)}
                                     for v, t in zip(vals, ids, strict=True)]
        r.token_logprobs.append(entry)

    def _watch(self, text: str, base: _Base) -> None:
        """A watched row that has just opened a tool call gets the call's grammar, fed with
        what it already wrote after the tag."""
        from afinar.data.tools import CALL_OPEN
        from afinar.inference import constrain

        if CALL_OPEN not in text:
            return
        self.watched = False
        r = self.req
        rest = text.split(CALL_OPEN, 1)[1]
        try:
            m = base.grammar_compiler().matcher(constrain.tool_call_grammar(
                r.tools, None, r.parallel_tool_calls, started=True), "tools")
        except RequestError:
            return  # a grammar llguidance cannot build: the call stays free, parsed as now
        if rest and not m.consume_tokens(base.tokenizer(rest, add_special_tokens=False)
                                         ["input_ids"]):
            return  # already off the schema: left free
        r.matcher = m


class _Prefill:
    """A group of requests whose prompts go through the model, chunk by chunk, before they
    join the decoding rows: left-padded ids, mask and positions, and their own cache."""

    def __init__(self, rows: list[_Row], base: _Base):
        self.rows = rows
        n = max(len(r.req.prompt_ids) for r in rows)
        pad = base.tokenizer.pad_token_id or 0
        self.ids = torch.full((len(rows), n), pad, dtype=torch.long)
        self.mask = torch.zeros((len(rows), n), dtype=torch.long)
        for i, r in enumerate(rows):
            self.ids[i, n - len(r.req.prompt_ids):] = torch.tensor(r.req.prompt_ids)
            self.mask[i, n - len(r.req.prompt_ids):] = 1
        self.pos = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        self.done = 0  # prompt columns already through the model
        self.cache = kvbatch.new_cache(base.model)


@dataclass
class _Batch:
    """The rows of one base model decoded together, and the group prefilling to join them."""
    base: _Base
    rows: list[_Row] = field(default_factory=list)
    cache: object = None
    mask: torch.Tensor | None = None
    joining: _Prefill | None = None
    closed: bool = False  # a cache that cannot be rearranged: no joins until the rows end


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
