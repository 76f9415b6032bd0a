"""The job records the server and the workers share: events, fields, phases and status changes
(checked against states.py), over the tables of afinar/db.py."""

from __future__ import annotations

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from afinar.db import events, jobs, now
from afinar.jobs.states import PHASES, check_transition

# -- job records (used by the server and the workers) ----------------------------------------

def add_event(engine: Engine, job_id: str, message: str, level: str = "INFO") -> None:
    with engine.begin() as c:
        c.execute(insert(events).values(job_id=job_id, ts=now(), level=level,
                                           message=message))


def set_fields(engine: Engine, job_id: str, **fields) -> None:
    """Update a job; a status change must be one the state table allows."""
    fields["updated_at"] = now()
    with engine.begin() as c:
        if "status" in fields:
            cur = c.execute(select(jobs.c.status).where(jobs.c.id == job_id)).scalar_one()
            check_transition(job_id, cur, fields["status"])
        c.execute(update(jobs).where(jobs.c.id == job_id).values(**fields))


def set_phase(engine: Engine, job_id: str, phase: str, status: str) -> None:
    with engine.begin() as c:
        row = c.execute(select(jobs.c.status_details).where(jobs.c.id == job_id)).first()
        details = dict(row.status_details)
        ts = now().isoformat()
        d = dict(details.get(phase) or {"creationTime": ts})
        d.update(status=status, lastModifiedTime=ts)
        details[phase] = d
        c.execute(update(jobs).where(jobs.c.id == job_id).values(
            status_details=details, updated_at=now()))


def job_status(engine: Engine, job_id: str) -> str | None:
    with engine.connect() as c:
        row = c.execute(select(jobs.c.status).where(jobs.c.id == job_id)).first()
    return row.status if row else None


def reopen(engine: Engine, job_id: str, note: str) -> None:
    """A Failed or Stopped job back to InProgress for a new worker; phases that ended without
    completing start again, and the attempt count restarts."""
    with engine.begin() as c:
        row = c.execute(select(jobs.c.status, jobs.c.status_details).where(
            jobs.c.id == job_id)).first()
        check_transition(job_id, row.status, "InProgress")
        details = dict(row.status_details)
        t = now()
        for p in PHASES:
            d = dict(details.get(p) or {})
            if d.get("status") != "Completed":
                d.update(status="NotStarted", lastModifiedTime=t.isoformat())
            details[p] = d
        c.execute(update(jobs).where(jobs.c.id == job_id).values(
            status="InProgress", status_details=details, failure_message=None, end_time=None,
            updated_at=t, worker_pid=None, attempts=0))
    add_event(engine, job_id, note)


def finish(engine: Engine, job_id: str, status: str, failure: str | None = None,
           note: str | None = None) -> None:
    """Final state. Phases still running take the job's end state; ones never reached stay
    NotStarted."""
    with engine.begin() as c:
        row = c.execute(select(jobs.c.status, jobs.c.status_details).where(
            jobs.c.id == job_id)).first()
        check_transition(job_id, row.status, status)
        details = dict(row.status_details)
        t = now()
        for p in PHASES:
            d = dict(details.get(p) or {})
            if d.get("status") == "InProgress":
                d.update(status=status, lastModifiedTime=t.isoformat())
            details[p] = d
        c.execute(update(jobs).where(jobs.c.id == job_id).values(
            status=status, status_details=details, failure_message=failure, end_time=t,
            updated_at=t, worker_pid=None))
    msg = f"job {status.lower()}" + (f": {failure}" if failure else "") + (
        f" ({note})" if note else "")
    add_event(engine, job_id, msg, "ERROR" if status == "Failed" else "INFO")
