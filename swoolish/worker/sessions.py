"""A worker's own sessions, mirrored into its region of the shared session table.

Reads are plain dict reads (``sessions.get(sid)``), so the local push path never
touches shared memory; every change goes through one method named for what happened to
the session, which keeps the region other workers read in step (docs/design.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from ..core.messages import Disconnect, Push
from ..shared.table import ESTABLISHED, MOVING, OPEN, RegionWriter, peer_word

__all__ = ["SessionMap"]


class _Peer(Protocol):
    peer: tuple[str, int]
    messages_in: int  # WebSocket messages of the session, both ways (0 for HTTP)
    messages_out: int


class SessionObserver(Protocol):
    """Hears of WebSocket sessions that begin and end here (cluster mode tells the
    other nodes, swoolish.worker.cluster)."""

    def opened(self, sid: int) -> None: ...

    def closed(self, sid: int) -> None: ...

    def adopted(self, sid: int) -> None: ...


class SessionMap(dict[int, Any]):
    """sid -> connection object of the sessions this worker owns (open, not closing)."""

    __slots__ = ("arriving", "gone_in", "gone_out", "moved", "observer", "on_adopt", "writer")

    def __init__(self, writer: RegionWriter | None = None) -> None:
        super().__init__()
        self.writer = writer
        self.moved: set[int] = set()  # sids handed to our successor (live hand-off)
        # sids adopted from our predecessor whose routed operations are still on their
        # way (through the master) -> this worker's own operations on them, held behind
        # those
        self.arriving: dict[int, list[Push | Disconnect]] = {}
        self.on_adopt: Callable[[int], None] | None = None
        self.observer: SessionObserver | None = None
        # The worker's messages in and out are its sessions' own counts (a worker-wide
        # counter, two dict increments per echo, cost about 15% of an echo's Python
        # instructions), summed in messages(): those of sessions gone are added up as
        # they leave.
        self.gone_in = self.gone_out = 0

    def messages(self) -> tuple[int, int]:
        """WebSocket messages this worker received and sent, over all its sessions."""
        received, sent = self.gone_in, self.gone_out
        for conn in self.values():
            received += conn.messages_in
            sent += conn.messages_out
        return received, sent

    def _left(self, conn: _Peer) -> None:
        """``conn`` is no longer here: what it counted so far stays this worker's."""
        self.gone_in += conn.messages_in
        self.gone_out += conn.messages_out

    def _came(self, conn: _Peer) -> None:
        """``conn`` arrives counted (by another worker, or by us before it left): from
        here on only what it counts next is this worker's."""
        self.gone_in -= conn.messages_in
        self.gone_out -= conn.messages_out

    def accepted(self, sid: int, conn: _Peer) -> None:
        """A new client connection; a session from now on (``exists()`` is true)."""
        dict.__setitem__(self, sid, conn)
        if self.writer is not None:
            self.writer.insert(sid, OPEN, peer_word(conn.peer))

    def upgraded(self, sid: int, conn: _Peer) -> None:
        """The session's WebSocket handshake is done; ``conn`` serves it from now on.
        Its peer is written again: behind a trusted proxy it is the client the
        handshake named (worker/http.py)."""
        if sid in self:
            dict.__setitem__(self, sid, conn)
            if self.writer is not None and sid in self.writer.slots:  # not if it overflowed
                self.writer.insert(sid, ESTABLISHED, peer_word(conn.peer))
            if self.observer is not None:
                self.observer.opened(sid)

    def adopted(self, sid: int, conn: _Peer) -> None:
        """A session handed over by our predecessor: operations routed to it through
        the old worker come first (held in ``arriving`` until then)."""
        dict.__setitem__(self, sid, conn)
        self._came(conn)
        if self.observer is not None:
            self.observer.adopted(sid)
        if self.writer is not None:
            self.writer.insert(sid, ESTABLISHED, peer_word(conn.peer))
            self.arriving[sid] = []
            if self.on_adopt is not None:
                self.on_adopt(sid)

    def taken_back(self, sid: int, conn: _Peer) -> None:
        """A session whose hand-off failed is ours again (until it closes with 1012)."""
        dict.__setitem__(self, sid, conn)
        self._came(conn)
        self.moved.discard(sid)
        if self.writer is not None:
            self.writer.insert(sid, ESTABLISHED, peer_word(conn.peer))

    def closing(self, sid: int) -> None:
        """The session ends (either side began a close): gone for every worker."""
        conn = dict.pop(self, sid, None)
        if conn is None:
            return
        self._left(conn)
        if self.writer is not None:
            self.writer.delete(sid)
        if self.observer is not None and conn.established:
            self.observer.closed(sid)

    def moving(self, sid: int) -> None:
        """The session left for our successor: other workers' operations on it still
        come to us (MOVING) until we let go of it."""
        conn = dict.pop(self, sid, None)
        if conn is not None:
            self._left(conn)
            self.moved.add(sid)
            if self.writer is not None:
                self.writer.set_state(sid, MOVING)

    def let_go(self, sids: list[int]) -> None:
        """Sessions our successor owns now: no longer ours to keep operations for."""
        for sid in sids:
            self.moved.discard(sid)
            if self.writer is not None and sid not in self:
                self.writer.delete(sid)
