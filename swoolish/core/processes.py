"""User processes (``server.add_process``): what the app registers, and their worker ids.

A user process is a long-running process of the app (a queue consumer, a scheduler)
that the master starts, restarts and replaces on reload (docs/lifecycle.md, "User
processes"). Its worker id comes after the event workers' and the task workers', as in
Swoole: event workers ``0 … worker_num - 1``, task workers next, user processes last.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

__all__ = ["ProcessSpec", "describe_worker_ids", "process_index"]


class ProcessSpec(NamedTuple):
    """One ``server.add_process(target, name)``: found again, by name, after the fork."""

    name: str
    target: Callable[..., Any]


def process_index(worker_id: int, worker_num: int, task_worker_num: int, count: int) -> int | None:
    """Which user process ``worker_id`` is (0, 1, …), or None for another kind of worker."""
    index = worker_id - worker_num - task_worker_num
    return index if 0 <= index < count else None


def describe_worker_ids(worker_num: int, task_worker_num: int, process_num: int) -> str:
    """The valid worker ids of ``send_message``, for its ValueError: ``0, 1, 2, 3`` with
    event workers only, else each kind's ids named."""
    kinds = (
        ("event workers", worker_num),
        ("task workers", task_worker_num),
        ("user processes", process_num),
    )
    parts = []
    first = 0
    for label, count in kinds:
        if count:
            ids = ", ".join(map(str, range(first, first + count)))
            parts.append((ids, label))
        first += count
    if len(parts) == 1 and parts[0][1] == "event workers":
        return parts[0][0]
    return ", ".join(f"{ids} ({label})" for ids, label in parts)
