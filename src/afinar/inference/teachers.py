"""Teachers: the models that answer prompts for distillation and synthesis.

A teacher is any model afinar serves (a registry id, a custom model, a local folder, a hub
id), run through the serving engine's continuous batching, or an external model registered in
afinar.toml's [teachers] table: an OpenAI-compatible chat endpoint or a Bedrock runtime
(Converse, through boto3). `answer(prompts)` returns one Answer per
prompt record (data/prompts.py): the assistant message, or why there is none (cut at the
token limit, empty, the call failed). A JSON schema, when given, constrains every answer
(constrained decoding here; `response_format` json_schema for an OpenAI endpoint,
`outputConfig.textFormat` for Bedrock).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from afinar.config import Settings
from afinar.data.prompts import PromptRecord, openai_record
from afinar.errors import AfinarError, ConfigError

CALL_TIMEOUT_S = 3600


@dataclass
class Answer:
    message: dict | None = None  # canonical assistant message
    problem: str | None = None  # why it is not used (cut, empty, the call's error)
    tokens: int = 0



class LocalTeacher:
    """A model afinar serves, through the serving engine (continuous batching)."""

    def __init__(self, model_id: str, settings: Settings, max_tokens: int,
                 temperature: float = 0.0, json_schema: dict | None = None, seed: int = 0):
        from afinar.inference.engine import Engine

        self.model, self.max_tokens, self.temperature = model_id, max_tokens, temperature
        self.json_schema, self.seed = json_schema, seed
        self.engine = Engine(settings, max_output_tokens=max(max_tokens, 1024),
                             max_prompt_tokens=32768)
        try:
            self.engine.resolve(model_id)  # a missing teacher fails before any prompt is sent
        except BaseException:
            self.engine.close()
            raise

    def answer(self, prompts: list[PromptRecord]) -> list[Answer]:
        from afinar.inference.requests import GenRequest

        subs = []
        for p in prompts:
            try:
                self.seed += 1
                subs.append(self.engine.submit(GenRequest(
                    model=self.model, messages=p.messages, tools=p.tools,
                    max_tokens=self.max_tokens, temperature=self.temperature,
                    json_schema=self.json_schema, seed=self.seed)))
            except AfinarError as e:
                subs.append(e)
        out = []
        for r in subs:
            if isinstance(r, AfinarError):
                out.append(Answer(problem=f"teacher call failed: {r}"))
                continue
            try:
                r.result(timeout=CALL_TIMEOUT_S)
            except (AfinarError, TimeoutError) as e:
                out.append(Answer(problem=f"teacher call failed: {e}"))
                continue
            msg = {"role": "assistant", "content": r.text or None}
            if r.tool_calls:
                msg["tool_calls"] = r.tool_calls
            out.append(_checked(msg, r.stop_reason == "max_tokens", r.output_tokens))
        return out

    def close(self) -> None:
        self.engine.close()


class _Remote:
    """A teacher outside afinar: `_call` answers one prompt; `concurrency` calls run at once."""

    spec = None

    def _call(self, p: PromptRecord) -> Answer:
        raise NotImplementedError

    def answer(self, prompts: list[PromptRecord]) -> list[Answer]:
        with ThreadPoolExecutor(self.spec.concurrency) as pool:
            return list(pool.map(self._call, prompts))

    def close(self) -> None:
        pass


class EndpointTeacher(_Remote):
    """An external OpenAI-compatible chat endpoint ([teachers.<name>] in afinar.toml)."""

    def __init__(self, name: str, spec, max_tokens: int, temperature: float = 0.0,
                 json_schema: dict | None = None, seed: int = 0):
        import os

        self.name, self.spec, self.max_tokens = name, spec, max_tokens
        self.temperature, self.json_schema, self.seed = temperature, json_schema, seed
        self.key = os.environ.get(spec.api_key_env) if spec.api_key_env else None
        if spec.api_key_env and not self.key:
            raise ConfigError(f"teacher '{name}': environment variable {spec.api_key_env} "
                              f"(api_key_env) is not set")

    def _call(self, p: PromptRecord) -> Answer:
        import urllib.error
        import urllib.request

        body = {"model": self.spec.model, "max_tokens": self.max_tokens,
                "temperature": self.temperature, **openai_record(p.messages, p.tools)}
        if self.json_schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": self.json_schema, "strict": True}}
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        url = self.spec.base_url.rstrip("/") + "/chat/completions"
        req = urllib.request.Request(url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(req, timeout=self.spec.timeout_s) as r:
                got = json.loads(r.read())
            choice = got["choices"][0]
            m = choice["message"]
        except urllib.error.HTTPError as e:
            return Answer(problem=f"teacher call failed: HTTP {e.code} "
                          f"{e.read()[:300].decode('utf-8', 'replace')}")
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError,
                TypeError) as e:
            return Answer(problem=f"teacher call failed: {type(e).__name__}: {e}")
        msg = {"role": "assistant", "content": m.get("content")}
        if m.get("tool_calls"):
            try:
                msg["tool_calls"] = [{"id": c.get("id") or f"call_{i}",
                                      "name": c["function"]["name"],
                                      "arguments": json.loads(c["function"]["arguments"])}
                                     for i, c in enumerate(m["tool_calls"])]
            except (KeyError, TypeError, ValueError) as e:
                return Answer(problem=f"teacher returned a malformed tool call: {e}")
        return _checked(msg, choice.get("finish_reason") == "length",
                        (got.get("usage") or {}).get("completion_tokens", 0))


class BedrockTeacher(_Remote):
    """A model behind a Bedrock runtime ([teachers.<name>] with api = "bedrock"): boto3's
    bedrock-runtime Converse, credentials from the AWS chain (or the named profile).
    `seed` is not sent: Converse has no seed."""

    def __init__(self, name: str, spec, max_tokens: int, temperature: float = 0.0,
                 json_schema: dict | None = None, seed: int = 0):
        import boto3
        import botocore.config

        self.name, self.spec, self.max_tokens = name, spec, max_tokens
        self.temperature, self.json_schema = temperature, json_schema
        session = boto3.Session(profile_name=spec.profile, region_name=spec.region) \
            if spec.profile else boto3.Session(region_name=spec.region)
        if not session.region_name:
            raise ConfigError(f"teacher '{name}': no AWS region: set region in "
                              f"[teachers.{name}] or AWS_REGION")
        if session.get_credentials() is None:
            raise ConfigError(f"teacher '{name}': no AWS credentials found (environment, "
                              f"~/.aws, or profile in [teachers.{name}])")
        self.client = session.client(
            "bedrock-runtime", endpoint_url=spec.base_url, config=botocore.config.Config(
                read_timeout=spec.timeout_s, max_pool_connections=spec.concurrency,
                retries={"max_attempts": 4, "mode": "standard"}))

    def _call(self, p: PromptRecord) -> Answer:
        import botocore.exceptions

        from afinar.data.chat import converse_conversation

        kw = {"modelId": self.spec.model, **converse_conversation(p.messages, p.tools),
              "inferenceConfig": {"maxTokens": self.max_tokens,
                                  "temperature": self.temperature}}
        if self.json_schema is not None:
            kw["outputConfig"] = {"textFormat": {"type": "json_schema", "structure": {
                "jsonSchema": {"name": "answer", "schema": json.dumps(self.json_schema)}}}}
        try:
            got = self.client.converse(**kw)
            blocks = got["output"]["message"]["content"]
        except botocore.exceptions.ClientError as e:
            err = e.response.get("Error", {})
            return Answer(problem=f"teacher call failed: {err.get('Code')}: "
                          f"{err.get('Message', '')[:300]}")
        except (botocore.exceptions.BotoCoreError, KeyError, TypeError) as e:
            return Answer(problem=f"teacher call failed: {type(e).__name__}: {e}")
        text = "".join(b["text"] for b in blocks if "text" in b)
        msg = {"role": "assistant", "content": text or None}
        calls = [b["toolUse"] for b in blocks if "toolUse" in b]
        if calls:
            msg["tool_calls"] = [{"id": c["toolUseId"], "name": c["name"],
                                  "arguments": c["input"]} for c in calls]
        return _checked(msg, got.get("stopReason") == "max_tokens",
                        (got.get("usage") or {}).get("outputTokens", 0))


def _checked(msg: dict, cut: bool, tokens: int) -> Answer:
    if cut:
        return Answer(problem="cut at max_new_tokens", tokens=tokens)
    if not (msg.get("content") or "").strip() and not msg.get("tool_calls"):
        return Answer(problem="empty", tokens=tokens)
    return Answer(msg, tokens=tokens)


def make_teacher(teacher: str, settings: Settings, max_tokens: int, **kw):
    """An endpoint registered under that name in [teachers], else a model afinar loads.
    kw: temperature, json_schema, seed."""
    if teacher in settings.teachers:
        spec = settings.teachers[teacher]
        kind = BedrockTeacher if spec.api == "bedrock" else EndpointTeacher
        return kind(teacher, spec, max_tokens, **kw)
    return LocalTeacher(teacher, settings, max_tokens, **kw)
