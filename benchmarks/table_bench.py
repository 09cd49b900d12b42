"""Table and Atomic throughput: ``incr`` per second from forked processes.

Each case forks ``--procs`` processes (as the master forks workers) that wait on a pipe,
are released together, do ``--count`` operations each and exit; the figure is all
their operations divided by the wall time from the release to the last exit. Cases:

* ``table incr, one key``: every process increments the same key (one bucket lock);
* ``table incr, random keys``: each increments keys drawn at random from 1,024 rows of
  a 4,096-row table (the keys are drawn before the clock starts);
* ``atomic add``: ``Atomic.add()`` on one counter;
* ``multiprocessing.Value``: ``with v.get_lock(): v.value += 1`` on a ``Value("q")``,
  the standard library's shared counter, as a reference point for the one-key case.

Each case also runs with one process, for the cost of an uncontended operation. After
each case the total is checked (no increment lost). Every figure is the median of
``--rounds`` runs. Prints a Markdown table. Run: ``python benchmarks/table_bench.py``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from swoolish import Atomic, Table  # after the checkout is on sys.path

KEYS = [f"key-{i}" for i in range(1024)]


def timed(procs: int, body: Callable[[int], None]) -> float:
    """Seconds for ``procs`` forked processes, released together, to run ``body(i)``."""
    go_r, go_w = os.pipe()
    pids = []
    for i in range(procs):
        pid = os.fork()
        if pid == 0:  # the child
            code = 1
            try:
                os.read(go_r, 1)
                body(i)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    start = time.perf_counter()
    os.write(go_w, b"x" * procs)
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise RuntimeError(f"benchmark process {pid} failed")
    elapsed = time.perf_counter() - start
    os.close(go_r)
    os.close(go_w)
    return elapsed


def table_one_key(procs: int, count: int) -> float:
    table = Table(4096, {"n": int})

    def body(_: int) -> None:
        for _ in range(count):
            table.incr("one", "n")

    elapsed = timed(procs, body)
    assert table.get("one", "n") == procs * count, "lost an update"
    return elapsed


def table_random_keys(procs: int, count: int) -> float:
    table = Table(4096, {"n": int})
    for key in KEYS:
        table.set(key, {"n": 0})
    draws = [random.Random(i).choices(KEYS, k=count) for i in range(procs)]

    def body(i: int) -> None:
        for key in draws[i]:
            table.incr(key, "n")

    elapsed = timed(procs, body)
    assert sum(row["n"] for _, row in table) == procs * count, "lost an update"
    return elapsed


def atomic_add(procs: int, count: int) -> float:
    counter = Atomic()

    def body(_: int) -> None:
        for _ in range(count):
            counter.add()

    elapsed = timed(procs, body)
    assert counter.get() == procs * count, "lost an update"
    return elapsed


def mp_value(procs: int, count: int) -> float:
    value = multiprocessing.get_context("fork").Value("q", 0)

    def body(_: int) -> None:
        for _ in range(count):
            with value.get_lock():
                value.value += 1

    elapsed = timed(procs, body)
    assert value.value == procs * count, "lost an update"
    return elapsed


CASES = {
    "table incr, one key": table_one_key,
    "table incr, random keys": table_random_keys,
    "atomic add": atomic_add,
    "multiprocessing.Value + lock (reference)": mp_value,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", type=int, default=4)
    parser.add_argument("--count", type=int, default=50_000, help="operations per process")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{args.procs} processes x {args.count:,} operations, median of {args.rounds} rounds")
    print(f"(os.cpu_count() = {os.cpu_count()}, Python {sys.version.split()[0]})\n")
    print(f"| case | 1 process, ops/s | {args.procs} processes, ops/s |")
    print("|---|---:|---:|")
    for name, case in CASES.items():
        figures = []
        for procs in (1, args.procs):
            seconds = statistics.median(case(procs, args.count) for _ in range(args.rounds))
            figures.append(procs * args.count / seconds)
        print(f"| {name} | {figures[0]:,.0f} | {figures[1]:,.0f} |")


if __name__ == "__main__":
    main()
