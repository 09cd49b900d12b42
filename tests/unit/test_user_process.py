"""User processes' pure parts: registration, worker ids, and the ids a ValueError lists."""

from __future__ import annotations

import pytest

from swoolish import WebSocketServer
from swoolish.core.processes import describe_worker_ids, process_index


def consume(process):
    """A target (never run here)."""


def test_add_process_returns_indexes_and_process_id_counts_after_task_workers():
    server = WebSocketServer(worker_num=4, task_worker_num=2)
    assert server.add_process(consume) == 0
    assert server.addProcess(consume, name="second") == 1  # Swoole's spelling
    assert [spec.name for spec in server.processes] == ["consume", "second"]
    assert server.process_id(0) == server.process_id("consume") == 6
    assert server.process_id("second") == 7
    server.set(worker_num=2)  # ids follow the settings in force (CLI overrides included)
    assert server.process_id("second") == 5


def test_add_process_refuses_what_could_not_be_found_again():
    server = WebSocketServer()
    server.add_process(consume)
    with pytest.raises(ValueError, match="registered already"):
        server.add_process(consume)
    with pytest.raises(TypeError, match="callable"):
        server.add_process("consume")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="non-empty name"):
        server.add_process(consume, name="")
    with pytest.raises(ValueError, match="registered: 'consume'"):
        server.process_id("missing")


def test_worker_ids_of_each_kind():
    assert process_index(6, 4, 2, 2) == 0
    assert process_index(7, 4, 2, 2) == 1
    assert process_index(5, 4, 2, 2) is None  # a task worker
    assert process_index(8, 4, 2, 2) is None
    assert describe_worker_ids(4, 0, 0) == "0, 1, 2, 3"
    assert describe_worker_ids(2, 1, 2) == (
        "0, 1 (event workers), 2 (task workers), 3, 4 (user processes)"
    )
