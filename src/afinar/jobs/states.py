"""Job states and the transitions allowed between them (Bedrock's status names).

    InProgress --stop--> Stopping --> Stopped
        |                    |
        +--> Completed <-----+   (a stop that arrives after the last step)
        +--> Failed    <-----+
        +--> Stopped             (stopped before a worker picked it up)

Completed is final. A Failed or Stopped job may be resumed (back to InProgress): its worker
starts again from the last checkpoint it kept. Each phase of a job (validation, data processing,
training) has its own status: NotStarted, InProgress, Completed, Stopping, Stopped, Failed.
"""

from __future__ import annotations

from enum import StrEnum

from afinar.errors import AfinarError


class JobStatus(StrEnum):
    IN_PROGRESS = "InProgress"
    STOPPING = "Stopping"
    COMPLETED = "Completed"
    FAILED = "Failed"
    STOPPED = "Stopped"


ACTIVE = (JobStatus.IN_PROGRESS, JobStatus.STOPPING)
FINAL = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.STOPPED)
PHASES = ("validationDetails", "dataProcessingDetails", "trainingDetails")

ALLOWED: dict[JobStatus, set[JobStatus]] = {
    JobStatus.IN_PROGRESS: {JobStatus.STOPPING, JobStatus.COMPLETED, JobStatus.FAILED,
                            JobStatus.STOPPED},
    JobStatus.STOPPING: {JobStatus.STOPPED, JobStatus.COMPLETED, JobStatus.FAILED},
    JobStatus.COMPLETED: set(),
    JobStatus.FAILED: {JobStatus.IN_PROGRESS},  # resume
    JobStatus.STOPPED: {JobStatus.IN_PROGRESS},  # resume
}


class IllegalTransition(AfinarError):
    """A job was asked to move to a state its current state does not lead to."""


def check_transition(job_id: str, current: str, new: str) -> None:
    cur, nxt = JobStatus(current), JobStatus(new)
    if nxt == cur:
        return
    if nxt not in ALLOWED[cur]:
        raise IllegalTransition(f"job {job_id} cannot go from {cur} to {nxt}",
                                hint=f"{cur} leads only to: "
                                     f"{', '.join(sorted(ALLOWED[cur])) or 'nothing (final)'}")
