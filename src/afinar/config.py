"""One settings object: defaults < `$AFINAR_HOME/afinar.toml` < `AFINAR_<SETTING>` env vars
< explicit overrides (command-line flags)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, ValidationError, model_validator

from afinar.errors import ConfigError


def default_home() -> Path:
    return Path(os.environ.get("AFINAR_HOME", "~/.afinar")).expanduser()


class TeacherEndpoint(BaseModel):
    """A model outside afinar that a distillation or synthesis job may use as its teacher: an
    OpenAI-compatible chat endpoint (api "openai", the default) or a Bedrock runtime (api
    "bedrock": Converse through boto3, with the usual AWS credential chain)."""

    model_config = {"extra": "forbid"}
    api: Literal["openai", "bedrock"] = Field(
        "openai", description="openai: POST {base_url}/chat/completions; bedrock: Converse.")
    base_url: str | None = Field(
        None, pattern=r"^https?://", description="openai: e.g. https://host/v1 (required); "
        "bedrock: the runtime endpoint (default: the region's AWS endpoint).")
    model: str = Field(..., description="The model name (openai) or modelId (bedrock) the "
                       "endpoint expects.")
    api_key_env: str | None = Field(None, description="openai: environment variable holding "
                                    "the key.")
    region: str | None = Field(None, description="bedrock: the AWS region (default: "
                               "AWS_REGION / the AWS config).")
    profile: str | None = Field(None, description="bedrock: the AWS profile (default: the "
                                "credential chain).")
    concurrency: int = Field(8, ge=1, le=256, description="Requests in flight at once.")
    timeout_s: float = Field(300, gt=0, description="Seconds one answer may take.")

    @model_validator(mode="after")
    def _fields_of_the_api(self) -> TeacherEndpoint:
        if self.api == "openai" and not self.base_url:
            raise ValueError("an openai teacher needs base_url (e.g. https://host/v1)")
        if self.api == "openai" and (self.region or self.profile):
            raise ValueError("region and profile are for api = \"bedrock\"")
        if self.api == "bedrock" and self.api_key_env:
            raise ValueError("api_key_env is for api = \"openai\"; a bedrock teacher uses "
                             "the AWS credential chain (or profile)")
        return self


class Settings(BaseModel):
    """afinar's settings. Each can be set in afinar.toml, as AFINAR_<NAME>, or by a flag."""

    home: Path = Field(default_factory=default_home, description="Home directory for all state.")
    cache_dir: Path | None = Field(
        None, description="Where converted models are cached (default $AFINAR_HOME/cache).")
    s3_root: Path | None = Field(
        None, description="Local bucket root for s3:// URIs (default $AFINAR_HOME/s3).")
    s3_endpoint_url: str | None = Field(None, description="Real S3 / S3-compatible endpoint.")
    allowed_roots: list[Path] = Field(default_factory=list,
                                      description="Local paths that jobs may read.")
    host: str = Field("127.0.0.1", description="Address the server binds.")
    allowed_hosts: list[str] = Field(
        default_factory=list, description="Host names the server answers to besides its bound "
        "address and loopback names (a reverse proxy's name); other Host headers are refused "
        "(DNS rebinding).")
    max_request_mb: int = Field(16, ge=1, le=1024, description="Largest API request body (MB).")
    max_upload_mb: int = Field(1024, ge=1, le=1 << 20,
                               description="Largest upload or data check body (MB).")
    port: int = Field(8080, ge=1, le=65535, description="Port the server binds.")
    max_concurrent_jobs: int = Field(1, ge=1, description="Jobs that may run at once.")
    executor: Literal["local", "ray"] = Field(
        "local", description="Where job workers run: local subprocesses, or a Ray cluster "
        "(ray_address) through Ray's job submission API.")
    ray_address: str = Field("http://127.0.0.1:8265", description="The Ray cluster's "
                             "dashboard address (executor = \"ray\").")
    ray_python: str | None = Field(None, description="The Python interpreter, with afinar "
                                   "installed, that runs workers on the Ray nodes (default: "
                                   "the server's own).")
    job_limits: dict[Literal["customization", "batch-inference", "evaluation", "ingestion"],
                     Annotated[int, Field(ge=1)]] = Field(
        default_factory=dict, description="Jobs of one kind that may run at once, within "
        "max_concurrent_jobs (e.g. {customization = 1, batch-inference = 2}); ingestion jobs "
        "run beside the others, one at a time unless ingestion is set here.")
    serve_max_batch: int = Field(32, ge=1, le=256, description="Requests generated together "
                                 "in one batch by the serving engine.")
    serve_max_queue: int = Field(256, ge=1, description="Requests that may wait for the engine; "
                                 "more get 429 / ThrottlingException.")
    serve_memory_mb: int = Field(8192, ge=256, description="Memory budget for loaded base "
                                 "models; the least recently used is unloaded beyond it.")
    serve_backend: Literal["embedded", "vllm"] = Field(
        "embedded", description="Inference engine behind every route: embedded (in the server "
        "process) or vllm (vLLM OpenAI servers afinar starts and supervises on loopback).")
    vllm_command: str | None = Field(
        None, description="How vLLM's OpenAI server starts (serve_backend vllm), e.g. "
        "\"/opt/vllm/bin/python -m vllm.entrypoints.openai.api_server\"; afinar adds --model, "
        "--host, --port and the LoRA flags.")
    vllm_args: list[str] = Field(default_factory=list, description="Extra arguments for vLLM "
                                 "(e.g. [\"--max-model-len\", \"4096\"]).")
    database_url: str | None = Field(None, description="Job store URL (default SQLite in home).")
    region: str = Field("us-east-1", description="Region written into ARNs.")
    account_id: str = Field("000000000000", pattern=r"^[0-9]{12}$",
                            description="12-digit account id written into ARNs.")
    access_keys: dict[str, str] = Field(
        default_factory=dict, description="Access key id -> secret key; boto3 requests signed "
        "with one of them (SigV4) are accepted when the server is not on loopback.")
    require_auth: bool = Field(False, description="Require authentication even on loopback.")
    api_keys: list[str] = Field(default_factory=list,
                                description="Bearer API keys accepted when not on loopback.")
    default_model: str = Field("smollm2-135m-instruct", description="Base model used by default.")
    threads: int | None = Field(None, ge=1, description="Torch CPU threads (default: all cores).")
    model_aliases: dict[str, str] = Field(default_factory=dict,
                                          description="Any identifier -> a model in the registry.")
    graders: dict[str, str] = Field(
        default_factory=dict, description="Graders jobs may name (a Bedrock RFT job's "
        "lambdaGrader.lambdaArn, or a name) -> a grader: exact, json, fields, json_valid, a "
        ".json grader object file or a .py file with grade(sample, item). Code runs in the "
        "job's worker: register only graders you trust.")
    teachers: dict[str, TeacherEndpoint] = Field(
        default_factory=dict, description="Distillation teachers outside afinar: a name "
        "(what --teacher or a job's teacherModelIdentifier gives) -> an OpenAI-compatible "
        "endpoint {base_url, model, api_key_env, concurrency, timeout_s}.")

    @property
    def models_cache(self) -> Path:
        return (self.cache_dir or self.home / "cache") / "models"

    @property
    def custom_models_dir(self) -> Path:
        return self.home / "custom-models"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"

    @property
    def jobs_dir(self) -> Path:
        return self.home / "jobs"

    @property
    def bucket_root(self) -> Path:
        return self.s3_root or self.home / "s3"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'afinar.db'}"


