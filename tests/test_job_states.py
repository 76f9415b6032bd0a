"""The job state table: allowed moves pass, illegal ones are typed errors."""

from __future__ import annotations

import pytest

from afinar.jobs.states import ALLOWED, FINAL, IllegalTransition, JobStatus, check_transition


def test_transitions():
    check_transition("j", "InProgress", "Stopping")
    check_transition("j", "Stopping", "Stopped")
    check_transition("j", "Stopping", "Completed")  # a stop that came after the last step
    for final in FINAL:
        assert ALLOWED[final] <= {JobStatus.IN_PROGRESS}  # at most a resume
        with pytest.raises(IllegalTransition, match=f"from {final} to Stopping"):
            check_transition("j", final, "Stopping")
    assert ALLOWED[JobStatus.COMPLETED] == set()
    with pytest.raises(IllegalTransition, match="from Completed to InProgress"):
        check_transition("j", "Completed", "InProgress")
    check_transition("j", "Failed", "InProgress")  # resume
    check_transition("j", "Stopped", "InProgress")
    with pytest.raises(IllegalTransition, match="leads only to"):
        check_transition("j", "Completed", "Failed")
    with pytest.raises(ValueError):
        check_transition("j", "InProgress", "Paused")
    assert set(ALLOWED) == set(JobStatus)
