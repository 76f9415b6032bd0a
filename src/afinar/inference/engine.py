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
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from afinar.config import Settings
from afinar.errors import AfinarError
from afinar.inference.requests import GenRequest, Overloaded, RequestError


@dataclass
class _Base:
    path: str
    model: object  # a PeftModel once an adapter was added, else the plain model
    tokenizer: object
    adapters: set = field(default_factory=set)
    nbytes: int = 0


MAX_GATHER_S = 0.25


class Engine:
    def __init__(self, settings: Settings, max_batch: int = 8, batch_window_ms: float = 30,
                 max_queue: int = 256, max_prompt_tokens: int = 4096,
                 max_output_tokens: int = 1024, memory_budget_mb: int = 8192):
        self.settings = settings
        self.max_batch, self.window = max_batch, batch_window_ms / 1000
        self.max_queue, self.max_prompt, self.max_output = max_queue, max_prompt_tokens, \
            max_output_tokens
        self.budget = memory_budget_mb * 2**20
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
            from afinar.models.registry import resolve_model
            try:
                r = resolve_model(model_id, self.settings)
            except AfinarError as e:
                raise RequestError(str(e).replace("\n  hint: ", "; ")) from None
            adapter_dir = r.adapter_path if r.kind in ("adapter", "custom") else None
            if adapter_dir and r.base and Path(r.base).exists():
                base = self._base(r.base)
                name = "a" + str(abs(hash(adapter_dir)) % 10**10)
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
        dtype, _ = choose_dtype("auto", device)
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
        if not 1 <= req.max_tokens <= self.max_output:
            raise RequestError(f"max tokens must be between 1 and {self.max_output}; got "
                               f"{req.max_tokens}")
        if not 0 <= req.temperature <= 2 or not 0 < req.top_p <= 1:
            raise RequestError("temperature must be in [0, 2] and top_p in (0, 1]")
        base, adapter = self.resolve(req.model)
        tok = base.tokenizer
        if req.messages is not None:
            from afinar.data.tokenize import render_prompt
            text = render_prompt(tok, req.messages)
        else:
            text = req.prompt or ""
        req.prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        req.input_tokens = len(req.prompt_ids)
        if req.input_tokens > self.max_prompt:
            raise RequestError(f"the input is {req.input_tokens} tokens; the limit is "
                               f"{self.max_prompt}")
        if req.input_tokens == 0:
            raise RequestError("the input is empty")
        req.key = (base.path, adapter, req.temperature > 0, round(req.temperature, 4),
                   round(req.top_p, 4))
        with self.lock:
            if len(self.pending) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already waiting; retry later")
            self.pending.append(req)
        self.wake.set()
        return req

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
        from transformers import StoppingCriteria, StoppingCriteriaList

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
                    text = tok.decode(gen[:-1] if hit_eos else gen, skip_special_tokens=True)
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
            r.events.put(("done", r))


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
