"""Unit tests for the timer wheel and the Timer facade, driven by a fake clock (no sleeping)."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from swoolish.core.timerwheel import ERROR_LOG_WINDOW, TimerWheel
from swoolish.worker import timers
from swoolish.worker.timers import Timer, uvloop_wheel

START = 1000.0  # binary-exact start and intervals (250/500 ms) keep deadline equality exact


class FakeClock:
    """A controllable clock that also plays the event loop's part for the wheel.

    ``wakeup`` records the requested deadline like a single ``call_at`` handle would, and
    ``advance`` calls ``run_due`` for as long as that deadline has been reached.
    """

    def __init__(self, start: float = START) -> None:
        self.now = start
        self.requested: float | None = None
        self.wakeups: list[float | None] = []
        self.passes: list[int] = []
        self.wheel: TimerWheel | None = None

    def __call__(self) -> float:
        return self.now

    def wakeup(self, deadline: float | None) -> None:
        self.requested = deadline
        self.wakeups.append(deadline)

    def advance(self, seconds: float) -> None:
        assert self.wheel is not None
        self.now += seconds
        for _ in range(100_000):
            if self.requested is None or self.requested > self.now:
                return
            self.requested = None  # consumed, like a call_at handle that fired
            self.passes.append(self.wheel.run_due())
        raise AssertionError("wheel keeps asking to be woken up: runaway loop")


class FakeTask:
    """Just enough of asyncio.Task for the wheel's bookkeeping."""

    def __init__(self, coro: Any) -> None:
        self.coro = coro
        self._callbacks: list[Callable[[FakeTask], None]] = []
        self._done = False
        self._cancelled = False
        self._exc: BaseException | None = None

    def add_done_callback(self, fn: Callable[[FakeTask], None]) -> None:
        self._callbacks.append(fn)

    def done(self) -> bool:
        return self._done

    def cancelled(self) -> bool:
        return self._cancelled

    def exception(self) -> BaseException | None:
        return self._exc

    def finish(self, exc: BaseException | None = None, cancelled: bool = False) -> None:
        self.coro.close()
        self._done, self._exc, self._cancelled = True, exc, cancelled
        for fn in self._callbacks:
            fn(self)


def make_wheel(clock: FakeClock, **kwargs: Any) -> TimerWheel:
    wheel = TimerWheel(clock, clock.wakeup, **kwargs)
    clock.wheel = wheel
    return wheel


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def wheel(clock: FakeClock) -> TimerWheel:
    return make_wheel(clock)


@pytest.fixture
def installed(wheel: TimerWheel):
    timers.install(wheel)
    yield wheel
    timers.uninstall()


def _noop(*args: Any) -> None:
    pass


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def __call__(self, *args: Any) -> None:
        self.calls.append(args)


# -- basic firing --------------------------------------------------------------------------------


def test_after_passes_args_once(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    tid = wheel.after(250, rec, "a", 2)
    clock.advance(0.249)
    assert rec.calls == []
    clock.advance(0.001)
    assert rec.calls == [("a", 2)]
    clock.advance(10)
    assert rec.calls == [("a", 2)]
    assert wheel.list() == []
    assert wheel.info(tid) is None
    assert wheel.clear(tid) is False


def test_tick_gets_id_first_and_fires_once_per_interval(
    clock: FakeClock, wheel: TimerWheel
) -> None:
    rec = Recorder()
    tid = wheel.tick(250, rec, "x", 1)
    for _ in range(5):
        clock.advance(0.25)
    assert rec.calls == [(tid, "x", 1)] * 5
    assert wheel.info(tid)["exec_count"] == 5


def test_tick_cleared_in_own_callback_stops(clock: FakeClock, wheel: TimerWheel) -> None:
    runs: list[int] = []
    cleared: list[bool] = []

    def cb(timer_id: int) -> None:
        runs.append(timer_id)
        if len(runs) == 3:
            cleared.append(wheel.clear(timer_id))

    tid = wheel.tick(250, cb)
    for _ in range(10):
        clock.advance(0.25)
    assert runs == [tid] * 3
    assert cleared == [True]
    assert wheel.list() == []
    assert clock.requested is None


def test_after_cleared_in_own_callback_reports_false(clock: FakeClock, wheel: TimerWheel) -> None:
    seen: list[bool] = []
    tid = wheel.after(250, lambda: seen.append(wheel.clear(tid)))
    clock.advance(0.25)
    assert seen == [False]  # already spent by the time it runs


def test_timers_fire_in_deadline_order(clock: FakeClock, wheel: TimerWheel) -> None:
    order: list[str] = []
    wheel.after(500, order.append, "b")
    wheel.after(250, order.append, "a")
    wheel.after(500, order.append, "c")  # same deadline as "b": creation order wins
    clock.advance(1)
    assert order == ["a", "b", "c"]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["tick", "after"])
