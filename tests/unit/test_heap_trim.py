"""HeapTrim gives the C allocator's free heap memory back to the system once the
resident size grew by its threshold (swoolish/worker/heaptrim.py): real allocations in
this process, real ``malloc_trim``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from swoolish.core.stats import Counts
from swoolish.worker.heaptrim import HeapTrim, _glibc, resident_bytes

MiB = 1024 * 1024


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def _trimmer(loop: asyncio.AbstractEventLoop, threshold: int) -> HeapTrim:
    """A HeapTrim started and stopped at once: no loop runs here, the tests look by hand
    (``trim_if_grown``) from the resident size at the start."""
    trim = HeapTrim(loop, threshold, Counts.zeroed())
    if threshold and not trim.active:
        pytest.skip("no glibc malloc_trim/mallinfo2 on this system")
    return trim


def _fragmented_free_heap(total: int) -> list[bytearray]:
    """Allocate ``total`` bytes in 96 KiB blocks (below glibc's mmap threshold: they
    come from the heap), touch them, and free all but every eighth, so that the free
    memory lies between live blocks and no trim of the heap's top can return it."""
    blocks = [bytearray(96 * 1024) for _ in range(total // (96 * 1024))]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])
    return blocks[::8]


def test_it_gives_back_what_a_burst_left_free(loop: asyncio.AbstractEventLoop) -> None:
    """1. grow the heap by 96 MiB and free seven eighths of it  2. one look trims and
    the resident size falls by most of what was freed, counted in the stats."""
    trim = _trimmer(loop, 16 * MiB)
    kept = _fragmented_free_heap(96 * MiB)
    grown = resident_bytes()
    assert trim.trim_if_grown()
    assert grown - resident_bytes() > 48 * MiB
    assert trim._stats["heap_trims"] == 1
    assert trim._stats["heap_trimmed_bytes"] > 48 * MiB
    del kept


def test_it_leaves_alone_growth_that_is_in_use(loop: asyncio.AbstractEventLoop) -> None:
    """Memory the process still holds is not free: no trim, and a look later (the blocks
    freed by then) trims. The threshold sits above what this process's allocator holds
    free already (earlier tests leave some), so only the blocks freed here can reach it."""
    libc = _glibc()
    if libc is None:
        pytest.skip("no glibc malloc_trim/mallinfo2 on this system")
    threshold = libc.mallinfo2().fordblks + 16 * MiB
    trim = _trimmer(loop, threshold)
    held = [bytearray(96 * 1024) for _ in range((threshold + 32 * MiB) // (96 * 1024))]
    for block in held:
        block[::4096] = b"x" * len(block[::4096])
    assert not trim.trim_if_grown()
    assert trim._stats["heap_trims"] == 0
    kept = held[::8]
    del held
    assert trim.trim_if_grown()
    del kept


def test_growth_below_the_threshold_is_not_trimmed(loop: asyncio.AbstractEventLoop) -> None:
    trim = _trimmer(loop, 512 * MiB)
    kept = _fragmented_free_heap(64 * MiB)
    assert not trim.trim_if_grown()
    del kept


def test_memory_trim_zero_turns_it_off(loop: asyncio.AbstractEventLoop) -> None:
    trim = _trimmer(loop, 0)
    assert not trim.active
    kept = _fragmented_free_heap(32 * MiB)
    assert not trim.trim_if_grown()
    del kept
