"""Connections in their TLS handshake, counted until it completes.

On a TLS listener uvloop runs the handshake before the connection's protocol hears of
it: ``connection_made`` comes once the handshake is complete, and a connection whose
handshake fails or times out never gets there. Meanwhile each costs the worker about
50 KiB (OpenSSL's objects and buffers, uvloop's TLS layer) for up to
``handshake_timeout``: a client that opened 3,000 TCP connections and sent nothing held
147 MiB of a worker, and nothing bounded how many it could open. So the protocol object
made at the accept is counted from then until its handshake completes, or until uvloop
lets go of it (a weak reference: the connection was dropped), and the worker stops
accepting while its sessions and these handshakes reach ``max_connections``
(swoolish.worker.listener, "at capacity"; docs/deployment.md, "TLS").
"""

from __future__ import annotations

import weakref
from typing import Any

__all__ = ["TlsHandshakes"]


class TlsHandshakes:
    """The connections of this worker whose TLS handshake is under way."""

    __slots__ = ("_forget", "_pending")

    def __init__(self) -> None:
        self._pending: set[weakref.ref[Any]] = set()
        self._forget = self._pending.discard  # a reference's callback: its referent went

    def begun(self, conn: Any) -> None:
        """``conn`` was made for a connection just accepted: its handshake begins."""
        self._pending.add(weakref.ref(conn, self._forget))

    def completed(self, conn: Any) -> None:
        """``conn``'s handshake is complete (or it never had one): not counted any more.
        A reference to a live object equals every other reference to it."""
        self._pending.discard(weakref.ref(conn))

    def __len__(self) -> int:
        return len(self._pending)
