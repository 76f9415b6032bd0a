"""Bedrock's batch inference (model invocation jobs): Create, Get, List and Stop, as jobs of
kind "batch-inference" in the same store, scheduler and worker as customization jobs (the
worker runs jobs/batch.py). Methods take and return botocore shapes' dicts; errors are typed.

Statuses: a job not yet picked up by a worker is Submitted; then InProgress; Completed,
Failed, Stopping and Stopped as the store says. Record counts come from the worker's progress.
"""

from __future__ import annotations

from sqlalchemy import and_, select

from afinar import db
from afinar.errors import InvalidRequest
from afinar.jobs.arns import short_id
from afinar.storage import StorageError

KIND = "batch-inference"
COUNTS = ("totalRecordCount", "processedRecordCount", "successRecordCount", "errorRecordCount")


class InvocationJobs:
    def __init__(self, service):
        self.svc = service  # JobService: settings, store, storage, ARNs, scheduler, model ids

    # -- Create ------------------------------------------------------------------------------
    def create(self, req: dict) -> dict:
        from afinar.inference import bodies
        from afinar.models.registry import check_served

        s = self.svc
        token = req.get("clientRequestToken")
        if (done := s.by_token(KIND, token, req)) is not None:
            return done
        for k in ("vpcConfig", "tags"):
            if req.get(k):
                raise InvalidRequest(f"{k} is not supported by afinar; remove it")
        if req.get("modelInvocationType") not in (None, "InvokeModel"):
            raise InvalidRequest("modelInvocationType: afinar runs InvokeModel bodies only")
        hours = req.get("timeoutDurationInHours")
        if hours is not None and not 24 <= hours <= 168:
            raise InvalidRequest("timeoutDurationInHours must be between 24 and 168")
        inp = req["inputDataConfig"].get("s3InputDataConfig") or {}
        out = req["outputDataConfig"].get("s3OutputDataConfig") or {}
        if not inp.get("s3Uri") or not out.get("s3Uri"):
            raise InvalidRequest("inputDataConfig.s3InputDataConfig.s3Uri and "
                                 "outputDataConfig.s3OutputDataConfig.s3Uri are required")
        if inp.get("s3InputFormat", "JSONL") != "JSONL":
            raise InvalidRequest("inputDataConfig.s3InputDataConfig.s3InputFormat must be "
                                 "JSONL")
        if not inp["s3Uri"].endswith(".jsonl"):
            raise InvalidRequest("inputDataConfig.s3InputDataConfig.s3Uri: afinar takes one "
                                 ".jsonl file (a prefix of several files is not supported); "
                                 f"got '{inp['s3Uri'][:200]}'")
        try:
            s.storage.locate(inp["s3Uri"], "inputDataConfig.s3InputDataConfig.s3Uri")
            s.storage.locate(out["s3Uri"], "outputDataConfig.s3OutputDataConfig.s3Uri")
        except StorageError as e:
            raise InvalidRequest(str(e)) from None
        if bodies.provider(req["modelId"]) == "titan-embed":
            raise InvalidRequest("modelId: batch inference runs generation models; embedding "
                                 "models are not supported")
        ident = s.serving_id(req["modelId"])
        check_served(ident, s.settings)  # a model this server serves, or ModelNotFoundError
        s.check_quota()
        job_id = short_id()
        now = db.now()
        row = dict(id=job_id, arn=s.arns.invocation_job(job_id), name=req["jobName"],
                   client_token=token, status="InProgress", customization_type="",
                   base_model=ident, base_model_arn=req["modelId"], output_model_name="",
                   request=req, status_details={}, created_at=now, updated_at=now,
                   attempts=0, kind=KIND)
        s.add_job(row, f"batch inference job created: {req['modelId']} on {inp['s3Uri']}")
        return {"jobArn": row["arn"]}

    # -- Get / List / Stop -------------------------------------------------------------------
    def _row(self, ident: str):
        return self.svc.row_of(KIND, ident, f"no model invocation job '{ident}'; list them "
                               f"with ListModelInvocationJobs")

    @staticmethod
    def _status(r) -> str:
        if r.status == "InProgress" and r.worker_pid is None:
            return "Submitted"
        return r.status

    def _shape(self, r) -> dict:
        req = r.request
        out = {"jobArn": r.arn, "jobName": r.name, "modelId": req["modelId"],
               "clientRequestToken": r.client_token, "roleArn": req["roleArn"],
               "status": self._status(r), "message": r.failure_message,
               "submitTime": db.as_utc(r.created_at), "lastModifiedTime": db.as_utc(r.updated_at),
               "endTime": db.as_utc(r.end_time), "inputDataConfig": req["inputDataConfig"],
               "outputDataConfig": req["outputDataConfig"],
               "timeoutDurationInHours": req.get("timeoutDurationInHours") or 168,
               "modelInvocationType": "InvokeModel"}
        out.update({k: r.status_details[k] for k in COUNTS if k in (r.status_details or {})})
        return out

    def get(self, ident: str) -> dict:
        return self._shape(self._row(ident))

    def list(self, p: dict) -> dict:
        from afinar.jobs.service import list_filters, page

        # statusEquals is matched on the shape: Submitted is derived
        conds, order = list_filters(KIND, p, "submitTimeAfter", "submitTimeBefore",
                                    by_status=False)
        with self.svc.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(and_(*conds)).order_by(*order)).all()
        shapes = [self._shape(r) for r in rows]
        if p.get("statusEquals"):
            shapes = [x for x in shapes if x["status"] == p["statusEquals"]]
        return page(shapes, p, "invocationJobSummaries")

    def stop(self, ident: str) -> dict:
        return self.svc.stop_row(self._row(ident), "Submitted or InProgress")
