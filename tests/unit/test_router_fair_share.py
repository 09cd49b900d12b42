"""The router applies what other workers routed in shares of the loop (swoolish.worker.
router, "A fair share of the loop"): a flood of ``send_message`` relays cannot hold a
worker's loop for seconds, nor start coroutine ``pipe_message`` handlers without bound."""

from __future__ import annotations

import asyncio
import logging
import pickle
import time
from collections import Counter
from types import SimpleNamespace
from typing import Any

from swoolish.core.messages import Pipe
from swoolish.worker.router import APPLY_SLICE, MAX_PIPE_TASKS, Router
from swoolish.worker.sessions import SessionMap


def router_with(handler: Any, loop: asyncio.AbstractEventLoop) -> Router:
    """A router whose worker runs ``handler`` as its app's pipe_message handler."""
    tasks: set[asyncio.Task[Any]] = set()

    def track(coro: Any) -> asyncio.Task[Any]:
        task = loop.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        return task

    worker = SimpleNamespace(
        connections=SessionMap(),
        stats=Counter(),
        loop=loop,
        server=None,
        log=logging.getLogger("test"),
        handler={"pipe_message": handler}.get,
        track=track,
        tasks=tasks,
    )
    return Router(worker, None, None)  # type: ignore[arg-type]


def pipes(count: int) -> list[Pipe]:
    return [Pipe(1, pickle.dumps(n)) for n in range(count)]


def caught_up(router: Router, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
    done: asyncio.Future[None] = loop.create_future()
    router.when_caught_up = lambda: done.set_result(None)
    return done


def test_slow_handlers_are_applied_a_share_at_a_time_in_order():
    """1. 100 relayed messages whose handler takes a millisecond each  2. apply() returns
    after its share (a few of them), the rest waits  3. the loop goes on with them,
    in order, and says when it is done."""
    handled: list[int] = []

    def on_pipe(server: Any, src: int, message: int) -> None:
        time.sleep(0.001)
        handled.append(message)

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        router = router_with(on_pipe, loop)
        done = caught_up(router, loop)
        router.apply(pipes(100))
        assert router.behind()
        assert 1 <= len(handled) <= APPLY_SLICE / 0.001 + 1
        await asyncio.wait_for(done, 10)
        assert not router.behind()

    asyncio.run(scenario())
    assert handled == list(range(100))


def test_quick_operations_are_all_applied_in_order():
    handled: list[int] = []

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        router = router_with(lambda server, src, message: handled.append(message), loop)
        done = caught_up(router, loop)
        router.apply(pipes(1000))  # within one share as a rule; in several on a busy host
        if router.behind():
            await asyncio.wait_for(done, 10)

    asyncio.run(scenario())
    assert handled == list(range(1000))


def test_coroutine_handlers_run_at_most_max_pipe_tasks_at_once():
    """1. 3,000 relayed messages whose coroutine handler waits until let go  2.
    MAX_PIPE_TASKS of them start, the rest waits (before, all 3,000 were tasks at once)
    3. let go, they end and the rest starts, in order."""
    started: list[int] = []
    running = 0
    peak = 0
    gate = asyncio.Event()

    async def on_pipe(server: Any, src: int, message: int) -> None:
        nonlocal running, peak
        started.append(message)
        running += 1
        peak = max(peak, running)
        await gate.wait()
        running -= 1

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        router = router_with(on_pipe, loop)
        done = caught_up(router, loop)
        router.apply(pipes(3000))
        for _ in range(10_000):  # applied a share at a time, up to the cap
            if len(started) >= MAX_PIPE_TASKS:
                break
            await asyncio.sleep(0.001)
        for _ in range(10):
            await asyncio.sleep(0)  # more turns of the loop start nothing more
        assert router.behind()
        assert len(started) == MAX_PIPE_TASKS
        gate.set()
        await asyncio.wait_for(done, 30)
        await asyncio.wait_for(asyncio.gather(*router.worker.tasks), 30)  # the last ones end

    asyncio.run(scenario())
    assert running == 0
    assert peak == MAX_PIPE_TASKS
    assert started == list(range(3000))


def test_refusals_under_a_sustained_overload_are_one_episode(caplog):
    """What waits for the master goes over the bound, down a little (a small operation
    fits again), over again: one warning, not one per crossing; the episode ends once
    half has drained."""
    from swoolish.core.messages import Push, ToRegion

    loop = asyncio.new_event_loop()
    try:
        channel = SimpleNamespace(limit=10_000, queued=0)
        worker = SimpleNamespace(connections=SessionMap(), stats=Counter(), loop=loop, worker_id=0)
        router = Router(worker, None, None, channel)  # type: ignore[arg-type]
        big, small = Push(1, "x" * 2000, None), Push(1, "y", None)
        with caplog.at_level(logging.WARNING, logger="swoolish.routing"):
            for _ in range(5):
                channel.queued = 9_000  # the master has not taken it
                assert not router.send(ToRegion(1), big)
                channel.queued = 8_000  # took a little: a small one fits
                assert router.send(ToRegion(1), small)
                router.outbox.clear()
                router._pending = 0
            channel.queued = 1_000  # most of it taken: the episode is over
            assert router.send(ToRegion(1), small)
            router.outbox.clear()
            router._pending = 0
            channel.queued = 9_000
            assert not router.send(ToRegion(1), big)
        warnings = [r for r in caplog.records if "bytes wait for the master" in r.getMessage()]
        assert len(warnings) == 2
        assert worker.stats["routed_refused"] == 6
    finally:
        loop.close()


def test_routed_text_is_measured_in_utf8_bytes():
    """What a routed operation takes is counted in the bytes it goes out as: text of
    characters beyond U+FFFF is 4 bytes each. Counted in characters, the 1 MiB bound of
    a routed push let 4 MiB through, and the 8 MiB of what waits for the master 32 MiB."""
    from swoolish.core.messages import Push, PushMany
    from swoolish.worker.router import data_size, operation_size

    emoji = "\U0001f600" * 1000
    assert data_size(emoji) == 4000
    assert data_size("a" * 1000) == 1000
    assert data_size(b"\xff" * 1000) == 1000
    assert operation_size(Push(1, emoji, None)) == 4000 + 64
    assert operation_size(PushMany([1, 2], emoji, None)) == 4000 + 32 + 64
