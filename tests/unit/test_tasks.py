"""Task workers, the pure parts: the dispatcher's choice, the master's book of who holds
which task, and the shared task load."""

from __future__ import annotations

import os
import pickle
import threading

from hypothesis import given
from hypothesis import strategies as st

from swoolish.core.errors import TaskError
from swoolish.core.messages import Task
from swoolish.core.tasks import Deliver, Fail, Retire, TaskBook, choose_slot
from swoolish.shared.taskload import TaskLoad
from swoolish.worker.taskworker import _encode_error


def task(n: int, slot: int = 0, sender: int = 100) -> Task:
    return Task(n, 0, sender, slot, b"")


# -- choose_slot


def test_the_least_busy_slot_with_room_wins():
    assert choose_slot([3, 1, 2], bound=4) == 1
    assert choose_slot([4, 4, 3], bound=4) == 2


def test_ties_go_to_the_first_from_the_rotation_start():
    assert choose_slot([0, 0, 0], bound=1, start=0) == 0
    assert choose_slot([0, 0, 0], bound=1, start=2) == 2
    assert choose_slot([0, 0, 0], bound=1, start=4) == 1


def test_none_when_every_slot_is_full():
    assert choose_slot([2, 2], bound=2) is None


def test_a_named_slot_is_taken_only_with_room():
    assert choose_slot([0, 5], bound=5, dst=0) == 0
    assert choose_slot([0, 5], bound=5, dst=1) is None
    assert choose_slot([0, 5], bound=5, dst=7) is None


def test_a_slot_without_a_task_worker_is_passed_over_while_one_with_a_worker_has_room():
    assert choose_slot([0, 3], bound=4, live=[False, True]) == 1
    assert choose_slot([0, 4], bound=4, live=[False, True]) == 0  # it waits there, bounded
    assert choose_slot([0, 3], bound=4, dst=0, live=[False, True]) == 0  # asked for
    assert choose_slot([2, 1], bound=4, live=[False, False]) == 1  # none up: by load


@given(st.lists(st.integers(0, 5), min_size=1, max_size=8), st.integers(1, 6), st.integers(0, 20))
def test_the_choice_is_never_fuller_than_another_with_room(loads, bound, start):
    slot = choose_slot(loads, bound, start=start)
    if slot is None:
        assert all(load >= bound for load in loads)
    else:
        assert loads[slot] < bound
        assert loads[slot] == min(load for load in loads if load < bound)


# -- TaskBook


def test_tasks_wait_for_their_slot_until_its_task_worker_is_ready():
    book = TaskBook(2)
    assert book.submit(task(1, slot=1)) == []
    assert book.ready(0, 10) == []
    assert book.ready(1, 11) == [Deliver(11, task(1, slot=1))]
    assert book.holding(11) == 1


def test_an_answer_ends_a_task_once():
    book = TaskBook(1)
    book.ready(0, 10)
    book.submit(task(1))
    assert book.answered(10, 100, 1) == task(1)
    assert book.answered(10, 100, 1) is None
    assert book.holding(10) == 0


def test_a_task_worker_that_dies_fails_every_task_it_held_and_takes_no_more():
    book = TaskBook(1)
    book.ready(0, 10)
    book.submit(task(1))
    book.submit(task(2, sender=101))
    fails = book.gone(10, "task worker 1 (pid 10) exited (killed by SIGKILL)")
    assert {f.task.task_id for f in fails if isinstance(f, Fail)} == {1, 2}
    assert all("SIGKILL" in f.reason for f in fails if isinstance(f, Fail))
    assert book.answered(10, 100, 1) is None  # a late answer is not a second ending
    assert book.submit(task(3)) == []  # waits for the replacement
    assert book.ready(0, 20) == [Deliver(20, task(3))]


def test_a_successor_takes_new_tasks_and_the_old_one_finishes_what_it_holds():
    book = TaskBook(1)
    book.ready(0, 10)
    book.submit(task(1))
    assert book.ready(0, 20) == [Retire(10)]
    assert book.submit(task(2)) == [Deliver(20, task(2))]
    assert book.answered(10, 100, 1) == task(1)  # the old one still answers its own
    assert book.gone(10, "exited") == []