_LIST_FIELDS = {"allowed_roots", "api_keys", "allowed_hosts"}
_SPLIT_FIELDS = {"vllm_args"}  # AFINAR_VLLM_ARGS="--max-model-len 4096"


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Build settings from the config file, the environment and `overrides` (in that order)."""
    home = Path(os.environ.get("AFINAR_HOME", "~/.afinar")).expanduser()
    if overrides and overrides.get("home"):
        home = Path(overrides["home"]).expanduser()
    values: dict[str, Any] = {"home": home}
    cfg = home / "afinar.toml"
    if cfg.exists():
        try:
            data = tomllib.loads(cfg.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"{cfg}: invalid TOML: {e}",
                              hint="fix the syntax or remove the file") from e
        unknown = set(data) - set(Settings.model_fields)
        if unknown:
            raise ConfigError(f"{cfg}: unknown setting(s) {sorted(unknown)}",
                              hint=f"known settings: {sorted(Settings.model_fields)}")
        values.update(data)
    for name in Settings.model_fields:
        env = os.environ.get(f"AFINAR_{name.upper()}")
        if env is None or name in ("home", "model_aliases", "access_keys", "graders", "teachers"):
            continue
        if name in _SPLIT_FIELDS:
            import shlex
            values[name] = shlex.split(env)
        else:
            values[name] = [p for p in env.split(os.pathsep) if p] if name in _LIST_FIELDS \
                else env
    for k, v in (overrides or {}).items():
        if v is not None:
            values[k] = v
    try:
        return Settings(**values)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"setting '{field}': {err['msg']} (got {err.get('input')!r})",
                          hint=f"set it in {cfg} or AFINAR_{field.upper()}") from e
