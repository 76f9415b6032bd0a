"""Where a job's worker (`python -m afinar.jobs.worker JOB_ID`) runs: the scheduler (queue,
limits, recovery) hands each job to an executor and polls the handle it gets back.

- `local` (the default): a subprocess of the server, which dies with the server
  (PR_SET_PDEATHSIG); a restarted server resumes the job from its last checkpoint.
- `ray`: a job submitted to a Ray cluster through Ray's job submission API
  (`ray_address`, the cluster's dashboard). The worker runs on a cluster node with
  `ray_python` (an interpreter where afinar is installed), reads and writes the same job store
  (`database_url`: PostgreSQL for a real cluster; the SQLite file on one machine) and the same
  storage (S3, or a shared path). A Ray job outlives a server restart: the restarted server
  adopts it again instead of starting a second one. Its log is copied into the job directory
  (`worker.log`) when it ends. A stop is the worker's own (it checkpoints when it sees
  Stopping in the store); Ray's stop ends a worker that is still running at shutdown only when
  asked to kill.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from afinar.config import Settings
from afinar.errors import ConfigError

REMOTE_PID = -1  # the jobs table's worker_pid for a worker that runs on a Ray cluster


def _pdeathsig():  # runs in the child before exec: die with the server
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


class LocalHandle:
    def __init__(self, proc: subprocess.Popen):
        self.proc, self.pid = proc, proc.pid

    def poll(self) -> int | None:
        return self.proc.poll()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> None:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class LocalExecutor:
    name = "local"

    def __init__(self, settings: Settings):
        self.settings = settings

    def launch(self, job_id: str, attempt: int, env: dict) -> LocalHandle:
        d = self.settings.jobs_dir / job_id
        log = open(d / "worker.log", "ab")  # noqa: SIM115 - handed to the child
        try:
            p = subprocess.Popen([sys.executable, "-m", "afinar.jobs.worker", job_id],
                                 env=dict(os.environ, **env), stdout=log,
                                 stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 preexec_fn=_pdeathsig if sys.platform == "linux" else None)
        finally:
            log.close()
        return LocalHandle(p)

    def adopt(self, job_id: str, attempt: int, pid: int | None):
        """A worker a previous server left running (none: they die with the server)."""
        if not pid or pid < 0:
            return None
        try:
            alive = job_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            alive = False
        return _Orphan(pid) if alive else None


def adopt_process(pid: int | None):
    """A job run in the foreground by another process (the CLI, the SDK) while it lives."""
    return _Orphan(pid) if pid and pid > 0 and Path(f"/proc/{pid}").exists() else None


class _Orphan:
    """A local worker this server did not start: watched through /proc."""

    def __init__(self, pid: int):
        self.pid = pid

    def poll(self) -> int | None:
        return None if Path(f"/proc/{self.pid}").exists() else 0

    def terminate(self) -> None:
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass

    def wait(self, timeout: float) -> None:
        pass


class RayHandle:
    pid = REMOTE_PID

    def __init__(self, client, submission_id: str, log: Path):
        self.client, self.sid, self.log = client, submission_id, log
        self.code: int | None = None

    def poll(self) -> int | None:
        from ray.job_submission import JobStatus

        if self.code is not None:
            return self.code
        try:
            info = self.client.get_job_info(self.sid)
        except Exception:  # the cluster does not answer now: ask again at the next poll
            return None
        if info.status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return None
        try:
            self.log.write_text(self.client.get_job_logs(self.sid), encoding="utf-8")
        except Exception:  # logs are a courtesy; the job's events are in the store
            pass
        if info.status == JobStatus.STOPPED:
            self.code = -int(signal.SIGTERM)
        else:
            self.code = info.driver_exit_code if info.driver_exit_code is not None else (
                0 if info.status == JobStatus.SUCCEEDED else 1)
        return self.code

    def terminate(self) -> None:
        """Server shutdown: a Ray job keeps running on the cluster; the next start adopts it."""

    def wait(self, timeout: float) -> None:
        pass

    def stop(self) -> None:
        self.client.stop_job(self.sid)


class RayExecutor:
    name = "ray"

    def __init__(self, settings: Settings):
        try:
            from ray.job_submission import JobSubmissionClient
        except ImportError as e:
            raise ConfigError("executor = \"ray\" needs Ray's job submission client",
                              hint="pip install 'ray[default]' (the server and the cluster "
                                   "nodes), or set executor = \"local\"") from e
        self.settings = settings
        try:
            self.client = JobSubmissionClient(settings.ray_address)
        except Exception as e:  # ConnectionError, ValueError, ... from Ray's client
            raise ConfigError(f"cannot reach the Ray cluster at ray_address "
                              f"{settings.ray_address}: {e}",
                              hint="start one (ray start --head) or point ray_address at its "
                                   "dashboard, e.g. http://head-node:8265") from None

    @staticmethod
    def submission_id(job_id: str, attempt: int) -> str:
        return f"afinar-{job_id}-{attempt}"

    def launch(self, job_id: str, attempt: int, env: dict) -> RayHandle:
        python = self.settings.ray_python or sys.executable
        sid = self.submission_id(job_id, attempt)
        self.client.submit_job(entrypoint=f"{python} -m afinar.jobs.worker {job_id}",
                               submission_id=sid, runtime_env={"env_vars": env},
                               metadata={"afinar_job": job_id})
        return RayHandle(self.client, sid, self.settings.jobs_dir / job_id / "worker.log")

    def adopt(self, job_id: str, attempt: int, pid: int | None):
        """The Ray job of this attempt, if it still runs on the cluster."""
        from ray.job_submission import JobStatus

        if pid != REMOTE_PID:
            return None
        sid = self.submission_id(job_id, attempt)
        try:
            status = self.client.get_job_status(sid)
        except Exception:  # unknown to the cluster (restarted, or never submitted)
            return None
        if status in (JobStatus.PENDING, JobStatus.RUNNING):
            return RayHandle(self.client, sid, self.settings.jobs_dir / job_id / "worker.log")
        return None


def make_executor(settings: Settings):
    return RayExecutor(settings) if settings.executor == "ray" else LocalExecutor(settings)
