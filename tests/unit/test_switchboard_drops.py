"""Operations the master's switchboard drops for a worker id no process serves (a task
worker or user process between a crash and its restart) are counted and logged, once
per episode, as every other drop of routed operations is (docs/design.md, "Channels")."""

from __future__ import annotations

import logging

import pytest

from swoolish.core.messages import Pipe, ToSlot
from swoolish.core.switchboard import Switchboard

PROCESS_SLOT = 2  # the id of a user process after two event workers
PID = 4321


def pipe(n: int) -> Pipe:
    return Pipe(0, b"message %d" % n)


@pytest.fixture
def switchboard() -> Switchboard:
    return Switchboard(lambda sid: None)


def drop_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_drops_for_a_worker_id_nobody_serves_are_logged_once_per_episode(switchboard, caplog):
    """1. 100 routes to the user process while it restarts (no pid)  2. every operation
    is counted, and one warning names the worker id  3. it serves again: its routes go
    to it, nothing is logged  4. it dies again: a new episode, a new line."""
    serving = {PROCESS_SLOT: 0}
    caplog.set_level(logging.WARNING, logger="swoolish.master")

    def route(n: int):
        return switchboard.route(ToSlot(PROCESS_SLOT), [pipe(n)], serving.get, now=0.0)

    assert all(route(n) == [] for n in range(100))
    assert switchboard.dropped == 100
    (line,) = drop_lines(caplog)
    assert line.startswith(f"worker {PROCESS_SLOT} has no process now")
    assert "routed_dropped" in line

    serving[PROCESS_SLOT] = PID
    assert route(100) == [(PID, [pipe(100)])]
    assert len(drop_lines(caplog)) == 1 and switchboard.dropped == 100

    serving[PROCESS_SLOT] = 0
    assert route(101) == [] and route(102) == []
    assert len(drop_lines(caplog)) == 2 and switchboard.dropped == 102


def test_each_worker_id_nobody_serves_has_its_own_line(switchboard, caplog):
    caplog.set_level(logging.WARNING, logger="swoolish.master")
    for slot in (2, 3, 2, 3):
        switchboard.route(ToSlot(slot), [pipe(slot)], lambda slot: 0, now=0.0)
    lines = drop_lines(caplog)
    assert [line.split(" has ")[0] for line in lines] == ["worker 2", "worker 3"]
    assert switchboard.dropped == 4
