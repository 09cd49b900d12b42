"""Whether a connection reads from its client, decided by named reasons.

Several things can make a connection stop reading: the client does not read what we
write, its coroutine handlers are behind, pipelined HTTP requests wait for answers, or
the session is about to move to another worker. Each pauses reading for its own reason
and resumes only that reason; the transport reads again only when no reason holds. So
one cause ending (the client catching up) can never resume reading that another cause
(a full handler queue) still needs paused, which is how unbounded input buffers happen.
"""

from __future__ import annotations

import enum
from typing import Protocol

__all__ = ["FlowControl", "Reason"]


class Reason(enum.IntEnum):
    """Why a connection does not read (bit values: several can hold at once)."""

    BACKPRESSURE = 1  # the client does not read what we write (pause_writing)
    HANDLERS = 2  # this connection's coroutine handlers are behind (its handler queue is full)
    PIPELINE = 4  # pipelined HTTP requests (or a handshake the app decides on) wait
    MOVING = 8  # the session is about to move to another worker (live hand-off)
    SHARE = 16  # the rest of a long read waits for the next loop iteration (fair share)


class ReadingTransport(Protocol):
    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class FlowControl:
    """The reasons that hold one transport's reading paused."""

    __slots__ = ("_held", "_transport")

    def __init__(self, transport: ReadingTransport) -> None:
        self._transport = transport
        self._held = 0

    def pause(self, reason: Reason) -> None:
        """Stop reading for ``reason`` (pausing twice for one reason is one pause)."""
        if not self._held:
            self._transport.pause_reading()
        self._held |= reason

    def resume(self, reason: Reason) -> None:
        """``reason`` no longer holds; read again if no other reason does."""
        if self._held & reason:
            self._held &= ~reason
            if not self._held:
                self._transport.resume_reading()

    def holds(self, reason: Reason) -> bool:
        return bool(self._held & reason)

    @property
    def reading(self) -> bool:
        """True when no reason holds reading paused."""
        return not self._held

    @property
    def reasons(self) -> list[Reason]:
        """The reasons holding reading paused now, for logs and tests."""
        return [reason for reason in Reason if self._held & reason]

    def __repr__(self) -> str:
        held = "|".join(reason.name for reason in self.reasons) or "reading"
        return f"<FlowControl {held}>"
