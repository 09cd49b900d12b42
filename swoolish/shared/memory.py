"""``Table`` and ``Atomic``: Swoole's shared-memory table and counters.

Both live in an anonymous memfd mapped shared, created by the process that constructs
them: the master, when the app's module is imported before ``start()``. Every worker is
forked from the master, so it inherits the mapping; a reload forks new workers from the
same master, so the data outlives every reload (docs/porting.md, "Table and Atomic").

**Attaching.** A worker imports the app *again* after the fork (docs/reload.md), so the
module-level ``Table(...)`` runs once more in the worker. There it must attach to the
master's memory, not make new memory. The process-wide registry below (this module is
swoolish's, never purged by ``loader.purge_user_modules``, so a worker still holds the
master's registry) records every Table and Atomic the owning process creates, under its
``name=`` or, without one, under the file that created it and its rank there (the first
Table of ``app.py``, the second …). In a worker the same call finds the master's record
and attaches; a changed size or column list raises :class:`SchemaMismatch` naming both
(the worker's boot fails, so a reload is rolled back with that cause), and a Table the
master never created (made in a handler, or added by new code on a reload) raises
:class:`NotCreatedByMaster`.

**Locks.** Every operation holds POSIX record locks (``fcntl(2)`` ``F_SETLKW`` through
``fcntl.lockf``) on bytes of the memfd. The kernel owns such a lock per process and drops
it when its holder dies, even by SIGKILL, so a worker killed in the middle of an
operation never blocks the others. A Table hashes a key to one of ``buckets`` chains and
locks that bucket's byte only, so operations on keys of different buckets run in
parallel; inserting or deleting a row also takes the allocator's byte (the free list and
the row count), always after the bucket's (one order, so no deadlock). Record locks do
not exclude the threads of one process from each other, so a per-process thread lock is
taken first.

**A process killed mid-operation.** A change to the table's structure (link a new row,
unlink one, the free list, the count) sets a *dirty* word first and clears it last, all
under the allocator lock. Whoever takes that lock next and finds the word set rebuilds
the free list and the count from the chains (which only change under that lock): a kill
leaks no row and leaves no count wrong. A row's values are written with one copy, so a
row is seen wholly before or wholly after an update, except by a process killed inside
that very copy (the row may then hold part of the update).

**Hashing.** A key's bucket comes from Python's ``hash()`` of the key: keyed (SipHash)
against collision floods, and the same in every process forked from the creator, which
are the only processes that can reach the memory.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import sys
import threading
import weakref
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar, TypeAlias

from ..core.errors import SwoolishError

__all__ = [
    "MAX_KEY_BYTES",
    "Atomic",
    "NotCreatedByMaster",
    "SchemaMismatch",
    "Table",
    "TableFull",
    "enter_worker",
]

MAX_KEY_BYTES = 63  # as Swoole's TABLE_KEY_SIZE - 1
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
MAX_ROWS = 2**31  # row numbers are stored in 32 bits
_MAGIC = 0x5357_4F4F_4C54_4231  # "SWOOLTB1"

#: A column's type as given: ``int``, ``float``, or ``(str, max_bytes)``.
ColumnSpec: TypeAlias = type | tuple[type, int]


class TableFull(SwoolishError):
    """Every row of a Table is taken; the message gives the table's size."""


class SchemaMismatch(SwoolishError, RuntimeError):
    """A worker's code declares a Table (or Atomic) unlike the one the master created."""


class NotCreatedByMaster(SwoolishError, RuntimeError):
    """A worker creates a Table or Atomic the master did not create before forking."""


# -- the registry: which process owns the memory, and what it created -----------------


