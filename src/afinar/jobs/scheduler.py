"""The local executor: a bounded FIFO of job ids and at most `max_concurrent_jobs` worker
subprocesses (`python -m afinar.jobs.worker JOB_ID`), at most `job_limits[kind]` of one kind,
with recovery after a crash."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from afinar import db
from afinar.config import Settings
from afinar.jobs.states import ACTIVE
from afinar.jobs.store import add_event, finish, job_status, set_fields

MAX_QUEUED = 1000
MAX_ATTEMPTS = 3

def _pdeathsig():  # runs in the child before exec: die with the server
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class Scheduler:
    """A bounded FIFO of job ids and at most `max_concurrent_jobs` worker subprocesses.

    Workers die with the server (PR_SET_PDEATHSIG), so after a crash nothing runs unowned; on
    start, jobs a crash left InProgress go back in the queue and resume from their last
    checkpoint (up to MAX_ATTEMPTS starts), jobs left Stopping end Stopped.
    """

    def __init__(self, settings: Settings, engine: Engine):
        self.settings, self.engine = settings, engine
        self.queue: collections.deque[str] = collections.deque()
        self.running: dict[str, subprocess.Popen] = {}
        self.kinds: dict[str, str] = {}  # job id -> its kind (looked up once)
        self.lock = threading.Lock()
        self.wake = threading.Event()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="afinar-scheduler", daemon=True)

    def start(self) -> None:
        self.recover()
        self.thread.start()

    def shutdown(self) -> None:
        self.stopped.set()
        self.wake.set()
        for p in list(self.running.values()):
            if p.poll() is None:  # let the worker checkpoint; it resumes on the next start
                p.send_signal(signal.SIGTERM)
        deadline = time.time() + 30
        for p in list(self.running.values()):
            try:
                p.wait(max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                p.kill()

    def queued(self) -> int:
        return len(self.queue)

    def enqueue(self, job_id: str) -> None:
        with self.lock:
            self.queue.append(job_id)
        self.wake.set()

    def dequeue(self, job_id: str) -> bool:
        with self.lock:
            if job_id in self.queue:
                self.queue.remove(job_id)
                return True
        return False

    def recover(self) -> None:
        with self.engine.connect() as c:
            rows = c.execute(select(db.jobs).where(db.jobs.c.status.in_(ACTIVE)).order_by(
                db.jobs.c.created_at)).all()
        for r in rows:
            if r.worker_pid and _alive(r.worker_pid, r.id):
                continue  # should not happen (workers die with the server); leave it be
            if r.status == "Stopping":
                finish(self.engine, r.id, "Stopped", note="the server restarted while stopping;"
                       " checkpoints kept")
            elif r.attempts >= MAX_ATTEMPTS:
                finish(self.engine, r.id, "Failed", failure=f"the job was interrupted "
                       f"{r.attempts} times (server restarts or crashes); giving up. Its "
                       f"checkpoints and logs are kept in {self.settings.jobs_dir / r.id}")
            else:
                if r.worker_pid:
                    set_fields(self.engine, r.id, worker_pid=None)
                    add_event(self.engine, r.id, "the server restarted while this job ran; "
                              "it will resume from its last checkpoint", "WARN")
                self.queue.append(r.id)

    def _loop(self) -> None:
        while not self.stopped.is_set():
            self._reap()
            with self.lock:
                while len(self.running) < self.settings.max_concurrent_jobs:
                    job_id = self._next()
                    if job_id is None:
                        break
                    self._launch(job_id)
            self.wake.wait(0.5)
            self.wake.clear()

    def _kind(self, job_id: str) -> str:
        if job_id not in self.kinds:
            with self.engine.connect() as c:
                self.kinds[job_id] = c.execute(select(db.jobs.c.kind).where(
                    db.jobs.c.id == job_id)).scalar() or "customization"
        return self.kinds[job_id]

    def _next(self) -> str | None:
        """The oldest queued job whose kind is under its limit (others keep their place)."""
        running = collections.Counter(self._kind(j) for j in self.running)
        for job_id in self.queue:
            limit = self.settings.job_limits.get(self._kind(job_id))
            if limit is None or running[self._kind(job_id)] < limit:
                self.queue.remove(job_id)
                return job_id
        return None

    def _launch(self, job_id: str) -> None:
        status = job_status(self.engine, job_id)
        if status == "Stopping":  # stopped between leaving the queue and starting
            finish(self.engine, job_id, "Stopped", note="stopped before it started")
        if status != "InProgress":
            return
        d = self.settings.jobs_dir / job_id
        d.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, AFINAR_WORKER_SETTINGS=self.settings.model_dump_json())
        log = open(d / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        p = subprocess.Popen([sys.executable, "-m", "afinar.jobs.worker", job_id], env=env,
                             stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                             preexec_fn=_pdeathsig if sys.platform == "linux" else None)
        log.close()
        self.running[job_id] = p
        with self.engine.begin() as c:
            c.execute(update(db.jobs).where(db.jobs.c.id == job_id).values(
                worker_pid=p.pid, attempts=db.jobs.c.attempts + 1, updated_at=db.now()))
        add_event(self.engine, job_id, f"worker started (pid {p.pid})")

    def _reap(self) -> None:
        if self.stopped.is_set():
            return  # shutting down: workers checkpoint and the jobs resume on the next start
        for job_id, p in list(self.running.items()):
            rc = p.poll()
            if rc is None:
                continue
            del self.running[job_id]
            self.kinds.pop(job_id, None)
            status = job_status(self.engine, job_id)
            if status not in ACTIVE:
                continue  # the worker recorded its own end
            if rc < 0:
                why = f"the worker process was killed by {signal.Signals(-rc).name}"
            else:
                why = f"the worker process exited with code {rc} without finishing"
            log = self.settings.jobs_dir / job_id / "worker.log"
            tail = _tail_lines(log, 5)
            end = "Stopped" if status == "Stopping" and rc == 0 else "Failed"
            finish(self.engine, job_id, end,
                   failure=None if end == "Stopped" else
                   f"{why}. Checkpoints and logs are kept in {log.parent}" +
                   (f"; last log lines: {tail}" if tail else ""))


def _alive(pid: int, job_id: str) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return job_id.encode() in cmd


def _tail_lines(p: Path, n: int) -> str:
    from afinar.progress import log_tail
    try:
        with p.open("rb") as f:  # the end of a log that may be large
            f.seek(max(0, p.stat().st_size - 64 * 1024))
            return log_tail(f.read().decode("utf-8", "replace"), n)
    except OSError:
        return ""
