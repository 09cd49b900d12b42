"""The worker's connection deadlines (swoolish.worker.deadlines): coarse buckets, one
loop timer, never early, never a withdrawn one."""

from __future__ import annotations

from typing import Any

from unit.test_connection_fuzz import FakeLoop

from swoolish.worker.deadlines import RESOLUTION, Deadlines


class ManualLoop(FakeLoop):
    """The connection tests' fake loop with its clock at 1000 s, the exception handler's
    reports kept, and ``run_until``: fire the timers due by then, in order, as a loop
    would."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 1000.0
        self.errors: list[dict[str, Any]] = []

    def call_exception_handler(self, context: dict[str, Any]) -> None:
        self.errors.append(context)

    def run_until(self, until: float) -> None:
        while True:
            due = sorted((h for h in self.pending() if h.when <= until), key=lambda h: h.when)
            if not due:
                self.now = until
                return
            handle = due[0]
            handle.cancelled = True  # fired: a handle fires once
            self.now = max(self.now, handle.when)
            handle.callback(*handle.args)


class Conn:
    """What a connection does when its deadline passes: notes the time."""

    def __init__(self, loop: ManualLoop, action: Any = None) -> None:
        self.loop, self.action, self.called_at = loop, action, []

    def deadline_passed(self) -> None:
        self.called_at.append(self.loop.time())
        if self.action is not None:
            self.action()


def test_a_deadline_passes_at_its_time_or_within_a_resolution_after_it_never_before():
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    conns = {}
    for i in range(200):
        when = loop.now + 0.5 + i * 0.0073
        conns[when] = Conn(loop)
        deadlines.file(conns[when], when)
    loop.run_until(loop.now + 5)
    for when, conn in conns.items():
        assert len(conn.called_at) == 1
        assert when <= conn.called_at[0] <= when + RESOLUTION + 0.002


def test_many_deadlines_wait_on_one_loop_timer():
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    for i in range(1_000):
        deadlines.file(Conn(loop), loop.now + 10 + i * 0.001)
    assert len(loop.pending()) == 1
    deadlines.file(Conn(loop), loop.now + 1)  # earlier than all: the timer moves
    assert len(loop.pending()) == 1 and loop.pending()[0].when <= loop.now + 1 + RESOLUTION + 0.002


def test_a_withdrawn_deadline_never_passes():
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    kept, withdrawn = Conn(loop), Conn(loop)
    deadlines.file(kept, loop.now + 1)
    tick = deadlines.file(withdrawn, loop.now + 1)
    deadlines.withdraw(withdrawn, tick)
    loop.run_until(loop.now + 3)
    assert len(kept.called_at) == 1 and withdrawn.called_at == []
    assert len(deadlines) == 0


def test_what_a_call_withdraws_from_its_own_bucket_is_not_called():
    """Closing one connection may cancel another's deadline due in the same bucket."""
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    victims: list[tuple[Conn, int]] = []

    def withdraw_the_others() -> None:
        for other, tick in victims:
            deadlines.withdraw(other, tick)

    conns = [Conn(loop, withdraw_the_others) for _ in range(10)]
    for conn in conns:
        victims.append((conn, deadlines.file(conn, loop.now + 1)))
    loop.run_until(loop.now + 3)
    assert sum(len(c.called_at) for c in conns) == 1


def test_a_deadline_filed_again_at_once_waits_for_a_later_turn():
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]
    conn = Conn(loop)
    conn.action = lambda: deadlines.file(conn, loop.time()) if len(conn.called_at) < 3 else None
    deadlines.file(conn, loop.now + 1)
    start = loop.now
    loop.run_until(loop.now + 3)
    assert len(conn.called_at) == 3
    # each filing went to a later bucket than the one being fired
    assert conn.called_at[0] < conn.called_at[1] < conn.called_at[2] <= start + 1 + 4 * RESOLUTION


def test_a_failing_call_is_reported_and_the_others_still_pass():
    loop = ManualLoop()
    deadlines = Deadlines(loop)  # type: ignore[arg-type]

    def fail() -> None:
        raise RuntimeError("boom")

    conns = [Conn(loop, fail if i == 3 else None) for i in range(8)]
    for conn in conns:
        deadlines.file(conn, loop.now + 1)
    loop.run_until(loop.now + 2)
    assert all(len(c.called_at) == 1 for c in conns)
    assert [str(e["exception"]) for e in loop.errors] == ["boom"]
