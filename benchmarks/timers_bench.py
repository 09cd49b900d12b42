"""In-process timer benchmark for swoolish's ``TimerWheel`` on a uvloop loop.

Measures, on a fresh loop built by ``swoolish.worker.timers.uvloop_wheel``:

* ``after_100k_s``: time to arm 100k one-shot ``after()`` timers;
* ``clear_all_100k_s``: time of ``clear_all()`` with those 100k timers armed;
* tick lateness with 10k active 100 ms ``tick()`` timers over ~2 s: how long after its
  scheduled deadline each callback actually ran (p50/p99/max, in ms).

Lateness is ``time.monotonic()`` in the callback minus the deadline the wheel itself holds for
that tick (read back with ``info()`` when it is armed, then advanced by the wheel's own rule).
Both are the same clock (CLOCK_MONOTONIC; uvloop's ``loop.time()`` is it floored to the
millisecond), so a deadline in loop time is directly a moment in monotonic time. An earlier
version recomputed the first deadline as its own ``loop.time() + interval`` before calling
``tick()``: whenever the millisecond stepped between the two reads, that timer was charged one
millisecond it was never late by, in every round.

For scale it also times 100k bare ``loop.call_later`` handles (``call_later_100k_s``).
Prints one JSON object. Run: ``python benchmarks/timers_bench.py [--tick-seconds 2]``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import time

import uvloop

from swoolish.worker.timers import uvloop_wheel


def _noop(*_args: object) -> None:
    return None


async def _bench(n_after: int, n_ticks: int, tick_ms: int, tick_seconds: float) -> dict:
    loop = asyncio.get_running_loop()
    wheel = uvloop_wheel(loop)
    out: dict[str, float | int] = {"after_n": n_after, "ticks_n": n_ticks, "tick_ms": tick_ms}

    gc.collect()
    t0 = time.perf_counter()
    for _ in range(n_after):
        wheel.after(60_000, _noop)
    out["after_100k_s"] = (time.perf_counter() - t0) * 100_000 / n_after

    t0 = time.perf_counter()
    cleared = wheel.clear_all()
    out["clear_all_100k_s"] = (time.perf_counter() - t0) * 100_000 / n_after
    out["cleared"] = cleared

    t0 = time.perf_counter()
    handles = [loop.call_later(60.0, _noop) for _ in range(n_after)]
    out["call_later_100k_s"] = (time.perf_counter() - t0) * 100_000 / n_after
    for h in handles:
        h.cancel()
    del handles
    await asyncio.sleep(0.05)

    # Tick lateness: expected deadlines follow the wheel's rule (anchored on the previous
    # deadline, skipping ahead when more than an interval late), in the loop's clock.
    # "burst": all ticks armed at once, so they fall due together and one pass runs them all;
    # "spread": armed in 100 batches across one interval, as sessions arriving over time would.
    for mode in ("burst", "spread"):
        out.update(await _tick_lateness(loop, wheel, mode, n_ticks, tick_ms, tick_seconds))
    # Control: the same spread ticks as bare uvloop timers (one call_at handle per tick,
    # re-armed from its callback), measured the same way. What this shows is the floor the
    # loop and the OS scheduler set on this machine at this moment, without the wheel.
    out.update(await _bare_lateness(loop, n_ticks, tick_ms, tick_seconds))
    return out


async def _bare_lateness(
    loop: asyncio.AbstractEventLoop, n_ticks: int, tick_ms: int, tick_seconds: float
) -> dict[str, float | int]:
    interval = tick_ms / 1000.0
    late: list[float] = []
    append = late.append
    monotonic = time.monotonic
    call_at = loop.call_at
    handles: list[asyncio.TimerHandle | None] = [None] * n_ticks
    state = {"recording": False, "running": True}

    def on_tick(idx: int, deadline: float) -> None:
        now = monotonic()
        if state["recording"]:
            append(now - deadline)
        if state["running"]:
            nxt = deadline + interval
            if nxt <= now:
                nxt = now + interval
            handles[idx] = call_at(nxt, on_tick, idx, nxt)

    per = n_ticks // 100
    for b in range(100):
        for i in range(b * per, (b + 1) * per):
            deadline = loop.time() + interval
            handles[i] = call_at(deadline, on_tick, i, deadline)
        await asyncio.sleep(interval / 100)
    state["recording"] = True
    await asyncio.sleep(tick_seconds)
    state["recording"] = False
    state["running"] = False
    for h in handles:
        if h is not None:
            h.cancel()
    await asyncio.sleep(0.05)
    late.sort()
    n = len(late)

    def pct(q: float) -> float:
        return late[min(n - 1, round(q / 100 * (n - 1)))] * 1000 if n else float("nan")

    return {
        "tick_bare_fired": n,
        "tick_bare_late_p50_ms": pct(50),
        "tick_bare_late_p99_ms": pct(99),
        "tick_bare_late_max_ms": late[-1] * 1000 if n else float("nan"),
    }


async def _tick_lateness(
    loop: asyncio.AbstractEventLoop,
    wheel,
    mode: str,
    n_ticks: int,
    tick_ms: int,
    tick_seconds: float,
) -> dict[str, float | int]:
    interval = tick_ms / 1000.0
    expected = [0.0] * n_ticks
    late: list[float] = []
    append = late.append
    monotonic = time.monotonic
    recording = False

    def on_tick(_timer_id: int, idx: int) -> None:
        now = monotonic()
        exp = expected[idx]
        if recording:
            append(now - exp)
        nxt = exp + interval
        if nxt <= now:
            nxt = now + interval
        expected[idx] = nxt

    batches = 1 if mode == "burst" else 100
    per = n_ticks // batches
    info = wheel.info
    t0 = time.perf_counter()
    for b in range(batches):
        for i in range(b * per, (b + 1) * per):
            expected[i] = info(wheel.tick(tick_ms, on_tick, i))["deadline"]
        if batches > 1:
            await asyncio.sleep(interval / batches)
    created = time.perf_counter() - t0
    # Each tick() reads the loop clock, so even "all at once" spreads the first deadlines over
    # the time the loop above took; the firing passes then run them at their own pace.
    span = (max(expected) - min(expected)) * 1000
    collections = 0

    def on_gc(phase: str, _info: dict) -> None:
        nonlocal collections
        if phase == "start":
            collections += 1

    recording = True
    gc.callbacks.append(on_gc)
    cpu0 = time.process_time()
    await asyncio.sleep(tick_seconds)
    cpu = time.process_time() - cpu0
    gc.callbacks.remove(on_gc)
    recording = False
    wheel.clear_all()
    await asyncio.sleep(0.05)
    late.sort()
    n = len(late)

    def pct(q: float) -> float:
        return late[min(n - 1, round(q / 100 * (n - 1)))] * 1000 if n else float("nan")

    k = f"tick_{mode}_"
    return {
        k + "create_s": created,
        k + "deadline_span_ms": span,
        k + "gc_collections": collections,
        k + "fired": n,
        k + "late_p50_ms": pct(50),
        k + "late_p99_ms": pct(99),
        k + "late_max_ms": late[-1] * 1000 if n else float("nan"),
        k + "cpu_us_per_fire": cpu / n * 1e6 if n else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--after", type=int, default=100_000)
    p.add_argument("--ticks", type=int, default=10_000)
    p.add_argument("--tick-ms", type=int, default=100)
    p.add_argument("--tick-seconds", type=float, default=2.0)
    a = p.parse_args(argv)
    result = uvloop.run(_bench(a.after, a.ticks, a.tick_ms, a.tick_seconds))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
