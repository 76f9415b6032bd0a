"""Knowledge-base ingestion jobs (bedrock-agent's StartIngestionJob, StopIngestionJob) as jobs
of kind "ingestion" in the one store, scheduler and worker. The knowledge base's own record of
the job (rag/kb.py: Bedrock's status names and statistics) shares the job's id; the worker runs
the data source's incremental sync, so a job resumed after a crash does only what is left.

Rules: one ingestion job at a time per data source; CUSTOM sources take documents directly.
"""

from __future__ import annotations

from afinar import db
from afinar.errors import Conflict, InvalidRequest

KIND = "ingestion"


class IngestionJobs:
    def __init__(self, service, kbs):
        self.svc, self.kbs = service, kbs  # JobService; rag.kb.KnowledgeBases

    def start(self, kb_ident: str, source_ident: str, description: str | None = None) -> dict:
        src = self.kbs.get_source(kb_ident, source_ident)
        if src["uri"] is None:
            raise InvalidRequest("this is a CUSTOM data source: ingest its documents with "
                                 "IngestKnowledgeBaseDocuments")
        running = [j for j in self.kbs.list_ingestion_jobs(src["kb_id"], src["id"])
                   if j["status"] in ("STARTING", "IN_PROGRESS", "STOPPING")]
        if running:
            raise Conflict(f"ingestion job {running[0]['id']} is still {running[0]['status']} "
                           f"for this data source")
        self.svc.check_quota()
        job = self.kbs.new_ingestion_job(src["kb_id"], src["id"], description)
        now = db.now()
        self.svc.add_job(dict(
            id=job["id"], arn=f"{self.kbs.arn(src['kb_id'])}/ingestion-job/{job['id']}",
            name=f"ingestion-{job['id'].lower()}", client_token=None, status="InProgress",
            customization_type="", base_model="", base_model_arn="", output_model_name="",
            request={"knowledgeBaseId": src["kb_id"], "dataSourceId": src["id"],
                     "description": description},
            status_details={}, created_at=now, updated_at=now, attempts=0, kind=KIND),
            f"ingestion job for data source {src['name']} of knowledge base {src['kb_id']}")
        return job

    def stop(self, kb_ident: str, source_ident: str, job_id: str) -> dict:
        job = self.kbs.get_ingestion_job(kb_ident, source_ident, job_id)  # NotFound
        if job["status"] not in ("STARTING", "IN_PROGRESS"):
            raise InvalidRequest(f"ingestion job {job_id} is {job['status']}; only STARTING or "
                                 f"IN_PROGRESS jobs can be stopped")
        row = self.svc.row_of(KIND, job_id, f"ingestion job {job_id} was not started by the "
                              f"server (a CLI sync); it cannot be stopped here")
        self.svc.stop_row(row, "STARTING or IN_PROGRESS")
        return self.kbs.get_ingestion_job(kb_ident, source_ident, job_id)


def run_ingestion(engine, row, settings, should_stop) -> str:
    """The worker's part: 'Completed' or 'Stopped'; a failed sync raises its error."""
    from afinar.jobs.store import add_event
    from afinar.progress import ProgressEvent
    from afinar.rag.kb import KnowledgeBases

    last = {"t": 0.0}

    def progress(ev: ProgressEvent) -> None:
        import time
        if ev.total and (time.time() - last["t"] > 10 or ev.current == ev.total):
            last["t"] = time.time()
            add_event(engine, row.id, f"ingest: {ev.current}/{ev.total} documents")

    req = row.request
    out = KnowledgeBases(settings, engine).sync(req["knowledgeBaseId"], req["dataSourceId"],
                                                job_id=row.id, progress=progress,
                                                should_stop=should_stop)
    st = out["statistics"]
    add_event(engine, row.id, f"{out['status']}: {st['numberOfNewDocumentsIndexed']} new, "
              f"{st['numberOfModifiedDocumentsIndexed']} modified, "
              f"{st['numberOfDocumentsDeleted']} deleted, {st['numberOfDocumentsFailed']} "
              f"failed")
    return "Stopped" if out["status"] == "STOPPED" else "Completed"
