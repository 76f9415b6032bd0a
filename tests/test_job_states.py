"""The job state table: allowed moves pass, illegal ones are typed errors."""

from __future__ import annotations

import pytest

from afinar.jobs.states import ALLOWED, FINAL, IllegalTransition, JobStatus, check_transition


def test_transitions():
    check_transition("j", "InProgress", "Stopping")
    check_transition("j", "Stopping", "Stopped")
    check_transition("j", "Stopping", "Completed")  # a stop that came after the last step
    for final in FINAL:
        assert ALLOWED[final] == set()
        with pytest.raises(IllegalTransition, match=f"from {final} to InProgress"):
            check_transition("j", final, "InProgress")
    with pytest.raises(IllegalTransition, match="leads only to"):
        check_transition("j", "Completed", "Failed")
    with pytest.raises(ValueError):
        check_transition("j", "InProgress", "Paused")
    assert set(ALLOWED) == set(JobStatus)
