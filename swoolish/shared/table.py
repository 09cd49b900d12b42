"""The server-wide session table: which worker owns which session, in shared memory.

The master creates one anonymous shared mapping before the first fork, so every
worker of every generation sees the same bytes. It is split into ``REGIONS`` regions;
the master gives each worker it forks a free region, and only that worker ever writes
the region's entries (one writer per region: no cross-process lock or compare-and-swap).
Any process reads every active region without a lock.

Layout (8-byte words)::

    header   regions x 8 words: [active, pid, half, live, established, overflow, serving, 0]
             active = slot + 1 while the region belongs to a worker (written by the
             master), 0 when free; half = which of the two tables below is current;
             serving = 1 while the worker takes new clients (until it drains), which
             the accept balance reads (worker/listener.py)
    tables   regions x 2 halves x capacity entries of 2 words:
             key  = sid | state << 56   (0 empty, all ones = tombstone)
             peer = IPv4 address << 16 | port (0 for IPv6 / unknown)

Each region holds an open-addressing hash table (linear probing, power-of-two
``capacity`` >= 2 x max_connections). State and id share one aligned 8-byte word, so a
reader sees an entry wholly before or wholly after a write. There are no barriers: the
lock-free readers rely on x86-64, where aligned 8-byte stores are single-copy atomic and
stores become visible to other cores in program order (so a flipped ``half`` is never
seen before the entries written ahead of it). Other architectures (aarch64 among them,
whose stores may be reordered) are untested and not claimed. The only race is benign:
a session that closes at the instant it is read is reported as still there, exactly as
if the read had happened a microsecond earlier.

Deletes leave tombstones. When live entries plus tombstones pass 3/4 of the capacity the
writer rebuilds the live entries into the *other* half and then flips ``half`` with one
word store: a reader that is probing the old half finishes on a consistent snapshot.
The writer keeps a private ``sid -> index`` dict, so its own inserts, deletes and state
changes never probe.
"""

from __future__ import annotations

import functools
import mmap
import socket
from collections.abc import Iterator

__all__ = [
    "ESTABLISHED",
    "MOVING",
    "OPEN",
    "RegionWriter",
    "SessionTable",
    "peer_word",
    "table_bytes",
]

OPEN, ESTABLISHED, MOVING = 1, 2, 3  # MOVING: handed to the next worker, still alive
STATE_SHIFT = 56
SID_MASK = (1 << STATE_SHIFT) - 1
TOMBSTONE = (1 << 64) - 1
HEADER_WORDS = 8
H_ACTIVE, H_PID, H_HALF, H_LIVE, H_ESTABLISHED, H_OVERFLOW, H_SERVING = range(7)
_GOLDEN = 0x9E3779B97F4A7C15
_M64 = (1 << 64) - 1
REBUILD_LOAD = 0.75


def _capacity_for(max_connections: int) -> int:
    capacity = 8
    while capacity < 2 * max_connections:
        capacity *= 2
    return capacity


def table_bytes(regions: int, max_connections: int) -> int:
    """The size of a ``SessionTable``'s mapping, so a refusal can say how much was asked."""
    return (regions * HEADER_WORDS + regions * 2 * 2 * _capacity_for(max_connections)) * 8


def peer_word(peer: tuple[str, int]) -> int:
    """IPv4 ``(address, port)`` packed into one word (0 for anything else)."""
    try:
        return _address_word(peer[0]) << 16 | (peer[1] & 0xFFFF)
    except (OSError, TypeError, IndexError):
        return 0


@functools.lru_cache(maxsize=1024)
def _address_word(address: str) -> int:
    """An IPv4 address as a number; remembered, as a worker's clients come from a few
    addresses (a proxy, a NAT) again and again. Raises OSError for anything else."""
    return int.from_bytes(socket.inet_aton(address), "big")


def peer_from_word(word: int) -> tuple[str, int]:
    if not word:
        return ("", 0)
    return (socket.inet_ntoa((word >> 16).to_bytes(4, "big")), word & 0xFFFF)


