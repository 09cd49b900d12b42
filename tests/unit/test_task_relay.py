"""The master's task relay when a sender's channel refuses its answers: a live sender
that does not read is owed a TaskError per refused result, delivered once its queue
empties; a sender that exited is counted apart (docs/tasks.md, "Faults")."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest

from swoolish.core.errors import TaskError
from swoolish.core.messages import Message, Task, TaskResult
from swoolish.master import tasks as relay_module
from swoolish.master.tasks import TaskRelay

SENDER = 100
TASK_WORKER = 200


class Channels:
    """The master's side, faked: which pids take messages now, and their drains."""

    def __init__(self) -> None:
        self.full: set[int] = set()
        self.gone: set[int] = set()
        self.got: dict[int, list[Message]] = {}
        self.waiting: dict[int, list[Callable[[], None]]] = {}

    def send(self, pid: int, message: Message, essential: bool) -> bool:
        if pid in self.full or pid in self.gone:
            return False
        self.got.setdefault(pid, []).append(message)
        return True

    def when_drained(self, pid: int, callback: Callable[[], None]) -> bool:
        if pid in self.gone or pid not in self.full:
            return False
        self.waiting.setdefault(pid, []).append(callback)
        return True

    def drain(self, pid: int) -> None:
        self.full.discard(pid)
        for callback in self.waiting.pop(pid, []):
            callback()

    def close(self, pid: int) -> None:
        self.gone.add(pid)
        for callback in self.waiting.pop(pid, []):
            callback()


@pytest.fixture
def relay_and_channels() -> tuple[TaskRelay, Channels]:
    channels = Channels()
    relay = TaskRelay(1, 1, channels.send, lambda pid: None, channels.when_drained)
    relay.ready(TASK_WORKER, 1, 1)
    return relay, channels


def run(relay: TaskRelay, task_id: int, value: object = "done") -> None:
    """A task claimed in the load, as its sender does, delivered and answered."""
    assert relay.load is not None and relay.load.claim(1024) == 0
    relay.submitted(Task(task_id, 0, SENDER, 0, b""))
    relay.answered(TASK_WORKER, TaskResult(task_id, SENDER, 0, True, pickle.dumps(value)))


def answers(channels: Channels) -> list[tuple[int, object]]:
    return [
        (m.task_id, pickle.loads(m.payload))
        for m in channels.got.get(SENDER, [])
        if isinstance(m, TaskResult)
    ]


def test_a_live_sender_gets_an_error_for_each_refused_result_once_it_reads(
    relay_and_channels, caplog
):
    relay, channels = relay_and_channels
    run(relay, 1)
    channels.full.add(SENDER)
    run(relay, 2)
    run(relay, 3)
    assert relay.results_refused == 2 and relay.results_dropped == 0
    assert [n for n, _ in answers(channels)] == [1]
    assert len([r for r in caplog.records if "not reading its channel" in r.message]) == 1
    channels.drain(SENDER)
    got = answers(channels)
    assert [n for n, _ in got] == [1, 2, 3]
    for _, error in got[1:]:
        assert isinstance(error, TaskError) and "did not read its channel" in str(error)
    assert relay.owed == {} and relay.load is not None and relay.load.loads() == [0]
    # A new episode is logged again, once.
    channels.full.add(SENDER)
    run(relay, 4)
    assert len([r for r in caplog.records if "not reading its channel" in r.message]) == 2


def test_a_sender_that_exited_is_counted_dropped(relay_and_channels):
    relay, channels = relay_and_channels
    channels.gone.add(SENDER)
    run(relay, 1)
    assert relay.results_dropped == 1 and relay.results_refused == 0 and relay.owed == {}


def test_what_a_sender_that_exits_while_owed_is_forgotten(relay_and_channels):
    relay, channels = relay_and_channels
    channels.full.add(SENDER)
    run(relay, 1)
    channels.close(SENDER)
    assert relay.owed == {} and relay.results_refused == 1


def test_past_the_limit_refused_results_get_no_error(relay_and_channels, monkeypatch, caplog):
    monkeypatch.setattr(relay_module, "OWED_LIMIT", 2)
    relay, channels = relay_and_channels
    channels.full.add(SENDER)
    for n in range(1, 6):
        run(relay, n)
    assert relay.results_refused == 5
    assert len(relay.owed[SENDER]) <= 2 * 2 + 2  # bounded: the limit and one marker
    assert len([r for r in caplog.records if "the next ones get no error" in r.message]) == 1
    channels.drain(SENDER)
    assert [n for n, _ in answers(channels)] == [1, 2]


def test_a_reaped_sender_gives_back_the_load_of_tasks_lost_in_its_channel(relay_and_channels):
    """Two tasks claimed, one received and held by the task worker: the reap counts the
    other off, and the load is what the task worker holds."""
    relay, _ = relay_and_channels
    load = relay.load
    assert load is not None
    row = load.take_row()
    load.row = row  # as in the forked event worker
    assert load.claim(1024) == 0 and load.claim(1024) == 0
    load.row = None
    relay.submitted(Task(1, 0, SENDER, 0, b""))
    relay.sender_gone(SENDER, 0, row)
    assert relay.lost == 1 and load.loads() == [1] and relay.received == {}
    assert relay.book.holding(TASK_WORKER) == 1


def test_tasks_waiting_for_a_slot_without_a_task_worker_fail_after_slot_wait(
    relay_and_channels, caplog
):
    """The task worker is gone and no successor is ready: the load says so to senders,
    and what waits for the slot fails once it has been empty for SLOT_WAIT (logged once
    per episode); a ready successor ends the episode."""
    relay, channels = relay_and_channels
    assert relay.load is not None and relay.load.live() == [True]
    relay.gone(TASK_WORKER, 1, "exited (killed by SIGKILL)")
    assert relay.load.live() == [False]
    relay.submitted(Task(1, 0, SENDER, 0, b""))
    relay.expire(100.0)
    relay.expire(100.0 + relay_module.SLOT_WAIT - 0.1)
    assert answers(channels) == []
    relay.expire(100.0 + relay_module.SLOT_WAIT)
    relay.submitted(Task(2, 0, SENDER, 0, b""))
    relay.expire(100.0 + relay_module.SLOT_WAIT + 0.5)
    got = answers(channels)
    assert [n for n, _ in got] == [1, 2]
    assert all(isinstance(e, TaskError) and "task worker 1 is not up" in str(e) for _, e in got)
    assert len([r for r in caplog.records if "has not been up" in r.message]) == 1
    relay.ready(TASK_WORKER + 1, 1, 1)
    relay.expire(200.0)
    assert relay.load.live() == [True] and relay.empty_since == {} and relay.expired == set()
