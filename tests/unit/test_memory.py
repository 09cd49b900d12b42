"""Table and Atomic (swoolish/shared/memory.py): semantics, errors, and real processes.

Processes are forked, as the master forks its workers: several of them incrementing one
key lose no update, a child attaches by name or by creation order and sees the parent's
rows, and a child SIGKILLed in the middle of operations leaves the table usable (the
kernel drops its record locks; a half-done structure change is repaired).
"""

from __future__ import annotations

import contextlib
import os
import runpy
import select
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import swoolish
from swoolish.shared import memory
from swoolish.shared.memory import (
    Atomic,
    NotCreatedByMaster,
    SchemaMismatch,
    Table,
    TableFull,
)

DEADLINE = 20.0  # seconds: a deadlock fails the test instead of hanging it
COLUMNS: dict[str, Any] = {"hits": int, "score": float, "name": (str, 8)}


def read_within(fd: int, seconds: float = DEADLINE, size: int = 4096) -> bytes:
    ready, _, _ = select.select([fd], [], [], seconds)
    assert ready, f"nothing within {seconds}s (deadlocked?)"
    return os.read(fd, size)


def fork(body: Callable[[], object], report: int | None = None) -> int:
    """Run ``body`` in a child; what it returns is written to the pipe ``report``."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            result = body()
            if report is not None:
                os.write(report, repr(result).encode())
            code = 0
        except BaseException as exc:
            if report is not None:
                os.write(report, f"{type(exc).__name__}: {exc}".encode())
        finally:
            os._exit(code)
    return pid


def run_in_child(body: Callable[[], object]) -> str:
    """``repr()`` of what ``body`` returns in a forked child, or its exception."""
    r, w = os.pipe()
    pid = fork(body, w)
    try:
        return read_within(r).decode()
    finally:
        reap(pid)
        os.close(r)
        os.close(w)


def reap(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


# -- semantics ----------------------------------------------------------------------------


def test_the_package_exports_them():
    assert swoolish.Table is Table and swoolish.Atomic is Atomic
    assert {"Table", "Atomic", "TableFull"} <= set(swoolish.__all__)
    assert issubclass(TableFull, swoolish.SwoolishError)


def test_a_new_row_starts_at_zero_and_set_keeps_the_other_columns():
    table = Table(8, COLUMNS)
    table.set("a", {"hits": 3})
    assert table.get("a") == {"hits": 3, "score": 0.0, "name": ""}
    table.set("a", {"name": "héllo", "score": 2})
    assert table.get("a") == {"hits": 3, "score": 2.0, "name": "héllo"}
    assert table.get("a", "name") == "héllo"
    assert table.get("missing") is None and table.get("missing", "hits") is None


def test_incr_creates_the_row_and_returns_the_new_value():
    table = Table(8, COLUMNS)
    assert table.incr("a", "hits") == 1
    assert table.incr("a", "hits", 5) == 6
    assert table.decr("a", "hits", 10) == -4
    assert table.incr("b", "score", 1.5) == 1.5
    assert table.decr("b", "score") == 0.5
    assert isinstance(table.incr("c", "score"), float)
    assert table.get("c") == {"hits": 0, "score": 1.0, "name": ""}


def test_delete_exists_count_len_and_iteration():
    table = Table(8, COLUMNS)
    for key in "abc":
        table.set(key, {"hits": ord(key)})
    assert table.exists("b") and "b" in table and 5 not in table
    assert table.count() == len(table) == 3
    assert table.delete("b") is True and table.delete("b") is False
    assert not table.exists("b") and len(table) == 2
    assert dict(table) == {
        "a": {"hits": 97, "score": 0.0, "name": ""},
        "c": {"hits": 99, "score": 0.0, "name": ""},
    }
    assert table.memory_size > 8 * 80
    assert table.columns == COLUMNS


def test_a_deleted_row_is_reused_and_the_table_holds_exactly_size_rows():
    table = Table(3, {"n": int})
    for key in "abc":
        table.incr(key, "n")
    with pytest.raises(TableFull, match="all 3 rows are taken"):
        table.set("d", {"n": 1})
    assert table.get("d") is None and len(table) == 3
    table.incr("a", "n")  # an existing row still changes
    assert table.delete("b")
    table.set("d", {"n": 4})
    assert dict(table) == {"a": {"n": 2}, "c": {"n": 1}, "d": {"n": 4}}


def test_swooles_way_column_then_create():
    table = Table(16)
    table.column("id", Table.TYPE_INT)
    table.column("name", Table.TYPE_STRING, 4)
    table.column("avg", Table.TYPE_FLOAT)
    assert table.create() is True
    table.set("k", {"id": 1, "name": "abcd"})
    assert table.get("k") == {"id": 1, "name": "abcd", "avg": 0.0}
    assert table.schema == "Table(16, {'id': int, 'name': (str, 4), 'avg': float})"
    with pytest.raises(RuntimeError, match="after create"):
        table.column("late", int)
    with pytest.raises(RuntimeError, match="create"):
        Table(4).get("k")


# -- errors -------------------------------------------------------------------------------


def test_a_too_long_string_is_refused_and_nothing_is_written():
    table = Table(4, COLUMNS)
    table.set("a", {"hits": 1, "name": "ok"})
    with pytest.raises(ValueError, match=r"column 'name' holds at most 8 bytes, got 9"):
        table.set("a", {"hits": 2, "name": "123456789"})
    with pytest.raises(ValueError, match="at most 8 bytes, got 10"):
        table.set("a", {"name": "ééééé"})  # 5 characters, 10 bytes
    assert table.get("a") == {"hits": 1, "score": 0.0, "name": "ok"}
    with pytest.raises(ValueError, match="at most 8 bytes"):
        table.set("new", {"name": "123456789"})
    assert not table.exists("new")


def test_keys_are_str_of_at_most_63_bytes():
    table = Table(4, COLUMNS)
    table.set("k" * 63, {"hits": 1})
    assert table.get("k" * 63, "hits") == 1
    with pytest.raises(ValueError, match="at most 63 bytes"):
        table.set("k" * 64, {"hits": 1})
    with pytest.raises(TypeError, match="key is a str"):
        table.get(1)  # type: ignore[arg-type]


def test_bad_columns_and_values_say_what_is_wrong():
    table = Table(4, COLUMNS)
    with pytest.raises(ValueError, match="no column 'nope'; the columns are hits, score, name"):
        table.set("a", {"nope": 1})
    with pytest.raises(TypeError, match="column 'hits' takes an int"):
        table.set("a", {"hits": 1.5})
    with pytest.raises(TypeError, match="str column"):
        table.incr("a", "name")
    with pytest.raises(TypeError, match="takes an int"):
        table.incr("a", "hits", 0.5)
    with pytest.raises(OverflowError):
        table.set("a", {"hits": 2**63})
    table.set("a", {"hits": 2**63 - 1})
    with pytest.raises(OverflowError):
        table.incr("a", "hits")
    assert table.get("a", "hits") == 2**63 - 1
    with pytest.raises(TypeError):
        Table(4, {"x": list})
    with pytest.raises(ValueError, match="size in bytes"):
        Table(4, {"x": (str, 0)})
    with pytest.raises(ValueError, match="size"):
        Table(0, {"x": int})


# -- Atomic -------------------------------------------------------------------------------


def test_atomic_add_sub_get_set_and_compare_and_set():
    counter = Atomic(5)
    assert counter.add() == 6 and counter.add(4) == 10 and counter.sub(3) == 7
    assert counter.get() == 7 and int(counter) == 7
    counter.set(-2)
    assert counter.cmpset(-2, 9) is True and counter.get() == 9
    assert counter.compare_and_set(-2, 1) is False and counter.get() == 9
    counter.set(2**63 - 1)
    with pytest.raises(OverflowError):
        counter.add()
    assert counter.get() == 2**63 - 1
    with pytest.raises(TypeError):
        counter.add(1.5)  # type: ignore[arg-type]


# -- a model: any sequence of operations behaves like a dict ------------------------------

OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "incr", "delete"]), st.sampled_from("abcdefgh"), st.integers(-5, 5)
    ),
    max_size=60,
)


@settings(max_examples=60, deadline=None)
@given(OPS)
def test_any_sequence_of_operations_matches_a_dict(ops: list[tuple[str, str, int]]) -> None:
    table = Table(6, {"n": int})
    model: dict[str, int] = {}
    for op, key, n in ops:
        if op == "set" or (op == "incr" and key not in model):
            if key not in model and len(model) == 6:
                with pytest.raises(TableFull):
                    table.set(key, {"n": n}) if op == "set" else table.incr(key, "n", n)
                continue
        if op == "set":
            table.set(key, {"n": n})
            model[key] = n
        elif op == "incr":
            model[key] = model.get(key, 0) + n
            assert table.incr(key, "n", n) == model[key]
        else:
            assert table.delete(key) is (model.pop(key, None) is not None)
    assert len(table) == len(model)
    assert {k: row["n"] for k, row in table} == model


# -- processes ----------------------------------------------------------------------------


def test_four_processes_incrementing_one_key_lose_no_update():
    table = Table(64, {"n": int})
    counter = Atomic()
    each = 2000

    def work() -> None:
        for i in range(each):
            table.incr("one", "n")
            table.incr(f"k{i % 32}", "n")
            counter.add()

    pids = [fork(work) for _ in range(4)]
    for pid in pids:
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    assert table.get("one", "n") == 4 * each
    assert sum(row["n"] for key, row in table if key != "one") == 4 * each
    assert counter.get() == 4 * each
    assert len(table) == 33


def test_a_child_attaches_by_name_and_shares_the_rows():
    table = Table(16, COLUMNS, name="by-name")
    counter = Atomic(7, name="by-name")
    table.set("a", {"hits": 1})

    def child() -> tuple[Any, ...]:
        mine = Table(16, COLUMNS, name="by-name")  # the worker's import of the app
        again = Atomic(0, name="by-name")  # attaches: the initial value is ignored
        mine.incr("a", "hits")
        mine.set("b", {"name": "child"})
        return mine.get("a", "hits"), again.add()

    assert run_in_child(child) == "(2, 8)"
    assert table.get("a", "hits") == 2 and table.get("b", "name") == "child"
    assert counter.get() == 8


def test_a_worker_attaches_by_creation_order_in_the_apps_file(tmp_path: Path):
    """The app's module runs in the master and again in each worker: its unnamed tables
    are matched by file and rank, so the worker gets the master's."""
    app = tmp_path / "app_tables.py"
    app.write_text(
        "from swoolish import Atomic, Table\n"
        "first = Table(8, {'n': int})\n"
        "second = Table(8, {'n': int})\n"
        "visits = Atomic()\n"
    )
    master = runpy.run_path(str(app))
    master["first"].incr("k", "n", 1)
    master["second"].incr("k", "n", 2)
    master["visits"].add(3)

    def worker() -> tuple[Any, ...]:
        memory.enter_worker()
        module = runpy.run_path(str(app))
        module["second"].incr("k", "n", 10)
        return module["first"].get("k", "n"), module["second"].get("k", "n"), module["visits"].get()

    assert run_in_child(worker) == "(1, 12, 3)"
    assert master["second"].get("k", "n") == 12


