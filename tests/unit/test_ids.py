"""The shared session-id counter survives a process killed while it holds the lock."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import time

from swoolish.shared.ids import BLOCK, SharedIdSource

DEADLINE = 10.0  # seconds: a deadlock fails the test instead of hanging it


def read_within(fd: int, seconds: float) -> bytes:
    ready, _, _ = select.select([fd], [], [], seconds)
    assert ready, f"nothing within {seconds}s (deadlocked?)"
    return os.read(fd, 64)


def fork(body) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            body()
            code = 0
        finally:
            os._exit(code)
    return pid


def reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def test_a_worker_killed_while_holding_the_id_lock_does_not_block_the_others():
    """1. a child takes the lock and is SIGKILLed while holding it  2. another process
    still gets the next block: the kernel released the lock with its holder."""
    source = SharedIdSource()
    first = source.take_block()
    held_r, held_w = os.pipe()
    got_r, got_w = os.pipe()

    def hold_forever() -> None:
        with source.locked():
            os.write(held_w, b"held")
            time.sleep(60)

    def take_one() -> None:
        os.write(got_w, str(source.take_block()).encode())

    holder = taker = 0
    try:
        holder = fork(hold_forever)
        assert read_within(held_r, DEADLINE) == b"held"
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
        holder = 0  # reaped: its pid may belong to someone else now
        # In another process, so that a deadlock fails here instead of hanging pytest.
        taker = fork(take_one)
        assert int(read_within(got_r, DEADLINE)) == first + BLOCK
        assert source.take_block() == first + 2 * BLOCK
    finally:
        for pid in (holder, taker):
            if pid:
                reap(pid)
        for fd in (held_r, held_w, got_r, got_w):
            os.close(fd)
