"""The customization-job service: Bedrock's control-plane operations over afinar's jobs and
models, with their rules (idempotency by client token, name conflicts, the queue quota, deletes).
The HTTP layer only translates: requests arrive as botocore shapes' dicts, errors leave as typed
errors (afinar/errors.py) that serve/errors.py maps to Bedrock's exceptions.

A job's life: created InProgress with every phase NotStarted, queued; a worker subprocess runs
validation -> data processing -> training and writes its progress to the store; it ends
Completed (a custom model is registered), Failed (with a failureMessage) or Stopped. The server
process never imports torch: everything heavy happens in the worker. Methods take and return the
dicts of botocore's shapes.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

from sqlalchemy import and_, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from afinar import db
from afinar.config import Settings
from afinar.errors import AfinarError, Conflict, InvalidRequest, NotFound, QuotaExceeded
from afinar.jobs.arns import Arns, short_id, slug
from afinar.jobs.scheduler import MAX_QUEUED, Scheduler
from afinar.jobs.states import ACTIVE, PHASES
from afinar.jobs.store import add_event, finish, reopen, set_fields
from afinar.models.ids import (
    bedrock_model_id,
    builtin_bedrock_id,
    canonical,
    custom_model_arn,
    kind_of,
)
from afinar.models.registry import (
    BUILTIN_MODELS,
    NAME_RULE,
    available_identifiers,
    custom_model_record,
    list_custom_models,
    valid_name,
)
from afinar.storage import Storage, StorageError

DEFAULT_PAGE = 100
CUSTOMIZATION = "customization"  # the jobs table's kind for model customization jobs
SUPPORTED_TYPES = ("FINE_TUNING", "CONTINUED_PRE_TRAINING", "REINFORCEMENT_FINE_TUNING",
                   "DISTILLATION")
RFT = "REINFORCEMENT_FINE_TUNING"
DISTILLATION = "DISTILLATION"
TEACHER = "customizationConfig.distillationConfig.teacherModelConfig"
LOGS = "trainingDataConfig.invocationLogsConfig"
RFT_GRADER = "customizationConfig.rftConfig.graderConfig.lambdaGrader.lambdaArn"


def rft_settings(req: dict, settings: Settings) -> dict:
    """A REINFORCEMENT_FINE_TUNING request's training settings: type rft, the grader
    registered under its lambdaGrader ARN, rftConfig.hyperParameters under our names.
    Raises InvalidRequest naming the field."""
    from afinar.training.config import RFT_NAMES

    rc = (req.get("customizationConfig") or {}).get("rftConfig")
    if not isinstance(rc, dict):
        raise InvalidRequest(f"customizationType {RFT} needs customizationConfig.rftConfig "
                             f"with graderConfig.lambdaGrader.lambdaArn")
    arn = ((rc.get("graderConfig") or {}).get("lambdaGrader") or {}).get("lambdaArn")
    if not arn:
        raise InvalidRequest(f"missing required field '{RFT_GRADER}'")
    if arn not in settings.graders:
        raise InvalidRequest(
            f"{RFT_GRADER}: no grader is registered for {arn[:200]}. afinar runs graders "
            f"itself: add it to afinar.toml, e.g. [graders] \"{arn[:200]}\" = "
            f"\"/path/grader.py\" (a file with grade(sample, item)), a .json grader object, "
            f"or exact / json / fields / json_valid")
    hp = dict(rc.get("hyperParameters") or {})
    if hp.pop("reasoningEffort", None):
        raise InvalidRequest("customizationConfig.rftConfig.hyperParameters.reasoningEffort "
                             "is not supported by afinar (its models have no reasoning "
                             "setting): remove it")
    unknown = sorted(set(hp) - set(RFT_NAMES))
    if unknown:
        raise InvalidRequest(f"customizationConfig.rftConfig.hyperParameters.{unknown[0]} is "
                             f"not a hyperparameter; valid: {', '.join(sorted(RFT_NAMES))}")
    return {"type": "rft", "grader": settings.graders[arn],
            **{RFT_NAMES[k]: v for k, v in hp.items() if v is not None}}


def distillation_settings(req: dict, teacher: str) -> dict:
    """A DISTILLATION request's training settings: type distill, the teacher (resolved by the
    caller), the longest teacher answer, usePromptResponse. Raises InvalidRequest naming the
    field."""
    tc = (((req.get("customizationConfig") or {}).get("distillationConfig") or {})
          .get("teacherModelConfig") or {})
    out = {"type": "distill", "teacher": teacher}
    n = tc.get("maxResponseLengthForInference")
    if n is not None:
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 32768:
            raise InvalidRequest(f"{TEACHER}.maxResponseLengthForInference must be an integer "
                                 f"from 1 to 32768, got {n!r}")
        out["max_new_tokens"] = n
    logs = req["trainingDataConfig"].get("invocationLogsConfig")
    if logs and logs.get("usePromptResponse"):
        out["use_prompt_response"] = True
    return out


def bedrock_id(registry_id: str) -> str:
    """Bedrock model ids are provider.model (`huggingfacetb.smollm2-135m-instruct`);
    GetFoundationModel's pattern requires the dot."""
    return builtin_bedrock_id(registry_id)


