"""How a worker takes new connections, and the accept balance between workers.

Every worker accepts from the one listening socket, and Linux wakes all of them for a
new connection: the first to run takes it. That is whichever the scheduler runs first,
not the one with the fewest clients: with 4 workers on 2 cores, 120 clients connecting
one after the other split 50 / 35 / 33 / 2 (docs/deployment.md, "How clients are spread
over the workers"). A WebSocket stays on the worker it landed on, so a skew at connect
time lasts as long as the connections: one worker does most of the pushing, the timers
and the broadcasts.

So, like nginx's ``accept_disabled``, a worker holding more than ``slack`` connections
above the average of the workers serving beside it closes its copy of the listening
handle; the kernel queues new connections for the others meanwhile. It opens it again
once they have caught up, and whenever a connection waits in the listen queue (Linux
reports a listener's queue length in ``TCP_INFO``; a paused worker looks every
``RECHECK_INTERVAL``): a busy or stuck neighbour delays a client by that much at most,
and in a reconnect storm, with the queue full, nobody pauses. The counts come from the
shared session table (swoolish.shared.table): each region says how many connections its
worker holds and whether it takes new ones. On a Unix socket the queue cannot be seen,
so there every worker simply accepts.

**At capacity.** A TLS connection is counted against ``max_connections`` from its
accept, while its handshake runs (swoolish.worker.tlshandshakes), but it cannot be
answered ``503`` before that handshake completes. So a worker whose sessions and TLS
handshakes reach ``max_connections`` stops accepting instead, and looks every
``RECHECK_INTERVAL`` until it has room: new connections wait in the kernel's queue
(for the other workers meanwhile), not in its memory. A plain TCP worker at
``max_connections`` stops accepting too, but only while another worker has room; when
none has, it accepts and answers ``503``. The balance never reopens a worker at
capacity.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import Awaitable, Callable

from ..core.stats import Counts
from ..shared.table import RegionWriter, SessionTable

__all__ = ["Listener", "over_share", "queued_connections"]

CHECK_DELAY = 0.005  # seconds after an accept before the counts are compared (once a burst)
RECHECK_INTERVAL = 0.02  # seconds between a paused worker's looks at the counts and queue
MIN_SLACK = 2  # connections above the average a worker may hold before it pauses
SLACK_SHARE = 1 / 16  # ... or this share of the average, when that is more
_TCP_INFO_QUEUE = struct.Struct("=I")  # tcpi_unacked, at byte 24: a listener's queue
_TCP_INFO_QUEUE_AT = 24

log = logging.getLogger("swoolish.worker")


def over_share(mine: int, workers: int, connections: int, *, paused: bool) -> bool:
    """Whether a worker holding ``mine`` of the ``connections`` of ``workers`` serving
    workers (itself included) holds too many to accept more. A paused worker waits
    until it is within half the slack, so that it does not flip at every connection."""
    if workers < 2:
        return False
    average = connections / workers
    slack = max(MIN_SLACK, average * SLACK_SHARE)
    return mine > average + (slack / 2 if paused else slack)


def queued_connections(sock: socket.socket) -> int | None:
    """Connections waiting in ``sock``'s accept queue; None where it cannot be seen
    (a Unix socket, a kernel without TCP_INFO)."""
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, _TCP_INFO_QUEUE_AT + 4)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_QUEUE_AT + 4:
        return None
    return int(_TCP_INFO_QUEUE.unpack_from(info, _TCP_INFO_QUEUE_AT)[0])


class Listener:
    """This worker's copy of the listening socket: accepting, paused by the balance,
    or closed for good once the worker drains.

    ``serve`` starts an asyncio server on the socket it is given. uvloop takes that
    socket over and closes it with the server, so every start gets a duplicate and
    ``sock`` itself stays open for the next one.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        serve: Callable[[socket.socket], Awaitable[asyncio.AbstractServer]],
        table: SessionTable | None,
        writer: RegionWriter | None,
        stats: Counts,
        at_capacity: Callable[[], bool] | None = None,
    ) -> None:
        self.loop = loop
        self.sock = sock
        self._serve = serve
        self._table = table
        self._writer = writer
        self.server: asyncio.AbstractServer | None = None
        self.closed = False
        self._stats = stats  # the worker's counters: accept_pauses, capacity_pauses
        self._at_capacity = at_capacity  # None: never
        self._check: asyncio.TimerHandle | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._failing = False  # starting to accept again failed (and was logged)
        # No balance without a region of the table, or with a queue nobody can see.
        self.balanced = (
            table is not None and writer is not None and queued_connections(sock) is not None
        )

    @property
    def accepting(self) -> bool:
        return self.server is not None

    async def open(self) -> None:
        """Start accepting (unless closed for good meanwhile)."""
        if self.closed or self.server is not None:
            return
        server = await self._serve(self.sock.dup())
        if self.closed:
            server.close()
            return
        self.server = server
        if self._writer is not None:
            self._writer.set_serving(True)

    def close(self) -> None:
        """Stop accepting for good: this worker drains. Connections queued from now on
        go to the other workers (the socket stays open in the master and in them)."""
        self.closed = True
        if self._writer is not None:
            self._writer.set_serving(False)
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self._stop_server()
        with contextlib.suppress(OSError):
            self.sock.close()

    def accepted(self) -> None:
        """A connection arrived (and counts): at capacity, stop accepting now; else
        compare the counts shortly (once for a burst)."""
        if self._at_capacity is not None and self._at_capacity():
            self.full()
        elif self._check is None and self.balanced and not self.closed:
            self._check = self.loop.call_later(CHECK_DELAY, self._rebalance)

    def others_have_room(self, limit: int) -> bool:
        """Whether the other workers taking new clients hold fewer than ``limit`` each,
        in all (the shared session table's counts). This worker's own count is left
        out: what fills it may not be in the table (a closed client whose handlers
        still work), and a worker alone has no other to leave its clients to."""
        if self._table is None or self._writer is None:
            return False
        workers, connections = self._table.serving_load()
        if self._writer.serving:  # counted in serving_load: take ourselves out
            workers, connections = workers - 1, connections - self._writer.live
        return workers > 0 and connections < workers * limit

    def full(self) -> None:
        """The worker may be at capacity: stop accepting (just after the accept under
        way: uvloop does not let a server close in its own accept callback) and look
        again every RECHECK_INTERVAL until it has room."""
        if self._check is not None:
            self._check.cancel()
        self._check = self.loop.call_later(0, self._rebalance)

    def _rebalance(self) -> None:
        self._check = None
        if self.closed:
            return
        if self._at_capacity is not None and self._at_capacity():
            if self.server is not None:
                self._stats["capacity_pauses"] += 1
                self._stop_server()
            self._check = self.loop.call_later(RECHECK_INTERVAL, self._rebalance)
            return
        if not self.balanced:
            if self.server is None:
                self._resume()  # it was paused at capacity only
            return
        assert self._table is not None and self._writer is not None
        workers, connections = self._table.serving_load()
        paused = self.server is None
        # the counts first: the queue (a system call) matters only to a worker over them
        over = over_share(self._writer.live, workers, connections, paused=paused)
        waiting = over and queued_connections(self.sock) != 0
        if not paused:
            if over and not waiting:
                self._stats["accept_pauses"] += 1
                self._stop_server()
                self._check = self.loop.call_later(RECHECK_INTERVAL, self._rebalance)
        elif not over or waiting:
            self._resume()
        else:
            self._check = self.loop.call_later(RECHECK_INTERVAL, self._rebalance)

    def _resume(self) -> None:
        if self._reopening is None:
            self._reopening = self.loop.create_task(self._reopen())

    async def _reopen(self) -> None:
        try:
            await self.open()
        except OSError as exc:  # out of file descriptors, say: try again shortly
            if not self._failing:  # one line per outage, not one per retry
                log.warning("could not start accepting again (%s); retrying", exc)
            self._failing = True
            if not self.closed:
                self._check = self.loop.call_later(RECHECK_INTERVAL, self._rebalance)
        else:
            if self._failing:
                log.warning("accepting again")
            self._failing = False
        finally:
            self._reopening = None

    def _stop_server(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