def test_a_changed_schema_or_an_unknown_table_in_a_worker_is_a_clear_error():
    Table(16, {"hits": int}, name="schema")

    def changed() -> None:
        memory.enter_worker()
        Table(16, {"hits": int, "extra": float}, name="schema")

    def unknown() -> None:
        memory.enter_worker()
        Table(16, {"hits": int}, name="made-in-a-handler")

    error = run_in_child(changed)
    assert error.startswith("SchemaMismatch: Table 'schema': the master created ")
    assert "Table(16, {'hits': int})" in error
    assert "Table(16, {'hits': int, 'extra': float})" in error
    assert "full restart" in error
    error = run_in_child(unknown)
    assert error.startswith("NotCreatedByMaster: Table 'made-in-a-handler' was not created")
    assert "module level" in error
    assert issubclass(SchemaMismatch, RuntimeError) and issubclass(NotCreatedByMaster, RuntimeError)


def test_a_child_killed_while_holding_a_row_lock_does_not_block_the_others():
    """1. a child takes a bucket's lock and is SIGKILLed holding it  2. another process
    increments a key of that bucket: the kernel released the lock with its holder."""
    table = Table(16, {"n": int})
    table.incr("key", "n")
    bucket = hash("key") & (table._buckets - 1)
    held_r, held_w = os.pipe()

    def hold_forever() -> None:
        segment = table._seg()
        segment.lock(bucket)
        os.write(held_w, b"held")
        signal.pause()

    holder = fork(hold_forever)
    try:
        assert read_within(held_r) == b"held"
    finally:
        reap(holder)
        os.close(held_r)
        os.close(held_w)
    assert run_in_child(lambda: table.incr("key", "n")) == "2"
    assert table.get("key", "n") == 2