def test_a_refused_delivery_fails_the_task():
    book = TaskBook(1)
    book.ready(0, 10)
    book.submit(task(1))
    assert book.undeliverable(10, task(1), "full") == [Fail(task(1), "full")]
    assert book.holding(10) == 0


def test_shutdown_fails_waiting_and_new_tasks():
    book = TaskBook(1)
    book.submit(task(1))
    assert book.close() == [Fail(task(1), "the server is shutting down")]
    assert book.submit(task(2)) == [Fail(task(2), "the server is shutting down")]
    assert book.ready(0, 10) == []


def test_an_unknown_slot_fails_at_once():
    assert TaskBook(1).submit(task(1, slot=3)) == [Fail(task(1, slot=3), "no task worker 3")]


@given(st.lists(st.tuples(st.sampled_from("srgad"), st.integers(0, 5)), max_size=40))
def test_every_task_ends_exactly_once(events):
    """Whatever happens to task workers, each submitted task ends once: answered or
    failed, never both, never twice, and none is left once every worker is gone."""
    book = TaskBook(1)
    ended: list[int] = []
    pid = 1
    submitted = 0
    live = {pid}
    book.ready(0, pid)

    def run(actions):
        for action in actions:
            if isinstance(action, Fail):
                ended.append(action.task.task_id)

    for kind, n in events:
        if kind == "s":
            submitted += 1
            run(book.submit(task(submitted)))
        elif kind == "r":
            pid += 1
            live.add(pid)
            run(book.ready(0, pid))
        elif kind == "a":
            for holder in list(live):
                for key in list(book.held.get(holder, {}))[:1]:
                    if book.answered(holder, *key) is not None:
                        ended.append(key[1])
        elif kind in "gd" and live:
            victim = sorted(live)[n % len(live)]
            live.discard(victim)
            run(book.gone(victim, "gone"))
    for holder in list(live):
        run(book.gone(holder, "gone"))
    run(book.close())
    assert sorted(ended) == list(range(1, submitted + 1))


# -- TaskLoad


def test_the_load_counts_claims_and_completions():
    load = TaskLoad(2)
    assert load.claim(bound=1) == 0
    assert load.claim(bound=1) == 1
    assert load.claim(bound=1) is None
    load.complete(0)
    assert load.loads() == [0, 1]
    assert load.claim(bound=1, dst=0) == 0
    load.unclaim(0)
    assert load.loads() == [0, 1]


def test_the_load_is_shared_with_forked_processes():
    load = TaskLoad(1)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os._exit(0 if load.claim(bound=5) == 0 else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert load.loads() == [1]


class _Unprintable(Exception):
    """An app's exception that can be neither pickled nor turned into a string."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()  # not picklable

    def __str__(self) -> str:
        raise RuntimeError("no message")


def test_an_error_that_cannot_be_pickled_nor_printed_is_still_answered():
    """The task's answer is a TaskError naming the exception's type (before: encoding
    it raised, the task was never answered, and its queue place stayed taken)."""
    error = pickle.loads(_encode_error(_Unprintable()))
    assert isinstance(error, TaskError)
    assert str(error).startswith("_Unprintable: (its message could not be read")
    long = pickle.loads(_encode_error(ValueError("x" * 10_000_000, threading.Lock())))
    assert len(str(long)) < 100_000


def test_a_dead_senders_claims_that_never_arrived_are_counted_off():
    """The master reaps a sender: what it claimed beyond what reached the master
    completes, and its row is free (and cleared) for the next sender."""
    load = TaskLoad(2, senders=1)
    row = load.take_row()
    assert row == 0 and load.take_row() is None
    load.row = row  # as in the forked event worker
    for _ in range(3):
        assert load.claim(bound=4, dst=0) == 0
    assert load.claim(bound=4, dst=1) == 1
    load.claim(bound=4, dst=1)
    load.unclaim(1)  # never left the sender: not in transit either
    load.row = None
    # one task of slot 0 reached the master (and is still held); the rest never will
    assert load.sender_gone(row, [1, 0]) == [2, 1]
    assert load.loads() == [1, 0]
    assert load.take_row() == 0
    assert load.sender_gone(0, [0, 0]) == [0, 0], "the row was not cleared"