class JobService:
    """The operations behind the routes. Methods take and return the botocore shapes' dicts."""

    def __init__(self, settings: Settings, engine: Engine | None = None):
        self.settings = settings
        settings.home.mkdir(parents=True, exist_ok=True)
        self.engine = engine or db.connect(settings.db_url)
        self.arns = Arns(settings)
        self.storage = Storage(settings)
        self.scheduler: Scheduler | None = None
        from afinar.inference.invocation_log import InvocationLog
        from afinar.jobs.evaluations import EvaluationJobs
        from afinar.jobs.invocations import InvocationJobs
        self.invocations = InvocationJobs(self)
        self.evaluations = EvaluationJobs(self)
        self.invocation_log = InvocationLog(settings)  # off until configured
        from afinar.jobs.openai_ft import FineTuning
        self.fine_tuning = FineTuning(self)  # OpenAI's fine-tuning API over these jobs

    # -- model identifiers ---------------------------------------------------------------
    def resolve_base(self, identifier: str, hyperparameters: dict | None = None
                     ) -> tuple[str, str, str, str]:
        """(what the worker trains on, base model id for ARNs, base model ARN, lineage root).
        Takes every id afinar lists (models/ids.py): registry ids and their Bedrock form,
        aliases, custom model names, ARNs and ft: ids. An encoder base trains a classifier
        only (hyperParameters type classify)."""
        ident = canonical(identifier, self.settings)
        if kind_of(ident, self.settings) == "encoder" and \
                str((hyperparameters or {}).get("type", "")) != "classify":
            raise InvalidRequest(
                f"baseModelIdentifier '{identifier[:200]}' is an embedding (encoder) model: it "
                f"trains a classifier only",
                hint='set hyperParameters {"type": "classify"} with {"text", "label"} data, or '
                     'use a generative base model')
        if ident in self.settings.model_aliases:
            target = self.settings.model_aliases[ident]
            return target, slug(ident), self.arns.foundation(bedrock_model_id(ident)), target
        if ident in BUILTIN_MODELS:
            return ident, ident, self.arns.foundation(bedrock_id(ident)), ident
        rec = self._custom_record(ident)
        if rec is not None:
            if rec.get("model_status", "Active") != "Active":
                raise InvalidRequest(f"baseModelIdentifier: custom model '{rec['name']}' is not "
                                     f"Active")
            return rec["name"], slug(rec.get("base_model_id") or rec["name"]), \
                self._model_arn(rec), rec["name"]
        raise InvalidRequest(f"baseModelIdentifier '{identifier}' is not a known model; available: "
                             f"{', '.join(available_identifiers(self.settings)) or 'none'}. Map "
                             f"other ids to a local model in the [model_aliases] table of "
                             f"afinar.toml")

    def _custom_record(self, ident: str) -> dict | None:
        ident = canonical(ident, self.settings)
        if ident.startswith("arn:"):
            return None
        try:
            return custom_model_record(self.settings, ident)
        except (OSError, ValueError):
            return None

    def _model_arn(self, rec: dict) -> str:
        return custom_model_arn(self.settings, rec)

    # -- CreateModelCustomizationJob -----------------------------------------------------
    def create_job(self, req: dict, internal: dict | None = None,
                   job_id: str | None = None) -> dict:
        """`internal`: training settings set by afinar's own callers (the OpenAI fine-tuning
        API: type, grader, ...), kept in the request as `_internal` for the worker; never
        from a client (the Bedrock parser refuses unknown fields, and here fields starting
        with '_' come only with `internal`)."""
        if internal is None and (private := [k for k in req if k.startswith("_")]):
            raise InvalidRequest(f"unknown field '{private[0][:40]}' in the request")
        token = req.get("clientRequestToken")
        if (done := self.by_token(CUSTOMIZATION, token, req)) is not None:
            return done
        ctype = req.get("customizationType", "FINE_TUNING")
        if ctype not in SUPPORTED_TYPES:
            raise InvalidRequest(f"customizationType {ctype} is not supported; use one of "
                             f"{', '.join(SUPPORTED_TYPES)}")
        unsupported = [k for k in ("vpcConfig", "customModelKmsKeyId") if req.get(k)]
        if unsupported:
            raise InvalidRequest(f"{', '.join(unsupported)} not supported by afinar; remove it")
        cc = req.get("customizationConfig") or {}
        want = {RFT: "rftConfig", DISTILLATION: "distillationConfig"}.get(ctype)
        if set(cc) - {want}:
            raise InvalidRequest(f"customizationConfig.{sorted(set(cc) - {want})[0]} does not "
                                 f"fit customizationType {ctype}" + (
                                     f" (it takes {want})" if want else ""))
        teacher = None
        if ctype == DISTILLATION:
            ident = ((cc.get("distillationConfig") or {}).get("teacherModelConfig") or {}).get(
                "teacherModelIdentifier")
            if not ident:
                raise InvalidRequest(f"missing required field '{TEACHER}.teacherModelIdentifier'")
            teacher = self.resolve_teacher(ident)
        data = req["trainingDataConfig"]
        logs = data.get("invocationLogsConfig")
        if logs and ctype != DISTILLATION:
            raise InvalidRequest(f"{LOGS} is for customizationType {DISTILLATION}; give "
                                 f"trainingDataConfig.s3Uri")
        if logs and data.get("s3Uri"):
            raise InvalidRequest(f"give trainingDataConfig.s3Uri or {LOGS}, not both")
        if logs:
            self._check_logs_config(logs)
        elif not data.get("s3Uri"):
            raise InvalidRequest("missing required field 'trainingDataConfig.s3Uri'")
        validators = (req.get("validationDataConfig") or {}).get("validators") or []
        if len(validators) > 1:
            raise InvalidRequest("validationDataConfig.validators: afinar takes one validation "
                             "file")
        try:
            if data.get("s3Uri"):
                self.storage.locate(data["s3Uri"], "trainingDataConfig.s3Uri")
            for i, v in enumerate(validators):
                self.storage.locate(v["s3Uri"], f"validationDataConfig.validators[{i}].s3Uri")
            self.storage.locate(req["outputDataConfig"]["s3Uri"], "outputDataConfig.s3Uri")
        except StorageError as e:
            raise InvalidRequest(str(e)) from None
        self._check_hyperparameters(req.get("hyperParameters") or {}, ctype,
                                    internal or (rft_settings(req, self.settings)
                                                 if ctype == RFT else
                                                 distillation_settings(req, teacher)
                                                 if teacher else None))
        target, base_id, base_arn, _ = self.resolve_base(req["baseModelIdentifier"],
                                                         req.get("hyperParameters"))
        name, model_name = req["jobName"], req["customModelName"]
        if not valid_name(model_name):
            raise InvalidRequest(f"customModelName '{model_name[:80]}' must be {NAME_RULE}")
        if custom_model_record(self.settings, model_name) is not None:
            raise Conflict(f"a custom model named '{model_name}' already "
                           f"exists; choose another customModelName or delete it first")
        with self.engine.connect() as c:
            busy = c.execute(select(db.jobs.c.name).where(and_(
                db.jobs.c.output_model_name == model_name,
                db.jobs.c.status.in_(ACTIVE)))).first()
        if busy:
            raise Conflict(f"job '{busy.name}' is already creating custom "
                           f"model '{model_name}'")
        self.check_quota()
        job_id = job_id or short_id()
        if internal:
            req = req | {"_internal": internal}
        now = db.now()
        details = {p: {"status": "NotStarted", "creationTime": now.isoformat(),
                       "lastModifiedTime": now.isoformat()} for p in PHASES}
        row = dict(id=job_id, arn=self.arns.job(base_id, job_id), name=name, client_token=token,
                   status="InProgress", customization_type=ctype, base_model=target,
                   base_model_arn=base_arn, output_model_name=model_name, request=req,
                   status_details=details, created_at=now, updated_at=now, attempts=0,
                   kind=CUSTOMIZATION)
        self.add_job(row, f"job created: {ctype} of {target} -> {model_name}")
        return {"jobArn": row["arn"]}

    def resolve_teacher(self, ident: str) -> str:
        """A distillation teacher: an endpoint registered in [teachers], or any model a job
        may train on (what the worker loads); a custom model as `afinar.<name>` too, since
        Bedrock's teacherModelIdentifier pattern admits only provider.model ids and
        foundation-model ARNs."""
        if ident in self.settings.teachers:
            return ident
        if ident.startswith("afinar.") and self._custom_record(ident[7:]) is not None:
            ident = ident[7:]  # Bedrock's pattern takes provider.model ids: afinar.<custom>
        try:
            return self.resolve_base(ident)[0]
        except InvalidRequest as e:
            raise InvalidRequest(f"{TEACHER}.teacherModelIdentifier: "
                                 f"{e.message.removeprefix('baseModelIdentifier ')}; or "
                                 f"register an OpenAI-compatible endpoint under that name in "
                                 f"afinar.toml [teachers]") from None

    def _check_logs_config(self, logs: dict) -> None:
        from afinar.inference.invocation_log import check_filters

        src = (logs.get("invocationLogSource") or {}).get("s3Uri")
        if not src:
            raise InvalidRequest(f"missing required field '{LOGS}.invocationLogSource.s3Uri'")
        try:
            self.storage.locate(src, f"{LOGS}.invocationLogSource.s3Uri")
        except StorageError as e:
            raise InvalidRequest(str(e)) from None
        check_filters(logs.get("requestMetadataFilters"))

    def _check_hyperparameters(self, hp: dict, ctype: str, rft: dict | None = None) -> None:
        from afinar.training.config import parse_train_config, request_hyperparameters

        try:
            values = request_hyperparameters(hp)
            for k, v in (rft or {}).items():  # customizationConfig's settings; hyperParameters
                if k in values and str(values[k]) != str(v):  # add to them
                    raise InvalidRequest(f"hyperParameters.{k} and customizationConfig "
                                         f"set it differently; keep one")
                values[k] = v
            cpt = ctype == "CONTINUED_PRE_TRAINING"
            values.setdefault("type", "cpt" if cpt else "sft")
            values.update(train_data="x.jsonl", base_model="x")
            cfg = parse_train_config(values, source="hyperParameters")
            fits = {"CONTINUED_PRE_TRAINING": {"cpt"}, RFT: {"rft"},
                    DISTILLATION: {"distill"}}.get(
                ctype, {"sft", "classify", "dpo"})
            if cfg.type not in fits:
                raise InvalidRequest(f"hyperParameters.type {cfg.type} does not fit "
                                     f"customizationType {ctype}")
        except AfinarError as e:
            raise InvalidRequest(str(e).replace("\n  hint: ", ". ")) from None

    # -- Get / List / Stop ---------------------------------------------------------------
    def _job_row(self, ident: str):
        return self.row_of(CUSTOMIZATION, ident, f"no model customization job '{ident}'; list "
                           f"them with ListModelCustomizationJobs")

    def get_job(self, ident: str) -> dict:
        r = self._job_row(ident)
        req = r.request
        out = {
            "jobArn": r.arn, "jobName": r.name, "outputModelName": r.output_model_name,
            "outputModelArn": r.output_model_arn, "clientRequestToken": r.client_token,
            "roleArn": req["roleArn"], "status": r.status, "statusDetails": r.status_details,
            "failureMessage": r.failure_message, "creationTime": db.as_utc(r.created_at),
            "lastModifiedTime": db.as_utc(r.updated_at), "endTime": db.as_utc(r.end_time),
            "baseModelArn": r.base_model_arn, "hyperParameters": req.get("hyperParameters"),
            "trainingDataConfig": req["trainingDataConfig"],
            "validationDataConfig": req.get("validationDataConfig") or {"validators": []},
            "outputDataConfig": req["outputDataConfig"],
            "customizationType": r.customization_type,
            "trainingMetrics": r.training_metrics, "validationMetrics": r.validation_metrics,
        }
        if req.get("customizationConfig"):
            out["customizationConfig"] = req["customizationConfig"]
        return out

    def list_jobs(self, p: dict) -> dict:
        q = select(db.jobs.c.id, db.jobs.c.arn, db.jobs.c.name, db.jobs.c.status,
                   db.jobs.c.status_details, db.jobs.c.base_model_arn, db.jobs.c.created_at,
                   db.jobs.c.updated_at, db.jobs.c.end_time, db.jobs.c.output_model_arn,
                   db.jobs.c.output_model_name, db.jobs.c.customization_type)
        conds, order = list_filters(CUSTOMIZATION, p)
        q = q.where(and_(*conds))
        limit = p.get("maxResults") or DEFAULT_PAGE
        offset = _decode_token(p.get("nextToken"))
        with self.engine.connect() as c:
            rows = c.execute(q.order_by(*order).offset(offset).limit(limit + 1)).all()
        summaries = [{
            "jobArn": r.arn, "baseModelArn": r.base_model_arn, "jobName": r.name,
            "status": r.status, "statusDetails": r.status_details,
            "lastModifiedTime": db.as_utc(r.updated_at), "creationTime": db.as_utc(r.created_at),
            "endTime": db.as_utc(r.end_time), "customModelArn": r.output_model_arn,
            "customModelName": r.output_model_name, "customizationType": r.customization_type,
        } for r in rows[:limit]]
        out = {"modelCustomizationJobSummaries": summaries}
        if len(rows) > limit:
            out["nextToken"] = _encode_token(offset + limit)
        return out

    def resume_job(self, ident: str) -> dict:
        """A Failed or Stopped job queued again; the worker resumes from its last checkpoint."""
        r = self._job_row(ident)
        if r.status not in ("Failed", "Stopped"):
            raise InvalidRequest(f"job '{r.name}' is {r.status}; only Failed "
                           f"or Stopped jobs can be resumed")
        if custom_model_record(self.settings, r.output_model_name) is not None:
            raise Conflict(f"custom model '{r.output_model_name}' exists "
                           f"now; delete it before resuming job '{r.name}'")
        with self.engine.connect() as c:
            busy = c.execute(select(db.jobs.c.name).where(and_(
                db.jobs.c.output_model_name == r.output_model_name,
                db.jobs.c.status.in_(ACTIVE)))).first()
        if busy:
            raise Conflict(f"job '{busy.name}' is already creating custom "
                           f"model '{r.output_model_name}'")
        ckpts = sorted((self.settings.jobs_dir / r.id / "run" / "checkpoints").glob("step-*"))
        reopen(self.engine, r.id, f"resume requested: from {ckpts[-1].name}" if ckpts
                  else "resume requested: no checkpoint was kept, so training starts over")
        if self.scheduler:
            self.scheduler.enqueue(r.id)
        return {"jobArn": r.arn, "status": "InProgress",
                "resumeFrom": ckpts[-1].name if ckpts else None}

    def stop_job(self, ident: str) -> dict:
        return self.stop_row(self._job_row(ident), "InProgress")

    def stop_row(self, r, stoppable: str) -> dict:
        """Stop a job of any kind: a queued one ends Stopped at once; a running one is asked
        to stop (its worker checkpoints and ends Stopped; the scheduler enforces it)."""
        if r.status not in ACTIVE:
            raise InvalidRequest(f"job '{r.name}' is {r.status}; only {stoppable} jobs can be "
                                 f"stopped")
        if r.status == "Stopping":
            return {}
        if self.scheduler and r.worker_pid is None and self.scheduler.dequeue(r.id):
            finish(self.engine, r.id, "Stopped", note="stopped before it started")
            return {}
        set_fields(self.engine, r.id, status="Stopping")
        add_event(self.engine, r.id, "stop requested")
        return {}

    # -- shared by every kind of job ---------------------------------------------------
    def by_token(self, kind: str, token: str | None, req: dict) -> dict | None:
        """Idempotency: {"jobArn"} of the job a client token already created with the same
        request, None for a new token; Conflict when the token came with another request."""
        if not token:
            return None
        with self.engine.connect() as c:
            row = c.execute(select(db.jobs).where(and_(
                db.jobs.c.client_token == token, db.jobs.c.kind == kind))).first()
        if row is None:
            return None
        if row.request != req:
            raise Conflict(f"clientRequestToken '{token}' was already used by job "
                           f"'{row.name}' with different parameters")
        return {"jobArn": row.arn}

    def check_quota(self) -> None:
        if self.scheduler and self.scheduler.queued() >= MAX_QUEUED:
            raise QuotaExceeded(f"{MAX_QUEUED} jobs are already queued; wait for some to finish")

    def add_job(self, row: dict, event: str) -> None:
        """Insert a new job row (names are unique across kinds) and queue it."""
        try:
            with self.engine.begin() as c:
                c.execute(insert(db.jobs).values(**row))
        except IntegrityError:
            raise Conflict(f"a job named '{row['name']}' already exists; job names are "
                           f"unique") from None
        add_event(self.engine, row["id"], event)
        if self.scheduler:
            self.scheduler.enqueue(row["id"])

    def row_of(self, kind: str | None, ident: str, missing: str):
        """A job by ARN, name or id (of one kind, or any); NotFound with `missing`."""
        col = db.jobs.c.arn if ident.startswith("arn:") else db.jobs.c.name
        conds = [db.jobs.c.kind == kind] if kind else []
        with self.engine.connect() as c:
            row = c.execute(select(db.jobs).where(and_(col == ident, *conds))).first()
            if row is None and not ident.startswith("arn:"):
                row = c.execute(select(db.jobs).where(and_(db.jobs.c.id == ident,
                                                           *conds))).first()
        if row is None:
            raise NotFound(missing)
        return row

    def job_events(self, ident: str, after: int = 0, limit: int = 500) -> dict:
        """The events of a job of any kind (by id, name or ARN)."""
        r = self.row_of(None, ident, f"no job '{ident}'")
        with self.engine.connect() as c:
            rows = c.execute(select(db.events).where(and_(
                db.events.c.job_id == r.id, db.events.c.id > after)).order_by(
                db.events.c.id).limit(limit)).all()
        return {"jobName": r.name, "status": r.status, "events": [
            {"id": e.id, "time": db.as_utc(e.ts).isoformat(), "level": e.level,
             "message": e.message} for e in rows]}

    # -- custom models -------------------------------------------------------------------
    def _custom_or_404(self, ident: str) -> dict:
        rec = self._custom_record(ident)
        if rec is None:
            raise NotFound(f"no custom model '{ident}'; list them with ListCustomModels")
        return rec

    def _model_summary(self, rec: dict) -> dict:
        base = rec.get("base_model_id") or rec.get("base_model") or ""
        return {"modelArn": self._model_arn(rec), "modelName": rec["name"],
                "creationTime": rec.get("created_at"),
                "baseModelArn": rec.get("base_model_arn") or
                self.arns.foundation(bedrock_model_id(base)),
                "baseModelName": bedrock_model_id(base),
                "customizationType": rec.get("customization_type",
                                                                    "FINE_TUNING"),
                "ownerAccountId": self.settings.account_id,
                "modelStatus": rec.get("model_status", "Active")}

    def get_custom_model(self, ident: str) -> dict:
        rec = self._custom_or_404(ident)
        b = rec.get("bedrock") or {}
        s = self._model_summary(rec)
        m = rec.get("metrics") or {}
        val = (m.get("validation") or {}).get("validation_loss")
        return {"modelArn": s["modelArn"], "modelName": s["modelName"],
                "jobName": b.get("jobName"), "jobArn": b.get("jobArn"),
                "baseModelArn": s["baseModelArn"], "customizationType": s["customizationType"],
                "hyperParameters": b.get("hyperParameters") or {
                    k: str(v) for k, v in (rec.get("hyperparameters") or {}).items()},
                "trainingDataConfig": b.get("trainingDataConfig"),
                "validationDataConfig": b.get("validationDataConfig"),
                "outputDataConfig": b.get("outputDataConfig"),
                "trainingMetrics": {"trainingLoss": m["train_loss"]} if m.get("train_loss")
                is not None else None,
                "validationMetrics": [{"validationLoss": val}] if val is not None else None,
                "creationTime": s["creationTime"], "modelStatus": s["modelStatus"]}

    def list_custom_models(self, p: dict) -> dict:
        recs = [self._model_summary(r) for r in list_custom_models(self.settings)]
        if p.get("nameContains"):
            recs = [r for r in recs if p["nameContains"] in r["modelName"]]
        if p.get("baseModelArnEquals"):
            recs = [r for r in recs if r["baseModelArn"] == p["baseModelArnEquals"]]
        if p.get("foundationModelArnEquals"):
            recs = [r for r in recs if r["baseModelArn"] == p["foundationModelArnEquals"]]
        if p.get("modelStatus"):
            recs = [r for r in recs if r["modelStatus"] == p["modelStatus"]]
        if p.get("creationTimeAfter"):
            recs = [r for r in recs if _when(r["creationTime"]) > p["creationTimeAfter"]]
        if p.get("creationTimeBefore"):
            recs = [r for r in recs
                    if _when(r["creationTime"]) < p["creationTimeBefore"]]
        recs.sort(key=lambda r: (r["creationTime"] or "", r["modelName"]),
                  reverse=p.get("sortOrder") != "Ascending")
        return page(recs, p, "modelSummaries")

    def delete_custom_model(self, ident: str) -> dict:
        rec = self._custom_or_404(ident)
        with self.engine.connect() as c:
            using = c.execute(select(db.jobs.c.name).where(and_(
                db.jobs.c.base_model == rec["name"], db.jobs.c.status.in_(ACTIVE)))).first()
        if using:
            raise Conflict(f"custom model '{rec['name']}' is the base of "
                           f"running job '{using.name}'; stop it first")
        (self.settings.custom_models_dir / f"{rec['name']}.json").unlink(missing_ok=True)
        return {}

    # -- serving -------------------------------------------------------------------------
    def serving_id(self, model_id: str) -> str:
        """A runtime modelId (any id afinar lists: models/ids.py) -> the identifier afinar's
        loader takes."""
        ident = canonical(model_id, self.settings)
        if ident.startswith("arn:") and ":custom-model/" in ident:
            raise NotFound(f"no custom model '{model_id}'")
        return ident

    def model_kind(self, model_id: str) -> str | None:
        """generative | encoder | classifier for an id afinar lists (None: not known here)."""
        return kind_of(model_id, self.settings)

    def embedding_id(self, model_id: str) -> str:
        """An embeddings request's model -> the embedding model afinar serves (the default
        encoder, under any id afinar lists for it or an alias of it). A model of another kind
        is refused by kind; an unknown one is NotFound."""
        from afinar.inference.embed import DEFAULT_EMBEDDING_MODEL
        from afinar.models.registry import check_kind

        ident = canonical(model_id, self.settings)
        target = self.settings.model_aliases.get(ident, ident)
        e = BUILTIN_MODELS.get(DEFAULT_EMBEDDING_MODEL)
        if target.lower() in (DEFAULT_EMBEDDING_MODEL, e.hub_id.lower(), e.name.lower()):
            return DEFAULT_EMBEDDING_MODEL
        if kind_of(ident, self.settings) is not None:
            check_kind(ident, self.settings, "encoder", model_id)
        raise NotFound(f"embedding model '{str(model_id)[:200]}' is not available; use "
                       f"{DEFAULT_EMBEDDING_MODEL} (or map a name to it in [model_aliases])")

    def serving_models(self) -> list[str]:
        """What /v1/models lists: generative base models, aliases, custom models."""
        base = [rid for rid, e in BUILTIN_MODELS.items() if e.kind == "causal-lm"]
        custom = [m.get("openai_model") or m["name"] for m in list_custom_models(self.settings)
                  if m.get("type", "sft") != "classify"]
        return base + sorted(self.settings.model_aliases) + custom

    # -- foundation models ---------------------------------------------------------------
    def _foundations(self) -> dict[str, dict]:
        """Registry models, then aliases (a cloud id mapped to a local model), by the Bedrock
        form of their ids (models/ids.py: what botocore's patterns take)."""
        out = {}
        for mid, e in BUILTIN_MODELS.items():
            out[bedrock_id(mid)] = self._foundation(bedrock_id(mid), e.name, e.provider)
            if e.kind == "encoder":  # embeddings (knowledge bases, InvokeModel, /v1)
                out[bedrock_id(mid)].update(outputModalities=["EMBEDDING"],
                                            customizationsSupported=["FINE_TUNING"],
                                            responseStreamingSupported=False)
        for alias, target in sorted(self.settings.model_aliases.items()):
            e = BUILTIN_MODELS.get(target)
            mid = bedrock_model_id(alias)
            out[mid] = self._foundation(mid, e.name if e else Path(target).name or alias,
                                        e.provider if e else "local")
        return out

    def _foundation(self, mid: str, name: str, provider: str) -> dict:
        # modelName and providerName: at most 20 characters (botocore's BrandedName)
        if len(provider) > 20:  # sentence-transformers -> SentenceTransformers
            provider = "".join(w.capitalize() for w in provider.split("-"))[:20]
        return {"modelArn": self.arns.foundation(mid), "modelId": mid, "modelName": name[:20],
                "providerName": provider, "inputModalities": ["TEXT"],
                "outputModalities": ["TEXT"], "responseStreamingSupported": True,
                # the ModelCustomization enum has no REINFORCEMENT_FINE_TUNING (yet afinar
                # runs it: CreateModelCustomizationJob takes it)
                "customizationsSupported": ["FINE_TUNING", "CONTINUED_PRE_TRAINING",
                                            DISTILLATION],
                "inferenceTypesSupported": ["ON_DEMAND"],
                "modelLifecycle": {"status": "ACTIVE"}}

    def list_foundation_models(self, p: dict) -> dict:
        out = []
        for s in self._foundations().values():
            if p.get("byProvider") and p["byProvider"].lower() != s["providerName"].lower():
                continue
            if p.get("byCustomizationType") and \
                    p["byCustomizationType"] not in s["customizationsSupported"]:
                continue
            if p.get("byOutputModality") and p["byOutputModality"] not in s["outputModalities"]:
                continue
            if p.get("byInferenceType") and \
                    p["byInferenceType"] not in s["inferenceTypesSupported"]:
                continue
            out.append(s)
        return {"modelSummaries": out}

    def get_foundation_model(self, ident: str) -> dict:
        mid = bedrock_model_id(canonical(ident, self.settings))
        found = self._foundations()
        if mid not in found:
            raise NotFound(f"no foundation model '{ident}'; available: {', '.join(found)}")
        return {"modelDetails": found[mid]}


