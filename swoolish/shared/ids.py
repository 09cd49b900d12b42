"""Session ids and the worker's table of its own sessions.

Swoole reuses file descriptors as session ids, so a timer left over from a dead
connection can push into whoever gets the same fd next. swoolish ids are never reused:

* An id is ``node << NODE_SHIFT | n`` where ``n`` comes from one counter shared by every
  worker of every generation for the master's whole life. Without cluster mode ``node``
  is 0 and ids are small integers, as in Swoole. In cluster mode (docs/cluster.md)
  ``node`` is the number the node took from Redis at its start, never given twice, so
  ids are unique across machines and restarts; 20 bits of node and 33 of ``n`` keep
  every id below 2**53 (exact in JavaScript clients' JSON).
* Workers take ids from the shared counter in blocks (one locked fetch-and-add per
  ``BLOCK`` accepts), so the shared counter costs nothing on the hot path.
"""

from __future__ import annotations

import contextlib
import fcntl
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from typing import Protocol

__all__ = [
    "BLOCK",
    "MAX_NODE",
    "NODE_SHIFT",
    "IdAllocator",
    "IdSource",
    "LocalIdSource",
    "SharedIdSource",
    "exclusive",
]

NODE_SHIFT = 33  # 2**33 ids per node start: 8.6 billion sessions
MAX_NODE = 2**20 - 1  # node numbers up to this keep every id below 2**53
BLOCK = 4096  # ids a worker takes from the shared counter at once


@contextlib.contextmanager
def exclusive(fd: int, thread_lock: threading.Lock) -> Iterator[None]:
    """Hold a memfd's whole-file ``lockf`` lock, shared between processes: the kernel
    drops it when its holder dies, so a worker killed holding it blocks nobody; the
    thread lock keeps this process's threads out of each other's way (a record lock
    belongs to the process, not the thread)."""
    with thread_lock:
        fcntl.lockf(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


class IdSource(Protocol):
    """Hands out disjoint blocks ``[start, start + BLOCK)`` of the id space."""

    def take_block(self) -> int: ...


class LocalIdSource:
    """An id source for one process (unit tests, a server without a master)."""

    def __init__(self) -> None:
        self._next = 0
        self._lock = threading.Lock()

    def take_block(self) -> int:
        with self._lock:
            start = self._next
            self._next += BLOCK
            return start


class SharedIdSource:
    """A counter in shared memory, created by the master before it forks.

    The counter lives in a memfd (an anonymous file) mapped shared, so every worker
    forked from the master, in any generation, draws from the same sequence. Each
    fetch-and-add holds a POSIX record lock (``fcntl.lockf``) on that file: the kernel
    owns such a lock per process and releases it when its holder dies, even by
    SIGKILL, so a worker killed in the middle of one never deadlocks the others (a
    semaphore-based lock would stay taken forever). Record locks do not exclude the
    threads of one process from each other, so a thread lock is taken first.
    """

    _FORMAT = struct.Struct("=Q")

    def __init__(self) -> None:
        # Inherited across fork (not across exec: workers are forked, never exec'd).
        self._fd = os.memfd_create("swoolish-session-ids", os.MFD_CLOEXEC)
        os.ftruncate(self._fd, self._FORMAT.size)
        self._memory = mmap.mmap(self._fd, self._FORMAT.size, mmap.MAP_SHARED)
        self._thread_lock = threading.Lock()

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the counter's lock (the kernel drops it if this process dies)."""
        return exclusive(self._fd, self._thread_lock)

    def take_block(self) -> int:
        start: int  # the "=Q" format unpacks one unsigned 64-bit integer
        with self.locked():
            (start,) = self._FORMAT.unpack_from(self._memory, 0)
            self._FORMAT.pack_into(self._memory, 0, start + BLOCK)
        return start


class IdAllocator:
    """Gives each new connection of this worker the next never-used session id."""

    __slots__ = ("_base", "_end", "_next", "_source")

    def __init__(self, source: IdSource, node: int = 0) -> None:
        if not 0 <= node <= MAX_NODE:
            raise ValueError(f"node must be between 0 and {MAX_NODE}, got {node}")
        self._source = source
        self._base = node << NODE_SHIFT
        self._next = 0
        self._end = 0

    def next_id(self) -> int:
        if self._next >= self._end:
            start = self._source.take_block()
            if self._base and start + BLOCK >= 1 << NODE_SHIFT:
                # 8.6 billion sessions since this node started: a restart takes a new
                # node number and starts again from 1.
                raise RuntimeError("session ids of this node start are used up; restart it")
            # +1 so that the first id ever is 1: ids are positive, 0 is never a session.
            self._next, self._end = start + 1, start + 1 + BLOCK
        sid = self._next
        self._next += 1
        return self._base | sid
