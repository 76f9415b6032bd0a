"""Script-mode jobs (`afinar train --script`, the SDK's HuggingFace estimator): the user's own
training script under SageMaker's training contract (training/script.py), recorded as a job of
kind "script" in the one store, with its events, status and failure message like every other
job. The CLI and the SDK run it in the foreground (its log streamed); a job whose process died
is run again by the next server start's recovery, as other kinds are. Only the CLI and the SDK
create script jobs: the server never runs code a client sent.
"""

from __future__ import annotations

import os
import secrets

from afinar import db
from afinar.config import Settings
from afinar.jobs.store import add_event, finish, job_status, set_fields

KIND = "script"


def submit(service, spec: dict) -> str:
    """Record a prepared script run (training/script.py's spec) as a job; its id."""
    job_id = secrets.token_hex(6)
    now = db.now()
    service.add_job(dict(
        id=job_id, arn=f"arn:aws:sagemaker:{service.settings.region}:"
        f"{service.settings.account_id}:training-job/{spec['name']}", name=spec["name"],
        client_token=None, status="InProgress", customization_type="", base_model="",
        base_model_arn="", output_model_name=spec["name"], request={"script": spec},
        status_details={}, created_at=now, updated_at=now, attempts=0, kind=KIND),
        f"script job: {spec['meta']['entry_point']} from {spec['meta']['source_dir']}")
    return job_id


def execute(engine, row, settings: Settings, should_stop, stream=None):
    """Run the script of a script job and record how it ended; the ScriptResult."""
    from afinar.training.script import execute_script

    spec = row.request["script"]
    set_fields(engine, row.id, worker_pid=os.getpid())
    add_event(engine, row.id, f"running {spec['meta']['entry_point']} in {spec['job_dir']}")
    res = execute_script(spec, settings, stream=stream, should_stop=should_stop)
    if res.status == "Completed":
        finish(engine, row.id, "Completed", note=(
            f"custom model {res.name} registered" if res.registered else
            "the model dir holds no Hugging Face model: nothing registered"))
    elif res.status == "Stopped":
        finish(engine, row.id, "Stopped", note=f"the script was ended; its folder is kept in "
               f"{res.job_dir}")
    else:
        finish(engine, row.id, "Failed", failure=res.failure_message)
    return res


def run_foreground(settings: Settings, entry_point: str, *, stream=None, **kw):
    """The CLI's and the SDK's script run: prepare, record the job, run it here."""
    from afinar.jobs.service import JobService
    from afinar.training.script import prepare_script

    spec = prepare_script(entry_point, settings, **kw)
    svc = JobService(settings)
    job_id = submit(svc, spec)
    with svc.engine.connect() as c:
        row = c.execute(db.jobs.select().where(db.jobs.c.id == job_id)).first()
    return execute(svc.engine, row, settings,
                   lambda: job_status(svc.engine, job_id) == "Stopping", stream)