class _Registry:
    """What the owning process created, found again by the workers it forks."""

    def __init__(self) -> None:
        self.owner_pid: int | None = None  # the process whose creations make new memory
        self.worker = False  # set by enter_worker(): this process only attaches
        self.records: dict[tuple[str, ...], Any] = {}
        self.ranks: dict[tuple[str, str], int] = {}  # (kind, file) -> created so far
        self.ranks_pid = os.getpid()

    def attaching(self) -> bool:
        """True in a process forked from the owner (a worker): it attaches, never creates."""
        return self.worker or (self.owner_pid is not None and self.owner_pid != os.getpid())

    def next_rank(self, kind: str, file: str) -> int:
        """The rank of a new unnamed object of ``kind`` made by ``file``, per process."""
        if self.ranks_pid != os.getpid():  # counts made by the master are not ours
            self.ranks.clear()
            self.ranks_pid = os.getpid()
        rank = self.ranks.get((kind, file), 0)
        self.ranks[(kind, file)] = rank + 1
        return rank


_registry = _Registry()


def enter_worker() -> None:
    """Mark this process as a forked worker, before it imports the app: from now on a
    Table or Atomic the code creates attaches to the master's, or fails clearly."""
    _registry.worker = True


def _record_key(kind: str, name: str | None, file: str) -> tuple[tuple[str, ...], str]:
    """The registry key of a new object, and how to name it in an error."""
    if name is not None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{kind} name must be a non-empty str, got {name!r}")
        return (kind, "name", name), f"{kind} {name!r}"
    rank = _registry.next_rank(kind, file)
    label = f"{kind} #{rank + 1} of {file}"
    return (kind, "order", file, str(rank)), label


def _caller_file() -> str:
    """The file of the first frame outside this module: the app's line that made it."""
    frame = sys._getframe(1)
    while frame is not None and frame.f_code.co_filename == __file__:
        frame = frame.f_back  # type: ignore[assignment]
    if frame is None:
        return "?"
    filename = frame.f_code.co_filename
    return os.path.realpath(filename) if os.path.exists(filename) else filename


def _register(key: tuple[str, ...], label: str, schema: str, make: Any) -> Any:
    """Create the memory (owner) or find the master's (worker)."""
    if _registry.attaching():
        found = _registry.records.get(key)
        if found is None:
            hint = " (matched by creation order; name= pins it)" if key[1] == "order" else ""
            raise NotCreatedByMaster(
                f"{label} was not created by the master{hint}: create Tables and Atomics "
                "at module level of the app, before start(); one added by new code needs a "
                "full restart, not a reload"
            )
        if found.schema != schema:
            raise SchemaMismatch(
                f"{label}: the master created {found.schema}, this code declares {schema} "
                "(size and columns change only on a full restart, not a reload)"
            )
        return found
    if _registry.owner_pid is None:
        _registry.owner_pid = os.getpid()
    segment = make()
    _registry.records[key] = segment
    return segment


# -- shared memory and its locks --------------------------------------------------------

_segments: weakref.WeakSet[_Segment] = weakref.WeakSet()


class _Segment:
    """One memfd mapped shared, its record locks, and this process's thread lock."""

    def __init__(self, label: str, length: int, schema: str) -> None:
        self.schema = schema
        # Inherited across fork (not across exec: workers are forked, never exec'd).
        self.fd = os.memfd_create(f"swoolish-{label}", os.MFD_CLOEXEC)
        os.ftruncate(self.fd, length)
        self.memory = mmap.mmap(self.fd, length, mmap.MAP_SHARED)
        self.length = length
        self.thread = threading.Lock()
        _segments.add(self)

    def lock(self, offset: int) -> None:
        """Take the record lock on byte ``offset`` (waits; dropped if this process dies)."""
        fcntl.lockf(self.fd, fcntl.LOCK_EX, 1, offset)

    def unlock(self, offset: int) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN, 1, offset)

    def held(self, offset: int) -> _Held:
        """``with segment.held(offset):`` this process's thread lock, then the record
        lock on byte ``offset`` (record locks do not exclude threads of one process)."""
        return _Held(self, offset)


class _Held:
    """The context of :meth:`_Segment.held` (a class: cheaper than a generator)."""

    __slots__ = ("offset", "segment")

    def __init__(self, segment: _Segment, offset: int) -> None:
        self.segment, self.offset = segment, offset

    def __enter__(self) -> None:
        self.segment.thread.acquire()
        try:
            self.segment.lock(self.offset)
        except BaseException:
            self.segment.thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            self.segment.unlock(self.offset)
        finally:
            self.segment.thread.release()