class SessionTable:
    """The shared mapping; the master administers regions, everyone reads."""

    def __init__(self, regions: int, max_connections: int) -> None:
        self.regions = regions
        self.capacity = _capacity_for(max_connections)
        self.bits = self.capacity.bit_length() - 1
        self.shift = 64 - self.bits  # a session's home slot is its hash's top ``bits`` bits
        self.mask = self.capacity - 1
        self._half_words = self.capacity * 2
        self._tables_at = regions * HEADER_WORDS
        self.size = table_bytes(regions, max_connections)
        self._memory = mmap.mmap(-1, self.size)
        self.words = memoryview(self._memory).cast("Q")
        self._free = list(range(regions))  # master-side bookkeeping only

    # -- geometry

    def slot_of(self, sid: int) -> int:
        return ((sid * _GOLDEN) & _M64) >> self.shift

    def base(self, region: int, half: int) -> int:
        return self._tables_at + (region * 2 + half) * self._half_words

    def header(self, region: int) -> int:
        return region * HEADER_WORDS

    # -- master: regions

    def claim(self, slot: int) -> int | None:
        """Give a region to a worker about to be forked for ``slot``; None if all taken."""
        if not self._free:
            return None
        region = self._free.pop(0)
        self._clear(region)
        self.words[self.header(region) + H_ACTIVE] = slot + 1
        return region

    def set_pid(self, region: int, pid: int) -> None:
        self.words[self.header(region) + H_PID] = pid

    def deactivate(self, region: int) -> None:
        """Readers stop looking at ``region`` (its writer may still be alive)."""
        self.words[self.header(region) + H_ACTIVE] = 0

    def release(self, region: int) -> None:
        """The region's worker is gone (reaped): clear it and make it reusable."""
        self.deactivate(region)
        self._clear(region)
        if region not in self._free:
            self._free.append(region)

    def _clear(self, region: int) -> None:
        start = self.header(region)
        self.words[start : start + HEADER_WORDS] = memoryview(bytes(HEADER_WORDS * 8)).cast("Q")
        begin = self.base(region, 0) * 8
        self._memory[begin : begin + 2 * self._half_words * 8] = bytes(2 * self._half_words * 8)

    # -- readers (any process)

    def active_regions(self) -> Iterator[tuple[int, int]]:
        """``(region, slot)`` of every region a live worker owns."""
        words = self.words
        for region in range(self.regions):
            active = words[region * HEADER_WORDS + H_ACTIVE]
            if active:
                yield region, active - 1

    def region_of(self, sid: int) -> int | None:
        """The region that lists session ``sid`` now (its MOVING entry while it moves)."""
        found = self.lookup(sid)
        return found[0] if found is not None else None

    def lookup(self, sid: int) -> tuple[int, int, int] | None:
        """``(region, state, peer)`` of session ``sid``, or None.

        A session being handed over can be in two regions for a moment (MOVING in the
        old worker's, live in the new one's); the MOVING entry wins, so every routed
        operation of that session takes the same path until the old worker lets go.
        """
        if not 0 < sid <= SID_MASK:
            return None
        words = self.words
        start = self.slot_of(sid)
        mask = self.mask
        found: tuple[int, int, int] | None = None
        for region in range(self.regions):
            header = region * HEADER_WORDS
            if not words[header + H_ACTIVE]:
                continue
            base = self.base(region, words[header + H_HALF])
            index = start
            for _ in range(self.capacity):
                key = words[base + 2 * index]
                if key == 0:
                    break
                if key != TOMBSTONE and key & SID_MASK == sid:
                    state = key >> STATE_SHIFT
                    if state == MOVING:
                        return region, state, words[base + 2 * index + 1]
                    if found is None:
                        found = (region, state, words[base + 2 * index + 1])
                    break
                index = (index + 1) & mask
        return found

    def region_slot(self, region: int) -> int:
        return self.words[self.header(region) + H_ACTIVE] - 1

    def serving_load(self) -> tuple[int, int]:
        """``(workers, connections)``: how many workers take new clients now, and how
        many connections they hold together."""
        words = self.words
        workers = connections = 0
        for region, _ in self.active_regions():
            header = self.header(region)
            if words[header + H_SERVING]:
                workers += 1
                connections += words[header + H_LIVE]
        return workers, connections

    def established_count(self, region: int) -> int:
        return self.words[self.header(region) + H_ESTABLISHED]

    def sessions(self, region: int) -> list[tuple[int, int]]:
        """``(sid, state)`` of every live entry of ``region``: O(capacity)."""
        base = self.base(region, self.words[self.header(region) + H_HALF])
        keys = self.words[base : base + self._half_words : 2]
        return [
            (key & SID_MASK, key >> STATE_SHIFT)
            for key in keys.tolist()
            if key and key != TOMBSTONE
        ]

    def established(self) -> list[int]:
        """Ids of every established (or moving) session of every active region."""
        ids: set[int] = set()
        for region, _ in self.active_regions():
            ids.update(sid for sid, state in self.sessions(region) if state >= ESTABLISHED)
        return sorted(ids)


