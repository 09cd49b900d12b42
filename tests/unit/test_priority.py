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