def _renew_thread_locks() -> None:
    """In a forked child: a thread lock held by another thread at the fork stays held
    forever in the child's copy, so every segment gets a fresh one."""
    for segment in list(_segments):
        segment.thread = threading.Lock()


os.register_at_fork(after_in_child=_renew_thread_locks)

_U32 = struct.Struct("=I")
_I64 = struct.Struct("=q")
_Q64 = struct.Struct("=Q")


def _check_int(value: object, what: str) -> int:
    if not isinstance(value, int):
        raise TypeError(f"{what} takes an int, got {type(value).__name__}")
    if not INT_MIN <= value <= INT_MAX:
        raise OverflowError(f"{what}: {value} is outside the signed 64-bit range")
    return value


# -- Atomic -----------------------------------------------------------------------------


class Atomic:
    """A signed 64-bit counter shared by the master and every worker (Swoole's
    ``Atomic``/``Atomic\\Long``). Create it at module level, before ``start()``; in a
    worker the same line attaches to the master's counter, whose value survives reloads
    (the initial ``value`` is then ignored). Going past the 64-bit range raises
    ``OverflowError`` and changes nothing (Swoole wraps around)."""

    _LOCK = 0  # the byte locked by every operation

    def __init__(self, value: int = 0, *, name: str | None = None) -> None:
        _check_int(value, "Atomic")
        key, label = _record_key("Atomic", name, _caller_file())
        self.label = label

        def make() -> _Segment:
            segment = _Segment("atomic", 8, "Atomic")
            _I64.pack_into(segment.memory, 0, value)
            return segment

        self._segment: _Segment = _register(key, label, "Atomic", make)

    def _apply(self, change: Any) -> tuple[int, int]:
        """Run ``change(old) -> new or None`` under the lock; (old, value now)."""
        segment = self._segment
        with segment.held(self._LOCK):
            (old,) = _I64.unpack_from(segment.memory, 0)
            new = change(old)
            if new is None:
                return old, old
            _check_int(new, "Atomic")
            _I64.pack_into(segment.memory, 0, new)
            return old, new

    def add(self, n: int = 1) -> int:
        """Add ``n``; the new value."""
        _check_int(n, "Atomic.add")
        return self._apply(lambda old: old + n)[1]

    def sub(self, n: int = 1) -> int:
        """Subtract ``n``; the new value."""
        _check_int(n, "Atomic.sub")
        return self._apply(lambda old: old - n)[1]

    def get(self) -> int:
        return self._apply(lambda old: None)[0]

    def set(self, value: int) -> None:
        _check_int(value, "Atomic.set")
        self._apply(lambda old: value)

    def cmpset(self, expected: int, value: int) -> bool:
        """Set ``value`` if the counter holds ``expected`` (Swoole's name); whether it did."""
        _check_int(expected, "Atomic.cmpset")
        _check_int(value, "Atomic.cmpset")
        old, _ = self._apply(lambda old: value if old == expected else None)
        return old == expected

    compare_and_set = cmpset

    def __int__(self) -> int:
        return self.get()

    def __repr__(self) -> str:
        return f"<Atomic {self.label}: {self.get()}>"


# -- Table ------------------------------------------------------------------------------

# Header words: magic, dirty, count, free list head (row + 1), rows ever handed out.
_H_MAGIC, _H_DIRTY, _H_COUNT, _H_FREE, _H_UNUSED = (8 * i for i in range(5))
_HEADER_SIZE = 64
# A row: next row of its chain (row + 1, 0 ends it), key length, the key's hash, the key.
_ROW_HEAD = struct.Struct("=IBxxxq")
_KEY_AT = _ROW_HEAD.size
_VALUES_AT = _KEY_AT + MAX_KEY_BYTES + 1  # 80