class RegionWriter:
    """The one writer of one region (lives in the worker that owns it).

    Every session passes here three times (accepted, established, closed), so the
    writer keeps where its current half begins rather than read ``half`` and recompute
    it each time: only this writer flips ``half``, in ``_rebuild``.
    """

    def __init__(self, table: SessionTable, region: int) -> None:
        self.table = table
        self.region = region
        self.words = table.words
        self._header = table.header(region)
        self.slots: dict[int, int] = {}  # sid -> index in the current half
        self.used = 0  # live entries + tombstones in the current half
        self.established = 0
        self.overflow = 0
        self._limit = int(table.capacity * REBUILD_LOAD)
        self._base = table.base(region, self.half)  # the current half's first word

    @property
    def half(self) -> int:
        return self.words[self._header + H_HALF]

    @property
    def live(self) -> int:
        """Connections this worker holds (its region's ``live`` word)."""
        return len(self.slots)

    @property
    def serving(self) -> bool:
        """Whether this worker's region says it takes new clients."""
        return bool(self.words[self._header + H_SERVING])

    def set_serving(self, serving: bool) -> None:
        """Say whether this worker takes new clients (it stops for good when it drains)."""
        self.words[self._header + H_SERVING] = int(serving)

    def insert(self, sid: int, state: int, peer: int = 0) -> bool:
        """Add (or update) a session; False when the table is full (counted)."""
        index = self.slots.get(sid)
        if index is not None:
            self._write(index, sid, state, peer)
            return True
        if len(self.slots) + 1 >= self.table.capacity:
            self.overflow += 1
            self.words[self._header + H_OVERFLOW] = self.overflow
            return False
        if self.used >= self._limit:
            self._rebuild()  # a new slots dict, and a new _base
        self.slots[sid] = self._place(self._base, sid, state, peer)
        if state == ESTABLISHED:
            self._count_established(1)
        self.words[self._header + H_LIVE] = len(self.slots)
        return True

    def set_state(self, sid: int, state: int) -> None:
        index = self.slots.get(sid)
        if index is not None:
            self._write(index, sid, state, self.words[self._base + 2 * index + 1])

    def delete(self, sid: int) -> None:
        index = self.slots.pop(sid, None)
        if index is None:
            return
        words = self.words
        key_at = self._base + 2 * index
        if words[key_at] >> STATE_SHIFT == ESTABLISHED:
            self._count_established(-1)
        words[key_at] = TOMBSTONE
        words[self._header + H_LIVE] = len(self.slots)

    def _write(self, index: int, sid: int, state: int, peer: int) -> None:
        """Rewrite the entry at ``index`` (the peer first, then the key)."""
        words = self.words
        key_at = self._base + 2 * index
        was = words[key_at] >> STATE_SHIFT
        words[key_at + 1] = peer
        words[key_at] = sid | state << STATE_SHIFT
        if was != state and ESTABLISHED in (was, state):
            self._count_established(1 if state == ESTABLISHED else -1)

    def _count_established(self, change: int) -> None:
        self.established += change
        self.words[self._header + H_ESTABLISHED] = self.established

    def _place(self, base: int, sid: int, state: int, peer: int) -> int:
        words = self.words
        mask = self.table.mask
        index = self.table.slot_of(sid)
        while True:
            key = words[base + 2 * index]
            if key == 0 or key == TOMBSTONE:
                if key == 0:
                    self.used += 1
                words[base + 2 * index + 1] = peer  # the peer first, then the key
                words[base + 2 * index] = sid | state << STATE_SHIFT
                return index
            index = (index + 1) & mask

    def _rebuild(self) -> None:
        """Copy the live entries into the other half (no tombstones), then flip."""
        table, words = self.table, self.words
        old = table.base(self.region, self.half)
        new_half = 1 - self.half
        new = table.base(self.region, new_half)
        start = new * 8
        table._memory[start : start + table._half_words * 8] = bytes(table._half_words * 8)
        self.used = 0
        slots: dict[int, int] = {}
        for sid, index in self.slots.items():
            key = words[old + 2 * index]
            slots[sid] = self._place(new, sid, key >> STATE_SHIFT, words[old + 2 * index + 1])
        self.slots = slots
        self._base = new
        words[self._header + H_HALF] = new_half  # one store: readers switch here
