"""Event names, Swoole's spellings of them, and the handler registry.

Swoole spells events ``WorkerStart`` or ``workerStart``; Python code spells them
``worker_start``. All of these (and ``onWorkerStart``) name the same event. An unknown
name is a ``ValueError`` that lists the valid ones, raised at ``server.on(...)``, not
later when the event would fire.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "MASTER_EVENTS",
    "WORKER_EVENTS",
    "Handlers",
    "canonical_event_name",
]

# Events that fire inside a worker process, in lifecycle order.
WORKER_EVENTS: tuple[str, ...] = (
    "worker_start",
    "handshake",
    "open",
    "message",
    "request",
    "close",
    "pipe_message",
    "task",  # in a task worker: (server, task)
    "finish",  # in the event worker that sent the task: (server, task_id, result)
    "worker_stop",
    "worker_exit",
    "handoff",
    "resume",
)

# Events that fire in the master process (they take effect on a full restart).
MASTER_EVENTS: tuple[str, ...] = (
    "start",
    "shutdown",
    "before_reload",
    "after_reload",
    "worker_error",
)

ALL_EVENTS: tuple[str, ...] = WORKER_EVENTS + MASTER_EVENTS

# "workerstart" -> "worker_start": Swoole's CamelCase, camelCase and snake_case all
# collapse to the same key once underscores are dropped and case is folded.
_BY_FOLDED: dict[str, str] = {name.replace("_", ""): name for name in ALL_EVENTS}


def canonical_event_name(name: str) -> str:
    """Return the snake_case event for any accepted spelling, or raise ``ValueError``."""
    if not isinstance(name, str):
        raise TypeError(f"an event name must be a string, got {name!r}")
    folded = name.replace("_", "").lower()
    if folded not in _BY_FOLDED and folded.startswith("on"):
        folded = folded[2:]
    try:
        return _BY_FOLDED[folded]
    except KeyError:
        valid = ", ".join(ALL_EVENTS)
        raise ValueError(
            f"unknown event {name!r}; valid events are: {valid} "
            "(Swoole spellings such as 'WorkerStart' or 'workerExit' are accepted too)"
        ) from None


class Handlers:
    """The handlers registered on one server, one per event (a later one replaces it)."""

    __slots__ = ("_handlers",)

    def __init__(self) -> None:
        self._handlers: dict[str, Callable[..., Any]] = {}

    def set(self, event: str, handler: Callable[..., Any]) -> None:
        name = canonical_event_name(event)
        if not callable(handler):
            raise TypeError(f"the handler for {name!r} must be callable, got {handler!r}")
        self._handlers[name] = handler

    def get(self, event: str) -> Callable[..., Any] | None:
        return self._handlers.get(event)

    def lookup(self) -> Callable[[str], Callable[..., Any] | None]:
        """``get`` as one C call: the registry's own ``dict.get``, which sees handlers
        set later too. Connections look a handler up per message and per request."""
        return self._handlers.get

    def __contains__(self, event: str) -> bool:
        return event in self._handlers