class _Column:
    """One typed column: where it sits in a row, how it is packed."""

    __slots__ = ("codec", "kind", "name", "offset", "size")

    def __init__(self, name: str, kind: type, size: int, offset: int) -> None:
        self.name, self.kind, self.size, self.offset = name, kind, size, offset
        fmt = {int: "=q", float: "=d"}.get(kind) or f"=I{size}s"
        self.codec = struct.Struct(fmt)

    def spec(self) -> str:
        return f"({self.kind.__name__}, {self.size})" if self.kind is str else self.kind.__name__

    def encode(self, value: object) -> tuple[Any, ...]:
        """The packed fields of ``value``, or the error that says why it does not fit."""
        if self.kind is int:
            return (_check_int(value, f"column {self.name!r}"),)
        if self.kind is float:
            if not isinstance(value, (int, float)):
                raise TypeError(f"column {self.name!r} takes a float, got {type(value).__name__}")
            return (float(value),)
        if not isinstance(value, str):
            raise TypeError(f"column {self.name!r} takes a str, got {type(value).__name__}")
        data = value.encode()
        if len(data) > self.size:
            raise ValueError(
                f"column {self.name!r} holds at most {self.size} bytes, got {len(data)} "
                "(UTF-8); nothing was written"
            )
        return (len(data), data)

    def decode(self, fields: tuple[Any, ...]) -> Any:
        if self.kind is str:
            length, data = fields
            return bytes(data[:length]).decode()
        return fields[0]


def _parse_columns(columns: Mapping[str, ColumnSpec]) -> list[tuple[str, type, int]]:
    parsed = []
    for name, spec in columns.items():
        if isinstance(spec, tuple) and len(spec) == 2:
            kind, size = spec
        else:
            kind, size = spec, 8
        parsed.append(_check_column(name, kind, size))
    return parsed


def _check_column(name: object, kind: object, size: object) -> tuple[str, type, int]:
    if not isinstance(name, str) or not name:
        raise ValueError(f"a column name must be a non-empty str, got {name!r}")
    if kind not in (int, float, str):
        raise TypeError(f"column {name!r}: the type must be int, float or (str, size)")
    if kind is str and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise ValueError(f"column {name!r}: a str column needs a size in bytes >= 1")
    assert isinstance(kind, type) and isinstance(size, int)
    return name, kind, size if kind is str else 8


