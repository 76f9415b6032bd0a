"""Model invocation logging (Bedrock's PutModelInvocationLoggingConfiguration), off by default.

When a logging configuration is set, every completed runtime call (Converse, ConverseStream,
InvokeModel, InvokeModelWithResponseStream, and OpenAI chat completions) is appended as one
JSON line in Bedrock's invocation-log shape ({schemaType, schemaVersion, timestamp,
accountId, region, requestId, operation, modelId, input: {inputBodyJson, inputTokenCount},
output: {outputBodyJson, outputTokenCount}, requestMetadata}) under
s3://<bucketName>/<keyPrefix>/AWSLogs/<account>/BedrockModelInvocationLogs/<region>/
YYYY/MM/DD/HH/<server>.jsonl, in the local bucket root. A distillation job reads them back
(trainingDataConfig.invocationLogsConfig). With textDataDeliveryEnabled false, the bodies are
left out (metadata only); embedding calls are logged only with embeddingDataDeliveryEnabled.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import threading
import uuid
from pathlib import Path

from afinar.config import Settings
from afinar.errors import InvalidRequest

CONFIG_FILE = "invocation_logging.json"
FLAGS = ("textDataDeliveryEnabled", "imageDataDeliveryEnabled", "embeddingDataDeliveryEnabled",
         "videoDataDeliveryEnabled", "audioDataDeliveryEnabled")


class InvocationLog:
    """The logging configuration (kept in $AFINAR_HOME) and the writer."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.path = settings.home / CONFIG_FILE
        self.lock = threading.Lock()
        self.server = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.config = self._read()

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    # -- the control-plane operations -------------------------------------------------------
    def get(self) -> dict | None:
        return self.config

    def put(self, cfg: dict) -> None:
        """Checks a LoggingConfig and turns logging on. Raises InvalidRequest naming the
        field."""
        from afinar.storage import Storage, StorageError

        if not isinstance(cfg, dict):
            raise InvalidRequest("loggingConfig must be an object")
        if cfg.get("cloudWatchConfig"):
            raise InvalidRequest("loggingConfig.cloudWatchConfig is not supported by afinar "
                                 "(no CloudWatch here): log to s3Config")
        s3 = cfg.get("s3Config")
        if not isinstance(s3, dict) or not s3.get("bucketName"):
            raise InvalidRequest("loggingConfig.s3Config.bucketName is required: afinar "
                                 "writes invocation logs to a bucket")
        try:
            loc = Storage(self.settings).locate(self._uri(s3), "loggingConfig.s3Config")
        except StorageError as e:
            raise InvalidRequest(str(e)) from None
        if loc.remote:
            raise InvalidRequest("loggingConfig.s3Config: invocation logs are written to the "
                                 "local bucket root; with s3_endpoint_url set, remote buckets "
                                 "are not supported for logs yet")
        keep = {"s3Config": {k: s3[k] for k in ("bucketName", "keyPrefix") if s3.get(k)}}
        keep |= {k: bool(cfg[k]) for k in FLAGS if k in cfg}
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(keep), encoding="utf-8")
            self.config = keep

    def delete(self) -> None:
        with self.lock:
            self.path.unlink(missing_ok=True)
            self.config = None

    @staticmethod
    def _uri(s3: dict) -> str:
        prefix = (s3.get("keyPrefix") or "").strip("/")
        return f"s3://{s3['bucketName']}/{prefix}".rstrip("/") + "/"

    # -- writing ---------------------------------------------------------------------------
    def record(self, operation: str, model_id: str, input_body: dict, output_body: dict | None,
               input_tokens: int = 0, output_tokens: int = 0, metadata: dict | None = None,
               embedding: bool = False) -> None:
        cfg = self.config
        if cfg is None or (embedding and not cfg.get("embeddingDataDeliveryEnabled", True)):
            return
        from afinar.storage import Storage

        text = cfg.get("textDataDeliveryEnabled", True)
        now = dt.datetime.now(dt.UTC)
        s = self.settings
        line = {"schemaType": "ModelInvocationLog", "schemaVersion": "1.0",
                "timestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "accountId": s.account_id,
                "region": s.region, "requestId": str(uuid.uuid4()), "operation": operation,
                "modelId": model_id,
                "input": {"inputContentType": "application/json",
                          "inputTokenCount": input_tokens} | (
                    {"inputBodyJson": input_body} if text else {}),
                "output": {"outputContentType": "application/json",
                           "outputTokenCount": output_tokens} | (
                    {"outputBodyJson": output_body} if text and output_body is not None
                    else {})}
        if metadata:
            line["requestMetadata"] = metadata
        loc = Storage(s).locate(self._uri(cfg["s3Config"]) + (
            f"AWSLogs/{s.account_id}/BedrockModelInvocationLogs/{s.region}/"
            f"{now:%Y/%m/%d/%H}/{self.server}.jsonl"), "loggingConfig.s3Config")
        try:
            with self.lock:
                loc.local.parent.mkdir(parents=True, exist_ok=True)
                with open(loc.local, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line, ensure_ascii=False) + "\n")
        except OSError as e:  # a full disk must not fail the call that was answered
            logging.getLogger("afinar.server").warning("invocation log not written: %s", e)


def read_logs(files: list[Path]) -> list[dict]:
    """Every invocation-log record in these files (.jsonl, .json or .json.gz, one JSON object
    per line, as Bedrock delivers them), in order; (file, line) kept for error messages."""
    import gzip

    out = []
    for f in files:
        raw = gzip.decompress(f.read_bytes()) if f.suffix == ".gz" else f.read_bytes()
        for n, line in enumerate(raw.decode("utf-8", "replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                rec = None
            out.append((f, n, rec))
    return out


def matches(metadata: dict | None, flt: dict | None) -> bool:
    """Bedrock's RequestMetadataFilters: equals / notEquals (one key each), andAll, orAll."""
    if not flt:
        return True
    md = metadata or {}
    ok = True
    if "equals" in flt:
        ok &= all(md.get(k) == v for k, v in flt["equals"].items())
    if "notEquals" in flt:
        ok &= all(md.get(k) != v for k, v in flt["notEquals"].items())
    if "andAll" in flt:
        ok &= all(matches(md, f) for f in flt["andAll"])
    if "orAll" in flt:
        ok &= any(matches(md, f) for f in flt["orAll"])
    return ok


def check_filters(flt, field: str = "trainingDataConfig.invocationLogsConfig."
                  "requestMetadataFilters") -> None:
    """Raises InvalidRequest naming the field when a filter is not Bedrock's shape."""
    if flt is None:
        return
    if not isinstance(flt, dict) or not flt:
        raise InvalidRequest(f"{field} must be an object with equals, notEquals, andAll or "
                             f"orAll")
    for k, v in flt.items():
        if k in ("equals", "notEquals"):
            if not isinstance(v, dict) or len(v) != 1 or not all(
                    isinstance(x, str) for x in (*v, *v.values())):
                raise InvalidRequest(f"{field}.{k} must map exactly one key to a string")
        elif k in ("andAll", "orAll"):
            if not isinstance(v, list) or not v:
                raise InvalidRequest(f"{field}.{k} must be a non-empty list of filters")
            for i, f in enumerate(v):
                if not isinstance(f, dict) or set(f) - {"equals", "notEquals"}:
                    raise InvalidRequest(f"{field}.{k}[{i}] takes equals / notEquals only")
                check_filters(f, f"{field}.{k}[{i}]")
        else:
            raise InvalidRequest(f"{field}.{k} is not a filter; use equals, notEquals, "
                                 f"andAll or orAll")