def list_filters(kind: str, p: dict, after: str = "creationTimeAfter",
                 before: str = "creationTimeBefore", by_status: bool = True) -> tuple:
    """The List operations' filters (kind, statusEquals, nameContains, times) as SQL
    conditions, and their sortOrder by creation time."""
    conds = [db.jobs.c.kind == kind]
    if by_status and p.get("statusEquals"):
        conds.append(db.jobs.c.status == p["statusEquals"])
    if p.get("nameContains"):
        conds.append(db.jobs.c.name.contains(p["nameContains"], autoescape=True))
    if p.get(after):
        conds.append(db.jobs.c.created_at > p[after])
    if p.get(before):
        conds.append(db.jobs.c.created_at < p[before])
    if p.get("sortOrder") == "Ascending":
        return conds, (db.jobs.c.created_at.asc(), db.jobs.c.id.asc())
    return conds, (db.jobs.c.created_at.desc(), db.jobs.c.id.desc())


def _when(iso: str | None) -> dt.datetime:
    """A record's ISO-8601 time, timezone-aware (UTC when it says none)."""
    d = dt.datetime.fromisoformat(str(iso or "1970-01-01").replace("Z", "+00:00"))
    return d if d.tzinfo else d.replace(tzinfo=dt.UTC)


def page(items: list, p: dict, key: str) -> dict:
    """One page of `items` by the request's maxResults and nextToken."""
    limit = p.get("maxResults") or DEFAULT_PAGE
    off = _decode_token(p.get("nextToken"))
    out = {key: items[off:off + limit]}
    if off + limit < len(items):
        out["nextToken"] = _encode_token(off + limit)
    return out


def _encode_token(offset: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"o": offset}).encode()).decode()


def _decode_token(token: str | None) -> int:
    if not token:
        return 0
    try:
        o = json.loads(base64.urlsafe_b64decode(token.encode()))["o"]
        if isinstance(o, int) and o >= 0:
            return o
    except (ValueError, KeyError, TypeError):
        pass
    raise InvalidRequest("nextToken is not a token this server returned")
