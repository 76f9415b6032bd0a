"""OpenAI's fine-tuning API (`client.fine_tuning.jobs.*`) over afinar's customization jobs.

A fine-tuning job is a customization job in the same store, queue and worker as Bedrock's (its
name `ftjob-<id>`, its custom model `ft-<id>`), so the Bedrock APIs, the CLI and the console
see it too. The request is translated: `method` supervised -> fine-tuning, dpo -> preference
tuning (`beta`), reinforcement -> GRPO with the request's grader object (eval/graders.py;
python and endpoint graders, which run code on the server, are refused); `n_epochs`,
`batch_size`, `learning_rate_multiplier` ("auto" or a value; the values chosen are reported
once the data is loaded) and `seed`. The model is served as
`ft:<base>:afinar:<suffix>:<id>` and each kept checkpoint of a LoRA run as
`...:<id>:ckpt-step-<N>`. Statuses: queued (waiting for a worker), validating_files,
running, succeeded, failed, cancelled, and paused (stopped by pause, resumable). Events are
the job's messages plus one `metrics` event per training step; `result_files` holds a CSV of
the step metrics (OpenAI's columns) once the job succeeds.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time
from pathlib import Path

from sqlalchemy import select

from afinar import db
from afinar.errors import AfinarError, InvalidRequest, NotFound
from afinar.jobs.arns import short_id
from afinar.jobs.files import FileStore

ROLE = "arn:aws:iam::000000000000:role/afinar-openai"
BUCKET_OUT = "afinar-fine-tuning"  # the jobs' Bedrock-layout outputs
ORG = "afinar"
CREATE_FIELDS = {"model", "training_file", "validation_file", "hyperparameters", "method",
                 "seed", "suffix", "metadata", "integrations"}
METHOD_TYPE = {"supervised": "sft", "dpo": "dpo", "reinforcement": "rft"}
FILE_KINDS = {"sft": {"supervised"}, "dpo": {"preference"}, "rft": {"prompts", "supervised"}}
HP = {"n_epochs": ("epochs", int), "batch_size": ("batch_size", int),
      "learning_rate_multiplier": ("learning_rate_multiplier", float),
      "beta": ("beta", float), "eval_interval": ("eval_every", int)}
HP_FOR = {"sft": {"n_epochs", "batch_size", "learning_rate_multiplier"},
          "dpo": {"n_epochs", "batch_size", "learning_rate_multiplier", "beta"},
          "rft": {"n_epochs", "batch_size", "learning_rate_multiplier", "eval_interval",
                  "eval_samples", "compute_multiplier", "reasoning_effort"}}
PAUSED = "openai_paused"  # a marker in the job folder: stopped by pause, not by cancel


class BadParam(InvalidRequest):
    """A request error about one parameter (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.param = param


def _ts(t) -> int | None:
    return int(db.as_utc(t).timestamp()) if t is not None else None


class FineTuning:
    def __init__(self, service):
        self.svc = service  # JobService
        self.files = FileStore(service.settings)

    # -- create ------------------------------------------------------------------------------
    def create(self, body: dict) -> dict:
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        if unknown := sorted(set(body) - CREATE_FIELDS):
            raise BadParam(f"Unrecognized request argument supplied: {unknown[0]}", unknown[0])
        if body.get("integrations"):
            raise BadParam("integrations (Weights & Biases) are not supported by afinar; "
                                 "remove them", "integrations")
        for f in ("model", "training_file"):
            if not isinstance(body.get(f), str) or not body[f]:
                raise BadParam(f"missing required parameter: '{f}'", f)
        method = body.get("method") or {"type": "supervised"}
        mtype = method.get("type") if isinstance(method, dict) else None
        if mtype not in METHOD_TYPE:
            raise BadParam("method.type must be supervised, dpo or reinforcement", "method.type")
        kind = METHOD_TYPE[mtype]
        spec = method.get(mtype) or {}
        hp = dict(spec.get("hyperparameters") or {})
        if body.get("hyperparameters"):
            if mtype != "supervised" or hp:
                raise BadParam("give hyperparameters in method.<type>.hyperparameters "
                                     "(the top-level hyperparameters are the legacy form of "
                                     "supervised ones)", "hyperparameters")
            hp = dict(body["hyperparameters"])
        values = {"type": kind} | self._hyperparameters(hp, kind, mtype)
        if body.get("seed") is not None:
            if isinstance(body["seed"], bool) or not isinstance(body["seed"], int) or \
                    body["seed"] < 0:
                raise BadParam("seed must be a non-negative integer", "seed")
            values["seed"] = body["seed"]
        suffix = body.get("suffix") or ""
        if not isinstance(suffix, str) or len(suffix) > 64 or not re.fullmatch(
                r"[A-Za-z0-9_-]*", suffix):
            raise BadParam("suffix must be at most 64 letters, digits, '-' or '_'", "suffix")
        meta = body.get("metadata") or {}
        if not isinstance(meta, dict) or len(meta) > 16 or not all(
                isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512
                for k, v in meta.items()):
            raise BadParam("metadata: at most 16 string keys (64 characters) with string "
                                 "values (512 characters)", "metadata")
        train = self._file(body["training_file"], "training_file", kind)
        valid = self._file(body["validation_file"], "validation_file", kind) \
            if body.get("validation_file") else None
        if kind == "rft":
            values["grader"] = self._grader(spec.get("grader"))
        job_id = short_id()
        ft_name = f"ft:{body['model']}:{ORG}:{suffix}:{job_id}"
        req = {"jobName": f"ftjob-{job_id}", "customModelName": f"ft-{job_id}",
               "roleArn": ROLE, "baseModelIdentifier": body["model"],
               "customizationType": "REINFORCEMENT_FINE_TUNING" if kind == "rft"
               else "FINE_TUNING",
               "trainingDataConfig": {"s3Uri": train["_uri"]},
               "outputDataConfig": {"s3Uri": f"s3://{BUCKET_OUT}/{job_id}/"},
               "_openai": {"fine_tuned_model": ft_name, "model": body["model"],
                           "training_file": train["id"],
                           "validation_file": valid["id"] if valid else None,
                           "suffix": suffix or None, "metadata": meta or None,
                           "method": {"type": mtype, mtype: self._echo(spec, hp, mtype)},
                           "seed": values.get("seed", 42)}}
        if valid:
            req["validationDataConfig"] = {"validators": [{"s3Uri": valid["_uri"]}]}
        try:
            self.svc.create_job(req, internal=values, job_id=job_id)
        except InvalidRequest as e:
            param = "model" if "baseModelIdentifier" in e.message else None
            raise BadParam(e.message.replace("baseModelIdentifier", "model"), param) from None
        return self.get(f"ftjob-{job_id}")

    @staticmethod
    def _echo(spec: dict, hp: dict, mtype: str) -> dict:
        out = {"hyperparameters": hp}
        if mtype == "reinforcement":
            out["grader"] = spec.get("grader")
        return out

    @staticmethod
    def _hyperparameters(hp: dict, kind: str, mtype: str) -> dict:
        out = {}
        for k, v in hp.items():
            param = f"method.{mtype}.hyperparameters.{k}"
            if k not in HP_FOR[kind]:
                raise BadParam(f"{param} is not a hyperparameter of {mtype} fine-tuning; "
                               f"valid: {', '.join(sorted(HP_FOR[kind]))}", param)
            if v == "auto" or v is None:
                continue
            if k in ("eval_samples", "compute_multiplier") or (
                    k == "reasoning_effort" and v != "default"):
                raise BadParam(f"{param}: afinar supports only \"auto\" here", param)
            if k == "reasoning_effort":
                continue
            field, typ = HP[k]
            if isinstance(v, bool) or not isinstance(v, int | float) or (
                    typ is int and int(v) != v):
                raise BadParam(f"{param} must be \"auto\" or a number", param)
            out[field] = typ(v)
        from afinar.training.config import parse_train_config
        try:
            parse_train_config({"type": kind, "train_data": "x", **out}, source="hyperparameters")
        except AfinarError as e:
            raise BadParam(e.message, f"method.{mtype}.hyperparameters") from None
        return out

    def _file(self, fid: str, param: str, kind: str) -> dict:
        try:
            m = self.files.internal(fid)
        except NotFound:
            raise BadParam(f"invalid {param}: no file '{str(fid)[:60]}'", param) from None
        if m["purpose"] != "fine-tune":
            raise BadParam(f"{param} {fid} has purpose '{m['purpose']}'; upload it with "
                                 f"purpose 'fine-tune'", param)
        want = FILE_KINDS[kind]
        if m.get("_kind") not in want:
            what = {"sft": "supervised chat records", "dpo": "preference pairs",
                    "rft": "prompts (chat records ending with a user turn)"}[kind]
            raise BadParam(f"{param} {fid} holds {m.get('_kind')} data; this method "
                                 f"trains on {what}", param)
        return m

    def _grader(self, grader) -> str:
        """The request's grader object, checked, saved where the worker reads it."""
        from afinar.eval.graders import GraderError, build_grader

        if not isinstance(grader, dict):
            raise BadParam("method.reinforcement.grader: a grader object is required",
                           "method.reinforcement.grader")
        try:
            build_grader(grader, allow_code=False)
        except GraderError as e:
            raise BadParam(f"method.reinforcement.grader: {e.message}",
                           "method.reinforcement.grader") from None
        d = self.svc.settings.home / "files" / "graders"
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps(grader, sort_keys=True)
        p = d / f"{short_id(text)}.json"
        p.write_text(text, encoding="utf-8")
        return str(p)

    # -- read ---------------------------------------------------------------------------------
    def _row(self, ftjob: str):
        if not isinstance(ftjob, str) or not ftjob.startswith("ftjob-"):
            raise NotFound(f"No such fine-tuning job: {str(ftjob)[:60]}")
        with self.svc.engine.connect() as c:
            row = c.execute(select(db.jobs).where(db.jobs.c.name == ftjob)).first()
        if row is None or "_openai" not in row.request:
            raise NotFound(f"No such fine-tuning job: {ftjob}")
        return row

    def _jobdir(self, row) -> Path:
        return self.svc.settings.jobs_dir / row.id

    def _status(self, row) -> str:
        if row.status == "Completed":
            return "succeeded"
        if row.status == "Failed":
            return "failed"
        if row.status in ("Stopped", "Stopping"):
            if not (self._jobdir(row) / PAUSED).exists():
                return "cancelled"
            return "paused" if row.status == "Stopped" else "running"  # saving its checkpoint
        phases = row.status_details or {}
        if (phases.get("validationDetails") or {}).get("status") == "NotStarted":
            return "queued"
        if (phases.get("validationDetails") or {}).get("status") != "Completed":
            return "validating_files"
        return "running"

    def get(self, ftjob: str) -> dict:
        return self._job(self._row(ftjob))

    def _job(self, row) -> dict:
        oa = row.request["_openai"]
        status = self._status(row)
        inputs = self._inputs(row)
        cfg = (inputs or {}).get("config") or {}
        method = json.loads(json.dumps(oa["method"]))
        hp = method[method["type"]]["hyperparameters"]
        if cfg:  # the values chosen: "auto" resolved once the data was loaded
            hp.update(n_epochs=cfg.get("epochs"), batch_size=cfg.get("batch_size"),
                      learning_rate_multiplier=cfg.get("learning_rate_multiplier", 1.0))
            if method["type"] == "dpo":
                hp["beta"] = cfg.get("beta")
        else:
            for k in ("n_epochs", "batch_size", "learning_rate_multiplier"):
                hp.setdefault(k, "auto")
        trained = None
        if status == "succeeded" and inputs:
            trained = int((inputs.get("train") or {}).get("tokens", 0) * (cfg.get("epochs") or 1))
        error = None
        if status == "failed":
            msg = row.failure_message or "the job failed"
            error = {"code": "invalid_training_file" if "data" in msg else "job_failed",
                     "message": msg, "param": "training_file" if "data" in msg else None}
        return {"object": "fine_tuning.job", "id": row.name, "model": oa["model"],
                "created_at": _ts(row.created_at),
                "finished_at": _ts(row.end_time) if status in ("succeeded", "failed",
                                                             "cancelled") else None,
                "fine_tuned_model": oa["fine_tuned_model"] if status == "succeeded" else None,
                "organization_id": ORG, "result_files": self._result_files(row, status),
                "status": status, "validation_file": oa["validation_file"],
                "training_file": oa["training_file"], "hyperparameters": {
                    k: hp.get(k, "auto") for k in ("n_epochs", "batch_size",
                                                   "learning_rate_multiplier")},
                "trained_tokens": trained, "error": error, "seed": oa["seed"],
                "estimated_finish": None, "integrations": [], "metadata": oa["metadata"],
                "method": method, "user_provided_suffix": oa["suffix"]}

    def _inputs(self, row) -> dict | None:
        p = self._jobdir(row) / "run" / "inputs.json"
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def list(self, after: str | None = None, limit: int = 20,
             metadata: dict | None = None) -> dict:
        if not 1 <= limit <= 100:
            raise BadParam("limit must be from 1 to 100", "limit")
        with self.svc.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(db.jobs.c.name.like("ftjob-%")).order_by(
                db.jobs.c.created_at.desc(), db.jobs.c.id.desc())).all()
        rows = [r for r in rows if "_openai" in r.request and all(
            (r.request["_openai"].get("metadata") or {}).get(k) == v
            for k, v in (metadata or {}).items())]
        if after:
            names = [r.name for r in rows]
            rows = rows[names.index(after) + 1:] if after in names else []
        page = rows[:limit]
        return {"object": "list", "data": [self._job(r) for r in page],
                "has_more": len(rows) > limit}

    # -- control ------------------------------------------------------------------------------
    def cancel(self, ftjob: str) -> dict:
        row = self._row(ftjob)
        if row.status not in ("InProgress", "Stopping"):
            raise InvalidRequest(f"job {ftjob} is {self._status(row)}; only a queued or "
                                 f"running job can be cancelled")
        (self._jobdir(row) / PAUSED).unlink(missing_ok=True)
        self.svc.stop_row(row, "running")
        return self.get(ftjob)

    def pause(self, ftjob: str) -> dict:
        row = self._row(ftjob)
        if row.status != "InProgress":
            raise InvalidRequest(f"job {ftjob} is {self._status(row)}; only a running job can "
                                 f"be paused")
        self._jobdir(row).mkdir(parents=True, exist_ok=True)
        (self._jobdir(row) / PAUSED).write_text(str(time.time()), encoding="utf-8")
        self.svc.stop_row(row, "running")
        return self.get(ftjob)

    def resume(self, ftjob: str) -> dict:
        row = self._row(ftjob)
        if self._status(row) != "paused" or row.status != "Stopped":
            raise InvalidRequest(f"job {ftjob} is {self._status(row)}; only a paused job "
                                 f"can be resumed")
        (self._jobdir(row) / PAUSED).unlink(missing_ok=True)
        self.svc.resume_job(row.arn)
        return self.get(ftjob)

    # -- events, checkpoints, results ---------------------------------------------------------
    def _metrics(self, row) -> list[dict]:
        p = self._jobdir(row) / "run" / "training_artifacts" / "training_log.jsonl"
        try:
            lines = p.read_text(encoding="utf-8").splitlines()
        except OSError:
            return []
        out = []
        for x in lines:
            try:
                out.append(json.loads(x))
            except ValueError:
                break  # a line being written
        return out

    def events(self, ftjob: str, after: str | None = None, limit: int = 20) -> dict:
        """Newest first: the job's messages and a metrics event per training step."""
        row = self._row(ftjob)
        if not 1 <= limit <= 100:
            raise BadParam("limit must be from 1 to 100", "limit")
        with self.svc.engine.connect() as c:
            evs = c.execute(select(db.events).where(db.events.c.job_id == row.id).order_by(
                db.events.c.id)).all()
        out = [{"object": "fine_tuning.job.event", "id": f"ftevent-{row.id}-m{e.id}",
                "created_at": _ts(e.ts), "level": {"WARN": "warn", "ERROR": "error"}.get(
                    e.level, "info"), "message": e.message, "type": "message", "data": {}}
               for e in evs]
        start = out[0]["created_at"] if out else int(time.time())
        for m in self._metrics(row):
            if m.get("kind") != "train":
                continue
            data = {"step": m["step"], "train_loss": m.get("loss"),
                    "train_mean_token_accuracy": m.get("token_accuracy")}
            data |= {k: m[k] for k in ("mean_reward", "reward_accuracy", "reward_margin")
                     if k in m}
            out.append({"object": "fine_tuning.job.event",
                        "id": f"ftevent-{row.id}-s{m['step']:08d}",
                        "created_at": int(m.get("time", start)), "level": "info",
                        "message": f"Step {m['step']}: training loss={m.get('loss', 0):.4f}",
                        "type": "metrics", "data": data})
        out.sort(key=lambda e: (e["created_at"], e["id"]), reverse=True)
        if after:
            ids = [e["id"] for e in out]
            out = out[ids.index(after) + 1:] if after in ids else []
        return {"object": "list", "data": out[:limit], "has_more": len(out) > limit}

    def checkpoints(self, ftjob: str, after: str | None = None, limit: int = 10) -> dict:
        from afinar.models.registry import list_custom_models

        row = self._row(ftjob)
        if not 1 <= limit <= 100:
            raise BadParam("limit must be from 1 to 100", "limit")
        log = self._metrics(row)
        steps = {m["step"]: m for m in log if m.get("kind") == "train"}
        valid = {m["step"]: m for m in log if m.get("kind") == "validation"}
        recs = sorted((r for r in list_custom_models(self.svc.settings)
                       if r.get("checkpoint_of") == row.output_model_name),
                      key=lambda r: -r["step"])
        out = []
        for r in recs:
            # the log counts training steps from 0; a checkpoint after N steps is step N
            s, v = steps.get(r["step"] - 1, {}), valid.get(r["step"], {})
            metrics = {"step": r["step"], "train_loss": s.get("loss"),
                       "train_mean_token_accuracy": s.get("token_accuracy"),
                       "valid_loss": v.get("loss"),
                       "valid_mean_token_accuracy": v.get("token_accuracy")}
            out.append({"object": "fine_tuning.job.checkpoint",
                        "id": f"ftckpt-{row.id}-{r['step']}",
                        "created_at": _ts(row.end_time) or _ts(row.updated_at),
                        "fine_tuned_model_checkpoint": r["openai_model"],
                        "fine_tuning_job_id": row.name, "step_number": r["step"],
                        "metrics": {k: v for k, v in metrics.items() if v is not None}})
        if after:
            ids = [c["id"] for c in out]
            out = out[ids.index(after) + 1:] if after in ids else []
        return {"object": "list", "data": out[:limit], "has_more": len(out) > limit,
                "first_id": out[0]["id"] if out else None,
                "last_id": out[:limit][-1]["id"] if out else None}

    def _result_files(self, row, status: str) -> list[str]:
        """A succeeded job's step metrics as a CSV file (made once, on first read)."""
        if status != "succeeded":
            return []
        for m in self.files.all():
            if m.get("_job") == row.name:
                return [m["id"]]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["step", "train_loss", "train_accuracy", "valid_loss",
                    "valid_mean_token_accuracy"])
        log = self._metrics(row)
        valid = {m["step"]: m for m in log if m.get("kind") == "validation"}
        for m in log:
            if m.get("kind") == "train":
                v = valid.get(m["step"], {})
                w.writerow([m["step"], m.get("loss"), m.get("token_accuracy"),
                            v.get("loss", ""), v.get("token_accuracy", "")])
        meta = self.files.create("step_metrics.csv", buf.getvalue().encode(),
                                 "fine-tune-results", extra={"_job": row.name})
        return [meta["id"]]

    # -- models -------------------------------------------------------------------------------
    def delete_model(self, model: str) -> dict:
        """DELETE /v1/models/{ft:...}: a fine-tuned model (and its checkpoint models)."""
        from afinar.models.registry import custom_model_record, list_custom_models

        rec = custom_model_record(self.svc.settings, model) if model.startswith("ft:") else None
        if rec is None:
            raise NotFound(f"The model '{model[:200]}' does not exist or is not a fine-tuned "
                           f"model")
        self.svc.delete_custom_model(rec["name"])
        for r in list_custom_models(self.svc.settings):
            if r.get("checkpoint_of") == rec["name"]:
                self.svc.delete_custom_model(r["name"])
        return {"id": model, "object": "model", "deleted": True}