def test_a_child_killed_inside_a_structure_change_leaks_no_row():
    """A child dies with the allocator's dirty word set and a row taken but never
    linked; the next process to take the allocator lock rebuilds the free list and the
    count, so every one of the ``size`` rows can still be used."""
    table = Table(4, {"n": int})
    table.incr("a", "n")
    dead_r, dead_w = os.pipe()

    def die_inside_an_insert() -> None:
        segment = table._seg()
        segment.lock(table._alloc_lock)
        memory._Q64.pack_into(segment.memory, memory._H_DIRTY, 1)
        memory._Q64.pack_into(segment.memory, memory._H_UNUSED, 2)  # row 2 taken …
        os.write(dead_w, b"inside")
        signal.pause()  # … and never linked

    child = fork(die_inside_an_insert)
    try:
        assert read_within(dead_r) == b"inside"
    finally:
        reap(child)
        os.close(dead_r)
        os.close(dead_w)
    assert run_in_child(table.count) == "1"
    for key in "bcd":
        table.incr(key, "n")
    assert len(table) == 4 and sorted(k for k, _ in table) == ["a", "b", "c", "d"]
    with pytest.raises(TableFull):
        table.incr("e", "n")


def test_children_killed_at_random_points_leave_a_consistent_table():
    """Children insert, increment and delete in a loop and are SIGKILLed mid-loop, many
    times; afterwards the count matches the rows, no row is lost, and the parent's own
    key is exact."""
    table = Table(64, {"n": int})
    expected = 0
    for round_ in range(12):
        started_r, started_w = os.pipe()

        def churn(seed: int = round_, started: int = started_w) -> None:
            os.write(started, b"go")
            i = 0
            while True:
                key = f"c{(seed * 7 + i) % 40}"
                table.incr(key, "n")
                if i % 3 == 0:
                    table.delete(f"c{(seed + i) % 40}")
                i += 1

        children = [fork(churn) for _ in range(2)]
        try:
            for _ in children:
                assert read_within(started_r, size=2) == b"go"
            for _ in range(200):
                table.incr("parent", "n")
                expected += 1
        finally:
            for pid in children:
                reap(pid)
            os.close(started_r)
            os.close(started_w)
        rows = dict(table)
        assert run_in_child(table.count) == str(len(rows))
        assert rows["parent"]["n"] == expected
        assert len(rows) <= 41
    # Every row is still usable: fill the table to its size, exactly.
    for i in range(64 - len(table)):
        table.set(f"fill{i}", {"n": i})
    assert len(table) == 64
    with pytest.raises(TableFull):
        table.set("one-too-many", {"n": 0})