@pytest.mark.parametrize("ms", [0, -5, 0.5, -0.0, math.nan, math.inf])
def test_interval_below_one_ms_is_value_error(wheel: TimerWheel, method: str, ms: float) -> None:
    with pytest.raises(ValueError, match="Timer interval must be a finite number of ms >= 1, got"):
        getattr(wheel, method)(ms, _noop)


def test_interval_error_message_names_value(wheel: TimerWheel) -> None:
    with pytest.raises(
        ValueError, match=r"^Timer interval must be a finite number of ms >= 1, got 0$"
    ):
        wheel.tick(0, _noop)
    with pytest.raises(ValueError, match=r"got -5$"):
        wheel.tick(-5, _noop)
    with pytest.raises(ValueError, match=r"finite number of ms >= 1, got inf$"):
        wheel.after(math.inf, _noop)


@pytest.mark.parametrize("ms", [True, False, "10", None, b"1", [5]])
def test_interval_of_wrong_type_is_type_error(wheel: TimerWheel, ms: Any) -> None:
    with pytest.raises(TypeError, match="Timer interval"):
        wheel.tick(ms, _noop)


@pytest.mark.parametrize("method", ["tick", "after"])
def test_non_callable_is_type_error(wheel: TimerWheel, method: str) -> None:
    with pytest.raises(TypeError, match="callback must be callable, got str"):
        getattr(wheel, method)(10, "not a function")


@pytest.mark.parametrize(
    ("bind", "exc"),
    [("3", TypeError), (True, TypeError), (1.5, TypeError), (0, ValueError), (-2, ValueError)],
)
def test_bad_bind(wheel: TimerWheel, bind: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc, match="bind"):
        wheel.after(10, _noop, bind=bind)


def test_rejected_calls_leave_no_trace(wheel: TimerWheel) -> None:
    for bad in (lambda: wheel.tick(0, _noop), lambda: wheel.after(5, None)):
        with pytest.raises((TypeError, ValueError)):
            bad()
    with pytest.raises(ValueError):
        wheel.after(5, _noop, bind=0)
    assert wheel.list() == []
    assert wheel.stats()["created"] == 0
    assert wheel.after(5, _noop) == 1


