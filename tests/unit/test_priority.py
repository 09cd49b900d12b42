"""swoolish.shared.priority: a process that could not take its priority back keeps it."""

from __future__ import annotations

import os
import resource

import pytest

from swoolish.shared import priority


def test_without_a_way_back_the_priority_is_left_alone(monkeypatch) -> None:
    monkeypatch.setattr(priority, "_capable", lambda capability: False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (0, 0))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    assert priority.lower_while_booting() is False
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    priority.restore_after_boot()  # nothing to take back
    assert os.getpriority(os.PRIO_PROCESS, 0) == before


@pytest.mark.parametrize(
    ("rlimit", "base", "allowed"),
    [(20, 0, True), (19, 0, False), (19, 1, True), (0, 19, False), (40, -20, True)],
)
def test_rlimit_nice_ceiling_is_20_minus_its_value(monkeypatch, rlimit, base, allowed) -> None:
    """setrlimit(2): RLIMIT_NICE lets a process raise its nice value up to 20 - rlim_cur."""
    monkeypatch.setattr(priority, "_capable", lambda capability: False)
    monkeypatch.setattr(resource, "getrlimit", lambda which: (rlimit, rlimit))
    assert priority._may_raise_to(base) is allowed


def test_a_worker_steps_back_once_and_for_good() -> None:
    """step_back lowers the calling process by HANDOFF_NICENESS, once however often it
    is called (a hand-off can have several rounds); run in a child, which exits."""
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            base = os.getpriority(os.PRIO_PROCESS, 0)
            priority.step_back()
            priority.step_back()
            expected = min(19, base + priority.HANDOFF_NICENESS)
            code = 0 if os.getpriority(os.PRIO_PROCESS, 0) == expected else 3
        finally:
            os._exit(code)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0
