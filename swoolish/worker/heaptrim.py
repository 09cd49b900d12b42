"""Give the system back the heap memory large messages leave free.

A message of a megabyte passes through buffers of that size: the read, the frames put
together, the message, its echo. Freed, they go back to the C allocator (glibc's
``malloc``), which keeps them for later rather than returning them to the system. After
200 clients sent and got back five 1 MiB messages each, a worker held some 130 KiB more
per session for as long as it lived, all of it free inside the allocator
(docs/performance.md, "Memory after large messages"). Nothing was leaked: the next burst
reuses it. But a worker's resident size then says what its busiest moment needed, not
what it holds, and that is what an operator (and the kernel's OOM killer) goes by.

So every CHECK_INTERVAL a worker looks at its resident size (psutil: one read of
``/proc/self/statm``). When it has grown by ``memory_trim`` bytes since the last time
memory was given back, and the allocator holds at least that much free
(``mallinfo2``), it calls ``malloc_trim(0)``, which returns the free pages inside the
heap to the system (``madvise``); the addresses stay the allocator's and are reused as
before. A trim costs about 0.05 ms per megabyte it releases (a few ms after a burst of
100 MB) and runs only after such growth, so a steady worker never pays it.

Only glibc has ``malloc_trim`` and ``mallinfo2`` (2.33 on): elsewhere (musl, macOS) this
does nothing. ``memory_trim = 0`` turns it off.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging

import psutil

from ..core.stats import Counts

__all__ = ["CHECK_INTERVAL", "HeapTrim", "resident_bytes"]

#: Seconds between two looks at the worker's resident size.
CHECK_INTERVAL = 10.0

log = logging.getLogger("swoolish.worker")


class _MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2`` (malloc.h): every field a ``size_t``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",  # free bytes held by the allocator
            "keepcost",
        )
    ]


def _glibc() -> ctypes.CDLL | None:
    """The C library if it has ``malloc_trim`` and ``mallinfo2``, else None."""
    try:
        libc = ctypes.CDLL(None)  # this process's own C library, as worker/process.py
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallinfo2.argtypes = []
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None
    return libc


def resident_bytes() -> int:
    """This process's resident size (psutil reads ``/proc/self/statm``)."""
    return int(psutil.Process().memory_info().rss)


class HeapTrim:
    """Return free heap memory to the system after the worker's resident size grew by
    ``threshold`` bytes (``memory_trim``), if that much lies free in the allocator."""

    def __init__(self, loop: asyncio.AbstractEventLoop, threshold: int, stats: Counts) -> None:
        self._loop = loop
        self._threshold = threshold
        self._stats = stats  # the worker's counters: heap_trims, heap_trimmed_bytes
        self._libc = _glibc() if threshold > 0 else None
        self._floor = 0  # the resident size after the last trim (or the lowest seen since)
        self._handle: asyncio.TimerHandle | None = None

    @property
    def active(self) -> bool:
        return self._libc is not None

    def start(self) -> None:
        """Begin looking, from the resident size the worker has now."""
        if self._libc is None:
            return
        self._floor = resident_bytes()
        self._handle = self._loop.call_later(CHECK_INTERVAL, self._check)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        self._handle = self._loop.call_later(CHECK_INTERVAL, self._check)
        self.trim_if_grown()

    def trim_if_grown(self) -> bool:
        """One look: trim if the resident size grew by the threshold since the last
        trim and the allocator holds that much free. True if it trimmed."""
        libc = self._libc
        if libc is None:
            return False
        rss = resident_bytes()
        if rss < self._floor:
            self._floor = rss  # memory went back by itself (freed mappings)
            return False
        if rss - self._floor < self._threshold:
            return False
        if libc.mallinfo2().fordblks < self._threshold:
            return False  # grown by what is in use: looked at again next time
        libc.malloc_trim(0)
        after = resident_bytes()
        self._floor = after
        self._stats["heap_trims"] += 1
        self._stats["heap_trimmed_bytes"] += max(0, rss - after)
        log.debug("gave %d bytes of free heap memory back to the system", rss - after)
        return True