def test_float_interval_accepted(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    wheel.after(1.5, rec)
    clock.advance(0.0015)
    assert rec.calls == [()]


# -- clearing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bogus", [12345, -1, 0, "1", None, 1.0j, [1]])
def test_clear_unknown_or_bogus_is_false(wheel: TimerWheel, bogus: Any) -> None:
    wheel.after(10, _noop)
    assert wheel.clear(bogus) is False
    assert len(wheel.list()) == 1


def test_clear_twice(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    tid = wheel.tick(250, rec)
    assert wheel.clear(tid) is True
    assert wheel.clear(tid) is False
    clock.advance(5)
    assert rec.calls == []
    assert clock.requested is None


def test_clear_all_100k(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    for i in range(100_000):
        wheel.after(250 + i % 1000, rec, i)
    assert len(wheel.list()) == 100_000
    assert wheel.clear_all() == 100_000
    assert wheel.list() == []
    assert clock.wakeups[-1] is None
    assert wheel.next_deadline() is None
    clock.advance(10)
    assert rec.calls == []
    assert wheel.stats()["cleared"] == 100_000
    assert wheel.clear_all() == 0


def test_many_after_then_fire_all(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    for i in range(100_000):
        wheel.after(1 + i % 500, rec, i)
    clock.advance(1)
    assert len(rec.calls) == 100_000
    assert sorted(args[0] for args in rec.calls) == list(range(100_000))
    assert wheel.list() == []


def test_clear_all_inside_callback_stops_the_pass(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    wheel.after(250, lambda: wheel.clear_all())
    wheel.after(250, rec)
    wheel.tick(250, rec)
    clock.advance(0.25)
    assert rec.calls == []
    assert wheel.list() == []
    assert clock.requested is None


def test_ids_are_never_reused(clock: FakeClock, wheel: TimerWheel) -> None:
    first = wheel.after(250, _noop)
    second = wheel.tick(250, _noop)
    wheel.clear(second)
    clock.advance(1)
    wheel.clear_all()
    third = wheel.after(250, _noop)
    assert 0 < first < second < third


def test_heap_is_compacted_when_mostly_cancelled(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    ids = [wheel.after(250 + i, rec, i) for i in range(1000)]
    for tid in ids[:900]:
        wheel.clear(tid)
    assert len(wheel._heap) < 1000  # white-box: dead entries were dropped
    clock.advance(2)
    assert sorted(args[0] for args in rec.calls) == list(range(900, 1000))


# -- binding to sessions -------------------------------------------------------------------------


def test_clear_bound_only_clears_that_session(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    a = wheel.after(250, rec, "a", bind=7)
    b = wheel.tick(250, rec, bind=7)
    c = wheel.after(250, rec, "c", bind=8)
    d = wheel.after(250, rec, "d")
    assert wheel.info(a)["bind"] == 7 and wheel.info(b)["bind"] == 7
    assert wheel.clear_bound(7) == 2
    assert wheel.list() == [c, d]
    assert wheel.clear_bound(7) == 0
    clock.advance(1)
    assert rec.calls == [("c",), ("d",)]
    assert wheel.clear_bound(8) == 0  # index entry went away when "c" fired


def test_cleared_bound_timer_leaves_index(wheel: TimerWheel) -> None:
    tid = wheel.tick(250, _noop, bind=3)
    assert wheel.clear(tid) is True
    assert wheel.clear_bound(3) == 0


def test_bind_to_closed_session_is_quietly_disarmed(clock: FakeClock) -> None:
    wheel = make_wheel(clock, session_alive=lambda fd: fd != 9)
    rec = Recorder()
    dead = wheel.after(250, rec, bind=9)
    dead_tick = wheel.tick(250, rec, bind=9)
    live = wheel.after(250, rec, "live", bind=10)
    assert isinstance(dead, int) and dead > 0
    assert len({dead, dead_tick, live}) == 3
    assert wheel.info(dead) is None
    assert wheel.list() == [live]
    assert wheel.clear(dead) is False
    clock.advance(5)
    assert rec.calls == [("live",)]
    stats = wheel.stats()
    assert stats["bound_to_gone"] == 2
    assert stats["created"] == 1


# -- errors --------------------------------------------------------------------------------------


def test_callback_exception_is_logged_once_per_episode_and_tick_continues(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    """A tick that raises at every fire goes on; its first error is logged with its
    traceback, the next ones for ERROR_LOG_WINDOW seconds are counted only (before:
    a traceback at every fire, 2 MB/s of log for 50 such ticks at 10 ms), and the first
    after the window says how many were not logged."""
    logger = logging.getLogger("test.timers.errors")
    wheel = make_wheel(clock, logger=logger)
    runs: list[int] = []
    other = Recorder()

    def boom(timer_id: int) -> None:
        runs.append(timer_id)
        raise RuntimeError("kaboom")

    tid = wheel.tick(250, boom)
    wheel.after(250, other, "still runs")
    with caplog.at_level(logging.ERROR, logger="test.timers.errors"):
        for _ in range(3):
            clock.advance(0.25)
        fires_in_window = int(ERROR_LOG_WINDOW / 0.25)
        for _ in range(fires_in_window):
            clock.advance(0.25)
    assert runs == [tid] * (3 + fires_in_window)
    assert other.calls == [("still runs",)]
    records = [r for r in caplog.records if r.name == "test.timers.errors"]
    assert len(records) == 2
    for record in records:
        assert f"Timer {tid}" in record.getMessage()
        assert "boom" in record.getMessage()
        assert record.exc_info is not None and record.exc_info[0] is RuntimeError
    assert f"({fires_in_window - 1} more errors of it not logged" in records[1].getMessage()
    assert wheel.stats()["errors"] == 3 + fires_in_window
    assert tid in wheel.list()


# -- scheduling precision ------------------------------------------------------------------------


def test_tick_does_not_drift_when_woken_late(clock: FakeClock, wheel: TimerWheel) -> None:
    fired_at: list[float] = []
    tid = wheel.tick(250, lambda _tid: fired_at.append(clock.now))
    deadlines = [wheel.info(tid)["deadline"]]
    for k, lateness in enumerate((0.03, 0.0, 0.07, 0.01, 0.2), start=1):
        clock.advance(START + 0.25 * k + lateness - clock.now)  # each wakeup comes late
        deadlines.append(wheel.info(tid)["deadline"])
    assert deadlines == [START + 0.25 * k for k in range(1, 7)]
    assert len(fired_at) == 5


def test_late_wheel_does_not_burst(clock: FakeClock, wheel: TimerWheel) -> None:
    rec = Recorder()
    tid = wheel.tick(250, rec)
    clock.advance(2.5)  # ten intervals at once
    assert len(rec.calls) == 1
    info = wheel.info(tid)
    assert info["deadline"] == clock.now + 0.25
    assert info["next_run"] == 0.25
    clock.advance(0.25)
    assert len(rec.calls) == 2


def test_timer_created_in_callback_waits_for_next_pass(clock: FakeClock, wheel: TimerWheel) -> None:
    child = Recorder()

    def parent() -> None:
        wheel.after(1, child)

    wheel.after(250, parent)
    clock.advance(0.25)
    assert clock.passes == [1]
    assert child.calls == []
    assert clock.requested == pytest.approx(clock.now + 0.001)
    clock.advance(0.001)
    assert child.calls == [()]


def test_callback_that_moves_clock_cannot_chain_in_one_pass(
    clock: FakeClock, wheel: TimerWheel
) -> None:
    count = [0]

    def hungry(_tid: int) -> None:
        count[0] += 1
        clock.now += 1  # time passes inside the callback; new work is still for later

    wheel.tick(1, hungry)
    clock.now += 0.001
    assert wheel.run_due() == 1
    assert count[0] == 1


def test_pass_is_bounded(clock: FakeClock) -> None:
    wheel = make_wheel(clock, max_per_pass=2)
    rec = Recorder()
    for i in range(5):
        wheel.after(250, rec, i)
    clock.now += 0.25
    assert wheel.run_due() == 2
    assert clock.requested is not None and clock.requested <= clock.now  # asks to go again
    clock.advance(0)
    assert [c[0] for c in rec.calls] == [0, 1, 2, 3, 4]


def test_run_due_is_not_reentrant(clock: FakeClock, wheel: TimerWheel) -> None:
    inner: list[int] = []
    wheel.after(250, lambda: inner.append(wheel.run_due()))
    clock.advance(0.25)
    assert inner == [0]


def test_wakeup_requested_only_when_earliest_changes(clock: FakeClock, wheel: TimerWheel) -> None:
    first = wheel.after(500, _noop)
    assert clock.wakeups == [START + 0.5]
    wheel.after(1000, _noop)
    assert clock.wakeups == [START + 0.5]
    wheel.after(250, _noop)
    assert clock.wakeups == [START + 0.5, START + 0.25]
    assert wheel.next_deadline() == START + 0.25
    wheel.clear(first)
    assert clock.wakeups == [START + 0.5, START + 0.25]
    clock.advance(0.25)
    assert clock.wakeups[-1] == START + 1.0
    wheel.clear_all()
    assert clock.wakeups[-1] is None


# -- introspection -------------------------------------------------------------------------------


def test_info_fields(clock: FakeClock, wheel: TimerWheel) -> None:
    tid = wheel.tick(500, _noop, bind=5)
    clock.advance(0.5)
    clock.now += 0.125
    assert wheel.info(tid) == {
        "id": tid,
        "type": "tick",
        "interval": 500,
        "exec_count": 1,
        "next_run": 0.375,
        "deadline": START + 1.0,
        "bind": 5,
        "callback": "_noop",
    }
    aid = wheel.after(250, Recorder())
    info = wheel.info(aid)
    assert info["type"] == "after" and info["bind"] is None and info["exec_count"] == 0
    assert "Recorder" in info["callback"]
    clock.now += 10  # overdue but not yet run: next_run never goes negative
    assert wheel.info(aid)["next_run"] == 0.0
    assert wheel.info(99999) is None
    assert wheel.info("x") is None  # type: ignore[arg-type]
    assert wheel.info([1]) is None  # type: ignore[arg-type]


def test_list_is_ascending(wheel: TimerWheel) -> None:
    ids = [wheel.after(1000 - i, _noop) for i in range(10)]
    wheel.clear(ids[4])
    assert wheel.list() == sorted(set(ids) - {ids[4]})


def test_stats_counts(clock: FakeClock) -> None:
    wheel = make_wheel(clock, session_alive=lambda fd: fd == 1)
    wheel.after(250, _noop)
    tick_id = wheel.tick(250, _noop)
    wheel.after(250, lambda: 1 / 0)
    doomed = wheel.after(250, _noop)
    wheel.after(250, _noop, bind=2)  # session gone
    wheel.after(10_000, _noop, bind=1)
    wheel.clear(doomed)
    assert wheel.stats() == {
        "active": 4,
        "created": 5,
        "fired": 0,
        "cleared": 1,
        "bound_to_gone": 1,
        "errors": 0,
        "tasks_pending": 0,
    }
    clock.advance(0.25)
    clock.advance(0.25)
    wheel.clear(tick_id)
    assert wheel.stats() == {
        "active": 1,
        "created": 5,
        "fired": 4,  # two afters + the tick twice
        "cleared": 2,
        "bound_to_gone": 1,
        "errors": 1,
        "tasks_pending": 0,
    }


# -- coroutine callbacks -------------------------------------------------------------------------


def test_coroutine_callback_is_spawned_and_tracked(clock: FakeClock) -> None:
    spawned: list[FakeTask] = []

    def spawn(coro: Any) -> FakeTask:
        task = FakeTask(coro)
        spawned.append(task)
        return task

    wheel = make_wheel(clock, spawn=spawn)
    seen: list[tuple[Any, ...]] = []

    async def job(*args: Any) -> None:
        seen.append(args)

    wheel.after(250, job, "x")
    clock.advance(0.25)
    assert len(spawned) == 1
    assert asyncio.iscoroutine(spawned[0].coro)
    assert wheel.pending_tasks() == {spawned[0]}
    assert wheel.stats()["tasks_pending"] == 1
    spawned[0].finish()
    assert wheel.pending_tasks() == set()
    assert wheel.stats()["errors"] == 0


def test_failed_task_is_logged_and_cancelled_is_not(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    spawned: list[FakeTask] = []

    def spawn(coro: Any) -> FakeTask:
        spawned.append(FakeTask(coro))
        return spawned[-1]

    logger = logging.getLogger("test.timers.tasks")
    wheel = make_wheel(clock, spawn=spawn, logger=logger)

    async def job() -> None:
        pass

    tid = wheel.after(250, job)
    wheel.after(250, job)
    clock.advance(0.25)
    with caplog.at_level(logging.ERROR, logger="test.timers.tasks"):
        spawned[0].finish(exc=ValueError("inside task"))
        spawned[1].finish(cancelled=True)
    records = [r for r in caplog.records if r.name == "test.timers.tasks"]
    assert len(records) == 1
    assert f"Timer {tid}" in records[0].getMessage()
    assert records[0].exc_info is not None and records[0].exc_info[0] is ValueError
    assert wheel.stats()["errors"] == 1
    assert wheel.pending_tasks() == set()


def test_coroutine_without_spawn_is_closed_and_logged(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("test.timers.nospawn")
    wheel = make_wheel(clock, logger=logger)
    made: list[Any] = []

    async def job() -> None:
        pass

    def cb() -> Any:
        made.append(job())
        return made[-1]

    with caplog.at_level(logging.ERROR, logger="test.timers.nospawn"):
        wheel.after(250, cb)
        clock.advance(0.25)
    assert made[0].cr_frame is None  # closed, so no "never awaited" warning later
    assert any("no spawn" in r.getMessage() for r in caplog.records)
    assert wheel.stats()["errors"] == 1


def test_spawn_failure_is_contained(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    def spawn(coro: Any) -> Any:
        raise RuntimeError("loop is closed")

    logger = logging.getLogger("test.timers.spawnfail")
    wheel = make_wheel(clock, spawn=spawn, logger=logger)

    async def job() -> None:
        pass

    with caplog.at_level(logging.ERROR, logger="test.timers.spawnfail"):
        wheel.after(250, job)
        clock.advance(0.25)
    assert wheel.stats()["errors"] == 1
    assert wheel.pending_tasks() == set()


def _run_on_uvloop(main: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main())


async def _wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached before the deadline")
        await asyncio.sleep(0.001)


def test_uvloop_wheel_runs_coroutines_and_ticks() -> None:
    async def main() -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        wheel = uvloop_wheel(loop)
        results: list[Any] = []
        done = asyncio.Event()

        async def job(value: int) -> None:
            await asyncio.sleep(0)
            results.append(value)
            done.set()

        wheel.after(5, job, 42)
        await asyncio.wait_for(done.wait(), timeout=5)
        await _wait_for(lambda: not wheel.pending_tasks())

        ticks: list[int] = []

        def on_tick(timer_id: int) -> None:
            ticks.append(timer_id)
            if len(ticks) == 3:
                wheel.clear(timer_id)

        tid = wheel.tick(1, on_tick)
        await _wait_for(lambda: len(ticks) >= 3)
        return {"results": results, "ticks": ticks, "tid": tid, "list": wheel.list()}

    out = _run_on_uvloop(main)
    assert out["results"] == [42]
    assert out["ticks"] == [out["tid"]] * 3
    assert out["list"] == []


def test_uvloop_wheel_logs_failed_coroutine(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.timers.uvloop")
    unhandled: list[dict[str, Any]] = []

    async def main() -> int:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: unhandled.append(ctx))
        wheel = uvloop_wheel(loop, logger=logger)

        async def job() -> None:
            raise ValueError("async kaboom")

        wheel.after(2, job)
        await _wait_for(lambda: wheel.stats()["errors"] == 1)
        return wheel.stats()["tasks_pending"]

    with caplog.at_level(logging.ERROR, logger="test.timers.uvloop"):
        assert _run_on_uvloop(main) == 0
    errors = [r for r in caplog.records if r.name == "test.timers.uvloop"]
    assert len(errors) == 1
    assert errors[0].exc_info is not None and isinstance(errors[0].exc_info[1], ValueError)
    assert unhandled == []


def test_uvloop_wheel_keeps_one_handle_for_many_timers() -> None:
    async def main() -> tuple[int, int]:
        loop = asyncio.get_running_loop()
        wheel = uvloop_wheel(loop)
        fired: list[int] = []
        for i in range(50):
            wheel.after(1 + i % 5, fired.append, i)
        await _wait_for(lambda: len(fired) == 50)
        wheel.after(60_000, _noop)
        count = wheel.clear_all()
        return len(fired), count

    assert _run_on_uvloop(main) == (50, 1)


# -- the static facade ---------------------------------------------------------------------------


@pytest.fixture
def no_wheel():
    timers.uninstall()
    yield
    timers.uninstall()


def test_facade_requires_installed_wheel(no_wheel: None) -> None:
    with pytest.raises(RuntimeError, match="only be used inside a worker"):
        Timer.after(10, _noop)
    with pytest.raises(RuntimeError, match="no timer wheel is running in this process"):
        timers.current()
    for call in (Timer.list, Timer.stats, Timer.clear_all, lambda: Timer.tick(5, _noop)):
        with pytest.raises(RuntimeError):
            call()


def test_facade_delegates_to_installed_wheel(clock: FakeClock, installed: TimerWheel) -> None:
    assert timers.current() is installed
    rec = Recorder()
    tid = Timer.tick(250, rec, "t")
    aid = Timer.after(250, rec, "a")
    assert Timer.list() == [tid, aid]
    assert Timer.info(aid)["type"] == "after"
    clock.advance(0.25)
    assert rec.calls == [(tid, "t"), ("a",)]
    assert Timer.stats()["fired"] == 2
    assert Timer.clear(tid) is True
    Timer.after(250, rec)
    assert Timer.clearAll() == 1
    assert Timer.clearAll == Timer.clear_all
    timers.uninstall()
    with pytest.raises(RuntimeError):
        Timer.list()


def test_facade_ignores_wheel_inherited_across_fork(
    installed: TimerWheel, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_pid = timers.os.getpid()
    monkeypatch.setattr(timers.os, "getpid", lambda: real_pid + 1)  # as seen in a child
    with pytest.raises(RuntimeError):
        Timer.after(10, _noop)