class Table:
    """A hash table of typed rows in shared memory, shared by the master and every worker
    (Swoole's ``Table``). See the module docstring and docs/porting.md."""

    TYPE_INT: ClassVar[type] = int
    TYPE_FLOAT: ClassVar[type] = float
    TYPE_STRING: ClassVar[type] = str

    def __init__(
        self,
        size: int,
        columns: Mapping[str, ColumnSpec] | None = None,
        *,
        name: str | None = None,
    ) -> None:
        """``size`` rows at most; ``columns`` maps a name to ``int``, ``float`` or
        ``(str, max_bytes)``. Without ``columns``, add them with :meth:`column` and call
        :meth:`create` (Swoole's way)."""
        if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size < MAX_ROWS:
            raise ValueError(f"Table size must be an int from 1 to {MAX_ROWS - 1}, got {size!r}")
        self.size = size
        self._name = name
        self._file = _caller_file()
        self._pending: list[tuple[str, type, int]] = []
        self._segment: _Segment | None = None
        if columns is not None:
            self._pending = _parse_columns(columns)
            self.create()

    # -- building

    def column(self, name: str, kind: type, size: int = 8) -> None:
        """Add a column before :meth:`create` (Swoole's ``column()``)."""
        if self._segment is not None:
            raise RuntimeError("Table.column() after create(): the columns are fixed")
        self._pending.append(_check_column(name, kind, size))

    def create(self) -> bool:
        """Make the shared memory (in the master) or attach to it (in a worker)."""
        if self._segment is not None:
            return True
        if not self._pending:
            raise ValueError("a Table needs at least one column")
        names = [name for name, _, _ in self._pending]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate column names in {names}")
        self._columns: dict[str, _Column] = {}
        offset = 0
        for col_name, kind, col_size in self._pending:
            column = _Column(col_name, kind, col_size, offset)
            self._columns[col_name] = column
            offset += column.codec.size
        self._values_size = offset
        self._row_size = (_VALUES_AT + offset + 7) // 8 * 8
        self._buckets = 1 << max(self.size - 1, 1).bit_length()  # a power of two >= size
        self._mask = self._buckets - 1
        self._alloc_lock = self._buckets  # the allocator's byte; bucket b locks byte b
        self._rows_at = (_HEADER_SIZE + 4 * self._buckets + 7) // 8 * 8
        self._zero = bytes(offset)
        key, label = _record_key("Table", self._name, self._file)
        self.label = label
        self._segment = _register(key, label, self.schema, self._make)
        return True

    @property
    def schema(self) -> str:
        """The table's size and columns, as the constructor spells them."""
        cols = ", ".join(f"{c!r}: {col.spec()}" for c, col in self._columns.items())
        return f"Table({self.size}, {{{cols}}})"

    def _make(self) -> _Segment:
        length = self._rows_at + self.size * self._row_size
        segment = _Segment("table", length, self.schema)
        _Q64.pack_into(segment.memory, _H_MAGIC, _MAGIC)
        return segment

    @property
    def memory_size(self) -> int:
        """Bytes of shared memory the table maps (pages are touched as rows are used)."""
        return self._seg().length

    @property
    def columns(self) -> dict[str, ColumnSpec]:
        """The columns, as the constructor takes them."""
        self._seg()
        return {
            n: ((c.kind, c.size) if c.kind is str else c.kind) for n, c in self._columns.items()
        }

    def _seg(self) -> _Segment:
        if self._segment is None:
            raise RuntimeError("call Table.create() first")
        return self._segment

    # -- the row operations

    def set(self, key: str, row: Mapping[str, Any]) -> None:
        """Write the given columns of ``key``'s row (others keep their values; a new row
        starts at 0, 0.0 and ""). Every value is checked before anything is written."""
        encoded = self._encode_row(row)
        self._update(key, encoded)

    def get(self, key: str, column: str | None = None) -> Any:
        """The row as a dict (or one column's value); None when ``key`` has no row."""
        segment = self._seg()
        data, h, bucket = self._key(key)
        col = self._column(column) if column is not None else None
        with segment.held(bucket):
            at, _ = self._find(bucket, h, data)
            if at < 0:
                return None
            if col is not None:
                return col.decode(col.codec.unpack_from(segment.memory, at + col.offset))
            raw = segment.memory[at : at + self._values_size]
        return self._decode(raw)

    def incr(self, key: str, column: str, by: int | float = 1) -> int | float:
        """Add ``by`` to an int or float column, creating the row if missing (as Swoole
        does); the new value. An int going past 64 bits raises OverflowError, unchanged."""
        col = self._column(column)
        if col.kind is str:
            raise TypeError(f"column {column!r} is a str column; incr() needs int or float")
        if col.kind is int:
            _check_int(by, f"incr of column {column!r}")
        elif not isinstance(by, (int, float)):
            raise TypeError(f"incr of column {column!r} takes a number, got {type(by).__name__}")
        segment = self._seg()
        data, h, bucket = self._key(key)
        with segment.held(bucket):
            at, _ = self._find(bucket, h, data)
            if at < 0:
                new = col.kind(by)
                values = bytearray(self._zero)
                col.codec.pack_into(values, col.offset, new)
                self._insert(bucket, h, data, values)
                return new
            (old,) = col.codec.unpack_from(segment.memory, at + col.offset)
            new = old + by
            if col.kind is int:
                _check_int(new, f"column {column!r}")
            col.codec.pack_into(segment.memory, at + col.offset, new)
            return new

    def decr(self, key: str, column: str, by: int | float = 1) -> int | float:
        """Subtract ``by`` (see :meth:`incr`); the new value."""
        if not isinstance(by, (int, float)):
            raise TypeError(f"decr of column {column!r} takes a number, got {type(by).__name__}")
        return self.incr(key, column, -by)

    def delete(self, key: str) -> bool:
        """Remove ``key``'s row (Swoole's ``del``); whether there was one."""
        segment = self._seg()
        data, h, bucket = self._key(key)
        with segment.held(bucket):
            at, link = self._find(bucket, h, data)
            if at < 0:
                return False
            self._unlink(at, link)
            return True

    def exists(self, key: str) -> bool:
        segment = self._seg()
        data, h, bucket = self._key(key)
        with segment.held(bucket):
            return self._find(bucket, h, data)[0] >= 0

    def count(self) -> int:
        """How many rows the table holds now."""
        segment = self._seg()
        with segment.held(self._alloc_lock):
            self._repair_if_dirty()
            count: int = _Q64.unpack_from(segment.memory, _H_COUNT)[0]
            return count

    def __len__(self) -> int:
        return self.count()

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self.exists(key)

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(key, row)`` pairs, bucket by bucket. Each row is read whole under its lock,
        but the whole is no snapshot: rows changed meanwhile may appear or not."""
        segment = self._seg()
        for bucket in range(self._buckets):
            if not _U32.unpack_from(segment.memory, _HEADER_SIZE + 4 * bucket)[0]:
                continue  # empty now; a row inserted meanwhile may be missed, as above
            yield from self._read_bucket(bucket)

    def __repr__(self) -> str:
        return f"<{self.schema} {getattr(self, 'label', '(not created)')}>"

    # -- inside the locks

    def _key(self, key: str) -> tuple[bytes, int, int]:
        if not isinstance(key, str):
            raise TypeError(f"a Table key is a str, got {type(key).__name__}")
        data = key.encode()
        if len(data) > MAX_KEY_BYTES:
            raise ValueError(
                f"a Table key is at most {MAX_KEY_BYTES} bytes (UTF-8), got {len(data)}"
            )
        h = hash(key)
        return data, h, h & self._mask

    def _column(self, name: str) -> _Column:
        self._seg()
        col = self._columns.get(name)
        if col is None:
            raise ValueError(f"no column {name!r}; the columns are {', '.join(self._columns)}")
        return col

    def _encode_row(self, row: Mapping[str, Any]) -> list[tuple[_Column, tuple[Any, ...]]]:
        if not isinstance(row, Mapping):
            raise TypeError(f"Table.set() takes a dict of columns, got {type(row).__name__}")
        return [(self._column(name), self._column(name).encode(v)) for name, v in row.items()]

    def _update(self, key: str, encoded: list[tuple[_Column, tuple[Any, ...]]]) -> None:
        segment = self._seg()
        data, h, bucket = self._key(key)
        with segment.held(bucket):
            at, _ = self._find(bucket, h, data)
            if at < 0:
                values = bytearray(self._zero)
            else:
                values = bytearray(segment.memory[at : at + self._values_size])
            for col, fields in encoded:
                col.codec.pack_into(values, col.offset, *fields)
            if at < 0:
                self._insert(bucket, h, data, values)
            else:
                segment.memory[at : at + self._values_size] = values  # one copy

    def _decode(self, raw: bytes) -> dict[str, Any]:
        return {
            name: col.decode(col.codec.unpack_from(raw, col.offset))
            for name, col in self._columns.items()
        }

    def _row_at(self, row: int) -> int:
        """Offset of row number ``row`` (1-based, as stored in links)."""
        return self._rows_at + (row - 1) * self._row_size

    def _find(self, bucket: int, h: int, data: bytes) -> tuple[int, int]:
        """(offset of the row's values or -1, offset of the link that points to it, or
        to where a new row would go). The bucket's lock is held."""
        memory = self._seg().memory
        link = _HEADER_SIZE + 4 * bucket
        (row,) = _U32.unpack_from(memory, link)
        while row:
            at = self._row_at(row)
            nxt, length, row_hash = _ROW_HEAD.unpack_from(memory, at)
            if row_hash == h and memory[at + _KEY_AT : at + _KEY_AT + length] == data:
                return at + _VALUES_AT, link
            link, row = at, nxt
        return -1, link

    def _read_bucket(self, bucket: int) -> list[tuple[str, dict[str, Any]]]:
        segment = self._seg()
        found = []
        with segment.held(bucket):
            memory = segment.memory
            (row,) = _U32.unpack_from(memory, _HEADER_SIZE + 4 * bucket)
            for _ in range(self.size):  # bounded, whatever the memory holds
                if not row:
                    break
                at = self._row_at(row)
                row, length, _ = _ROW_HEAD.unpack_from(memory, at)
                key = bytes(memory[at + _KEY_AT : at + _KEY_AT + length]).decode()
                raw = memory[at + _VALUES_AT : at + _VALUES_AT + self._values_size]
                found.append((key, raw))
        return [(key, self._decode(raw)) for key, raw in found]

    def _insert(self, bucket: int, h: int, data: bytes, values: bytes | bytearray) -> None:
        """Link a new row at the head of ``bucket`` (whose lock is held)."""
        segment = self._seg()
        memory = segment.memory
        segment.lock(self._alloc_lock)
        try:
            self._repair_if_dirty()
            (free,) = _Q64.unpack_from(memory, _H_FREE)
            (unused,) = _Q64.unpack_from(memory, _H_UNUSED)
            if not free and unused >= self.size:
                raise TableFull(
                    f"{self.label} is full: all {self.size} rows are taken; delete rows or "
                    "create it with a larger size (a full restart)"
                )
            _Q64.pack_into(memory, _H_DIRTY, 1)
            if free:
                row = free
                next_free = _U32.unpack_from(memory, self._row_at(row))[0]
                _Q64.pack_into(memory, _H_FREE, next_free)
            else:
                row = unused + 1
                _Q64.pack_into(memory, _H_UNUSED, unused + 1)
            at = self._row_at(row)
            link = _HEADER_SIZE + 4 * bucket
            (head,) = _U32.unpack_from(memory, link)
            _ROW_HEAD.pack_into(memory, at, head, len(data), h)
            memory[at + _KEY_AT : at + _KEY_AT + len(data)] = data
            memory[at + _VALUES_AT : at + _VALUES_AT + self._values_size] = values
            _U32.pack_into(memory, link, row)  # the row becomes visible here
            count = _Q64.unpack_from(memory, _H_COUNT)[0]
            _Q64.pack_into(memory, _H_COUNT, count + 1)
            _Q64.pack_into(memory, _H_DIRTY, 0)
        finally:
            segment.unlock(self._alloc_lock)

    def _unlink(self, values_at: int, link: int) -> None:
        """Take the row out of its chain (whose lock is held) and free it."""
        segment = self._seg()
        memory = segment.memory
        at = values_at - _VALUES_AT
        row = (at - self._rows_at) // self._row_size + 1
        segment.lock(self._alloc_lock)
        try:
            self._repair_if_dirty()
            _Q64.pack_into(memory, _H_DIRTY, 1)
            (nxt,) = _U32.unpack_from(memory, at)
            _U32.pack_into(memory, link, nxt)  # the row is gone from here on
            (free,) = _Q64.unpack_from(memory, _H_FREE)
            _U32.pack_into(memory, at, free)
            _Q64.pack_into(memory, _H_FREE, row)
            count = _Q64.unpack_from(memory, _H_COUNT)[0]
            _Q64.pack_into(memory, _H_COUNT, count - 1)
            _Q64.pack_into(memory, _H_DIRTY, 0)
        finally:
            segment.unlock(self._alloc_lock)

    def _repair_if_dirty(self) -> None:
        """After a process died inside a structure change (the allocator lock is held):
        rebuild the free list and the count from the chains, which change only under
        that lock."""
        memory = self._seg().memory
        if not _Q64.unpack_from(memory, _H_DIRTY)[0]:
            return
        (unused,) = _Q64.unpack_from(memory, _H_UNUSED)
        linked = bytearray(unused + 1)
        count = 0
        for bucket in range(self._buckets):
            (row,) = _U32.unpack_from(memory, _HEADER_SIZE + 4 * bucket)
            while row and row <= unused and not linked[row]:
                linked[row] = 1
                count += 1
                (row,) = _U32.unpack_from(memory, self._row_at(row))
        free = 0
        for row in range(unused, 0, -1):
            if not linked[row]:
                _U32.pack_into(memory, self._row_at(row), free)
                free = row
        _Q64.pack_into(memory, _H_FREE, free)
        _Q64.pack_into(memory, _H_COUNT, count)
        _Q64.pack_into(memory, _H_DIRTY, 0)
