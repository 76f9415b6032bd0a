"""The vLLM serving backend (`serve_backend = "vllm"`): the engine interface of engine.py over
vLLM OpenAI servers that afinar starts and supervises on loopback, one per base model.

vLLM pins its own torch and transformers, so it runs from its own command (`vllm_command`, e.g.
`/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server`). afinar renders prompts with its
own chat template and tool-call format (data/tools.py) and sends token ids to vLLM's
`/v1/completions`, then parses tool calls itself: the same text in, the same calls out, on either
backend. LoRA custom models of a served base are loaded into its vLLM at first use with vLLM's
runtime adapter loading. LoRA support costs vLLM's CPU build half its speed even for base
requests (measured: 49 -> 25 tokens/s for one client, 210 -> 95 at 8, SmolLM2-135M), so a vLLM
starts with it only when LoRA custom models of its base exist, at the rank they need, and is
restarted with it when the first adapter arrives. A vLLM that dies is restarted (its adapters
loaded again) at the next request; one that does not come up is a ModelLoadError quoting its
log.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from afinar.config import Settings
from afinar.errors import AfinarError, ConfigError, ModelLoadError
from afinar.inference.requests import (
    BackendUnavailable,
    GenRequest,
    Overloaded,
    RequestError,
    adapter_key,
    check_request,
    encode_prompt,
    resolve_request_model,
)

START_TIMEOUT_S = 900
FINISH = {"length": "max_tokens", "stop": "end_turn"}


class VLLMServer:
    """One supervised `vllm serve` process for one base model."""

    def __init__(self, settings: Settings, base_path: str):
        self.settings, self.base_path = settings, base_path
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.adapters: dict[str, str] = {}  # adapter name -> path, loaded into this process
        self.lora_rank = 0  # the process's --max-lora-rank; 0: started without LoRA
        self.restarts = 0
        self.lock = threading.Lock()
        self.log = settings.home / "logs" / f"vllm-{Path(base_path).name}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ensure(self, rank: int = 0) -> None:
        """Running and healthy, with LoRA up to `rank`; started (or restarted, with its
        adapters) when it is not."""
        with self.lock:
            alive = self.proc is not None and self.proc.poll() is None
            if alive and rank <= self.lora_rank:
                return
            if self.proc is not None:
                if not alive:
                    self.restarts += 1  # it died
                self.close()
            self.lora_rank = max(rank, self.lora_rank, self._registered_rank())
            self._start()
            for name, path in list(self.adapters.items()):
                self._load(name, path)

    def _registered_rank(self) -> int:
        """The LoRA rank this base's custom models need (vLLM's sizes), 0 when it has none."""
        from afinar.models.registry import list_custom_models

        ranks = [adapter_rank(Path(m["model_dir"]) / "adapter")
                 for m in list_custom_models(self.settings)
                 if m.get("base_path") == self.base_path and m.get("method") == "lora"]
        return vllm_rank(max(ranks, default=0))

    def _start(self) -> None:
        if not self.settings.vllm_command:
            raise ConfigError("serve_backend is 'vllm' but vllm_command is not set",
                              hint="set vllm_command in afinar.toml to how vLLM's OpenAI server "
                                   "starts, e.g. \"/opt/vllm/bin/python -m "
                                   "vllm.entrypoints.openai.api_server\"")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = shlex.split(self.settings.vllm_command) + [
            "--model", self.base_path, "--served-model-name", "base", "--host", "127.0.0.1",
            "--port", str(self.port)] + (
            ["--enable-lora", "--max-lora-rank", str(self.lora_rank), "--max-loras", "8"]
            if self.lora_rank else []) + list(self.settings.vllm_args)
        env = dict(os.environ, VLLM_ALLOW_RUNTIME_LORA_UPDATING="True")
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            try:
                # its own process group: vLLM runs its engine in child processes, which must go
                # with it (an orphaned engine keeps its KV cache memory)
                self.proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as e:
                raise ConfigError(f"vllm_command cannot start: {e}",
                                  hint="check vllm_command in afinar.toml") from None
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.proc.poll() is not None:
                from afinar.progress import log_tail
                tail = log_tail(self.log.read_text(errors="replace")[-20000:], 6)
                raise ModelLoadError(f"vLLM exited with code {self.proc.returncode} while "
                                     f"starting {self.base_path}: {tail}",
                                     hint=f"full log: {self.log}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.5)
        self.proc.kill()
        raise ModelLoadError(f"vLLM did not become healthy in {START_TIMEOUT_S} s",
                             hint=f"log: {self.log}")

    def adapter(self, name: str, path: str) -> str:
        """The served name of a LoRA adapter, loaded once."""
        self.ensure(vllm_rank(adapter_rank(Path(path))))
        with self.lock:
            if name not in self.adapters:
                self._load(name, path)
                self.adapters[name] = path
        return name

    def _load(self, name: str, path: str) -> None:
        body = json.dumps({"lora_name": name, "lora_path": path}).encode()
        req = urllib.request.Request(self.url + "/v1/load_lora_adapter", data=body,
                                     headers={"Content-Type": "application/json"})
        try:
            urllib.request.urlopen(req, timeout=300).read()
        except urllib.error.HTTPError as e:
            raise ModelLoadError(f"vLLM refused LoRA adapter {path}: "
                                 f"{e.read()[:300].decode(errors='replace')}") from None

    def close(self) -> None:
        """Stop the process group (the server and its engine processes), alive or not."""
        if self.proc is None:
            return
        import signal
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                return  # the whole group is gone
            try:
                self.proc.wait(30)
                if sig == signal.SIGTERM:
                    time.sleep(0.5)  # let its engine processes exit before the group's SIGKILL
            except subprocess.TimeoutExpired:
                continue


def adapter_rank(adapter_dir: Path) -> int:
    try:
        cfg = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return 0
    return max([int(cfg.get("r") or 0)] + [int(v) for v in (cfg.get("rank_pattern") or {})
                                            .values()])


def vllm_rank(r: int) -> int:
    """The smallest --max-lora-rank vLLM accepts that holds rank r (0 for none)."""
    return 0 if r <= 0 else next((v for v in (8, 16, 32, 64, 128, 256, 320, 512) if v >= r),
                                 512)


class VLLMEngine:
    """Engine's interface (submit, loaded, stats, pending, close) on vLLM."""

    def __init__(self, settings: Settings, max_queue: int = 256, max_prompt_tokens: int = 4096,
                 max_output_tokens: int = 1024, confined: bool = False):
        self.settings, self.confined = settings, confined
        self.max_queue, self.max_prompt, self.max_output = max_queue, max_prompt_tokens, \
            max_output_tokens
        self.servers: dict[str, VLLMServer] = {}
        self.tokenizers: dict[str, object] = {}
        self.pending: list[GenRequest] = []  # in flight
        self.lock = threading.Lock()
        self.stats = {"requests": 0, "restarts": 0}
        self.closed = False

    def loaded(self) -> dict:
        return {p: {"backend": "vllm", "port": s.port, "adapters": sorted(s.adapters),
                    "lora_rank": s.lora_rank,
                    "restarts": s.restarts, "alive": s.proc is not None and s.proc.poll() is None}
                for p, s in self.servers.items()}

    def close(self) -> None:
        self.closed = True
        for s in self.servers.values():
            s.close()

    # -- requests ------------------------------------------------------------------------------
    def _resolve(self, model_id: str) -> tuple[VLLMServer, str, object]:
        r, adapter = resolve_request_model(model_id, self.settings, self.confined)
        base = r.base if adapter and r.base else r.path
        with self.lock:
            server = self.servers.setdefault(base, VLLMServer(self.settings, base))
            if base not in self.tokenizers:
                from afinar.models.loading import load_tokenizer
                self.tokenizers[base] = load_tokenizer(base)
        try:
            if adapter:
                return server, server.adapter(adapter_key(adapter), adapter), \
                    self.tokenizers[base]
            server.ensure()
        except AfinarError as e:
            raise BackendUnavailable(str(e).replace("\n  hint: ", "; ")) from None
        return server, "base", self.tokenizers[base]

    def submit(self, req: GenRequest) -> GenRequest:
        if self.closed:
            raise Overloaded("the engine is shutting down")
        check_request(req, self.max_output)
        if req.parse_tools and req.tool_choice != "auto":
            raise RequestError("tool_choice 'required' or a named function needs the embedded "
                               "backend (its grammar); with serve_backend vllm use 'auto'")
        with self.lock:
            if len(self.pending) >= self.max_queue:
                raise Overloaded(f"{self.max_queue} requests are already waiting; retry later")
        server, served, tok = self._resolve(req.model)
        encode_prompt(req, tok, self.max_prompt)
        body = {"model": served, "prompt": req.prompt_ids, "max_tokens": req.max_tokens,
                "temperature": req.temperature, "top_p": req.top_p, "stream": True,
                "stream_options": {"include_usage": True}, "skip_special_tokens": True}
        if req.stop:
            body["stop"] = list(req.stop)
        if req.seed is not None:
            body["seed"] = req.seed
        if req.logprobs or req.top_logprobs:
            # the completions API's logprobs: the chosen token's and the top k, from the
            # model's own distribution (vLLM's default raw logprobs), as the embedded engine
            body["logprobs"] = req.top_logprobs or 0
        if req.json_schema is not None or req.json_mode:
            body["structured_outputs"] = {"json": req.json_schema or {"type": "object"}}
        with self.lock:
            self.pending.append(req)
            self.stats["requests"] += 1
        threading.Thread(target=self._run, args=(server, req, body), daemon=True,
                         name="afinar-vllm-request").start()
        return req

    def _run(self, server: VLLMServer, req: GenRequest, body: dict) -> None:
        try:
            self._stream(server, req, body)
            if req.parse_tools:
                from afinar.inference.engine import _tool_calls
                _tool_calls(req)
            req.events.put(("done", req))
        except Exception as e:  # noqa: BLE001 - every failure reaches the waiting client
            err = e if isinstance(e, AfinarError) else RequestError(
                f"vLLM request failed: {type(e).__name__}: {e}")
            req.events.put(("error", err))
        finally:
            with self.lock:
                if req in self.pending:
                    self.pending.remove(req)

    def _stream(self, server: VLLMServer, req: GenRequest, body: dict) -> None:
        http = urllib.request.Request(server.url + "/v1/completions",
                                      data=json.dumps(body).encode(),
                                      headers={"Content-Type": "application/json"})
        try:
            resp = urllib.request.urlopen(http, timeout=600)
        except urllib.error.HTTPError as e:
            detail = e.read()[:500].decode(errors="replace")
            raise RequestError(f"vLLM refused the request ({e.code}): {detail}") from None
        except OSError:  # it died: one restart, then the request once more
            server.ensure()
            self.stats["restarts"] = sum(s.restarts for s in self.servers.values())
            resp = urllib.request.urlopen(http, timeout=600)
        text = []
        with resp:
            for raw in resp:
                if req.cancelled.is_set():
                    req.stop_reason = "cancelled"  # closing the stream aborts it in vLLM
                    break
                line = raw.decode("utf-8").strip()
                if not line.startswith("data:") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[5:])
                if chunk.get("usage"):
                    req.output_tokens = chunk["usage"].get("completion_tokens", 0)
                for choice in chunk.get("choices") or []:
                    if req.logprobs and choice.get("logprobs"):
                        req.token_logprobs += _logprobs(choice["logprobs"], req.top_logprobs)
                    piece = choice.get("text") or ""
                    if piece:
                        text.append(piece)
                        req.events.put(("text", piece))
                    finish = choice.get("finish_reason")
                    if finish:
                        req.stop_reason = "stop_sequence" if finish == "stop" and \
                            choice.get("stop_reason") in req.stop else FINISH.get(finish,
                                                                                 "end_turn")
        req.text = "".join(text)
        lps = req.token_logprobs
        if lps and req.stop_reason == "end_turn" and not req.text.endswith(lps[-1]["token"]):
            lps.pop()  # the end-of-turn token: not part of the answer (as in the embedded engine)


def _logprobs(lp: dict, k: int) -> list[dict]:
    """vLLM's completions logprobs (tokens, token_logprobs, top_logprobs) -> the engine's
    entries: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}."""
    from afinar.inference.engine import MIN_LOGPROB

    out = []
    tops = lp.get("top_logprobs") or [None] * len(lp.get("tokens") or [])
    for tok, val, top in zip(lp.get("tokens") or [], lp.get("token_logprobs") or [], tops,
                             strict=False):
        entry = {"token": tok, "logprob": max(float(val if val is not None else MIN_LOGPROB),
                                              MIN_LOGPROB)}
        if k:
            ranked = sorted((top or {}).items(), key=lambda kv: -kv[1])[:k]
            entry["top_logprobs"] = [{"token": t, "logprob": max(float(v), MIN_LOGPROB)}
                                     for t, v in ranked]
        out.append(entry)
    return out
