"""Cluster mode in a worker: sessions of other nodes, reached over the Redis bus.

Each worker of each node holds its own link (swoolish.worker.buslink) and subscribes
to three channels: broadcasts, its node's own channel, and the control channel
(swoolish.core.bus). Local traffic never touches Redis; a session of another node is
recognised by its id alone (``fd >> NODE_SHIFT`` is its node) and reached by one
message on that node's channel, which every worker of that node reads and the owner
applies. Everything is synchronous for the app, as in Swoole (docs/cluster.md):

* ``push`` to another node's session: ``True`` once handed to the bus, ``False`` at
  once when the link is down, the node is not live, or the replica says the session
  is gone.
* ``exists`` reads the replica (swoolish.core.replica), kept by the nodes' batched
  opened/closed events and snapshots; ``exists_remote`` asks the owner node.
* A received message is applied inline, in order, with no task per message.

**Reloads.** A session moving to the next worker of its node is read about by two
subscribers, each at its own pace. The old worker stops applying messages to it at
the moment it detaches it and hands its successor its *marks* (how far it had read each
publisher, swoolish.core.bus.Marks); the successor applies exactly the later messages:
those it read already (kept in ``recent``, bounded) and those still to come. Before a
batch leaves, the old worker also waits until Redis answered its publishes, so what
its clients sent before the move is published before what they send after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pickle
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..core import bus
from ..core.bus import Channels, Header, Marks
from ..core.frames import NORMAL_CLOSURE, check_close, encode_frame
from ..core.replica import ClusterView
from ..shared.ids import NODE_SHIFT
from ..shared.table import ESTABLISHED
from .buslink import BusLink
from .host import WorkerHost
from .subscriber import IN_ORDER, SKIP, URGENT
from .websocket import fan_out

__all__ = ["Cluster", "node_of"]

log = logging.getLogger("swoolish.cluster")

HEARTBEAT_INTERVAL = 1.0  # seconds between a worker's heartbeats (and node-key refreshes)
NODE_KEY_TTL_MS = 3000  # a node's claim expires this long after its last refresh
RECENT_MESSAGES = 8192  # messages kept for a session that moves here (see module doc)
RECENT_BYTES = 8 * 1024 * 1024
SETTLE_TIMEOUT = 1.0  # seconds a hand-off waits for Redis to answer our publishes
BOOT_LINK_TIMEOUT = 2.0  # seconds a booting worker waits for its link before serving
MAX_BUS_PAYLOAD = 1024 * 1024  # a bigger cross-node message is refused (one Redis message)
MAX_UNREAD = 8 * 1024 * 1024  # our broadcasts not yet read back: past it, refused
TWIN_HOLD = 3.0  # seconds another start of our number counts as alive after its heartbeat

# Redis script: the node counter never falls below a live node's number (a Redis that
# lost its data must not hand that number out again, docs/cluster.md "Node numbers").
REPAIR_EPOCH = (
    "if tonumber(redis.call('GET', KEYS[1]) or '0') < tonumber(ARGV[1]) then "
    "redis.call('SET', KEYS[1], ARGV[1]) end return 1"
)


def node_of(fd: int) -> int:
    """The node whose session ``fd`` is (0 for a server without cluster mode)."""
    return fd >> NODE_SHIFT


class Cluster:
    """This worker's side of the cluster: sending, receiving, the replica."""

    def __init__(self, worker: WorkerHost, url: str, name: str, node: int, token: int = 0) -> None:
        self.worker = worker
        self.node = node
        self.token = token  # this start of our node (swoolish.master.cluster)
        self.names = Channels(name)
        self.pid = os.getpid()
        self.seq = 0
        self.own_channel = self.names.node(node)
        self.view = ClusterView()
        self.marks = Marks()  # how far our subscriber has read each publisher
        self.recent: deque[tuple[Header, bytes]] = deque()
        self._unread: deque[tuple[int, int]] = deque()  # our broadcasts: (seq, bytes)
        self._unread_bytes = 0
        self._read_back = 0  # our last message the subscriber read (written by its thread)
        self._recent_bytes = 0
        self.dropped_from_recent = Marks()  # per publisher: the last seq dropped
        self.filters: dict[int, Marks] = {}  # adopted sid -> marks to skip up to
        self.incoming: dict[int, dict[tuple[int, int], int]] = {}  # moving here: marks
        self.questions: dict[int, tuple[int, asyncio.Future[bool]]] = {}
        self._questions = 0
        self._opened: list[int] = []
        self._closed: list[int] = []
        self._events_scheduled = False
        self._snapshot_wanted = False
        self._heartbeat: asyncio.TimerHandle | None = None
        # Another start of a node holding our number (see _twin_heartbeat): until when
        # (time.monotonic()) and its token, written by the subscriber's thread.
        self._twin_until = 0.0
        self._twin_token = 0
        self._twin_dropped = 0  # messages to our number dropped meanwhile (that thread)
        self._twin_counted = 0  # ... of which the stats have been told
        self._twin_told_until = 0.0  # the loop's: the episode already logged
        stats = worker.stats
        self.stats = stats
        loop = worker.loop
        self.loop = loop
        self.link = BusLink(
            url,
            [self.names.all, self.own_channel, self.names.ctl],
            self,
            self._on_link_state,
            loop,
            on_refusal=self._on_refusal,
        )
        self._appliers: dict[int, Callable[[Header, bytes], None]] = {
            bus.PUSH: self._on_push,
            bus.MULTI_PUSH: self._on_multi_push,
            bus.BROADCAST: self._on_broadcast,
            bus.DISCONNECT: self._on_disconnect,
            bus.OPENED: self._on_opened,
            bus.CLOSED: self._on_closed,
            bus.HEARTBEAT: self._on_heartbeat,
            bus.LEAVING: self._on_leaving,
            bus.SNAPSHOT_REQUEST: self._on_snapshot_request,
            bus.SNAPSHOT: self._on_snapshot,
            bus.EXISTS_QUESTION: self._on_question,
            bus.EXISTS_ANSWER: self._on_answer,
            bus.PIPE: self._on_pipe,
        }

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Connect (waiting a little, so a reload's new worker reads the bus before
        sessions move to it) and start the heartbeat; a Redis that is down does not
        stop the worker from serving its own clients."""
        self.link.start()
        if not await self.link.wait_up(BOOT_LINK_TIMEOUT):
            log.warning(
                "worker %d: cluster bus not reachable yet (%s); serving local clients, "
                "reconnecting",
                self.worker.worker_id,
                self.link.reason,
            )
        self._heartbeat = self.loop.call_later(HEARTBEAT_INTERVAL, self._beat)

    async def leave(self, node_leaving: bool) -> None:
        """Say we go (the whole node on a stop, only this worker on a reload), make sure
        Redis has it, then close the link."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        self._flush_events()
        self._send(self.names.ctl, bus.LEAVING, bus.leaving_body(node_leaving, self.token))
        if node_leaving:
            self.link.command("DEL", self.names.node_key(self.node))
        await self.link.settled(SETTLE_TIMEOUT)
        await self.link.close()
        self._fail_questions(None)

    async def settle(self) -> None:
        """Before sessions move: Redis answered what we published (see module doc)."""
        self._flush_events()
        if not await self.link.settled(SETTLE_TIMEOUT):
            self.stats["cluster_settle_timeouts"] += 1

    def _on_link_state(self, up: bool, reason: str) -> None:
        if up:
            log.info("worker %d: cluster bus connected (node %d)", self.worker.worker_id, self.node)
            # ``marks`` stay: how far we read each publisher is still true (a session
            # moving from here must not be sent what we applied before the outage).
            self.view.clear()
            # Our own claim and the node counter first, then our sessions for every
            # node, and theirs for us (a snapshot request answered by every worker).
            self._claim_key()
            self._repair_epoch()
            self._send_snapshot()
            self._send(self.names.ctl, bus.SNAPSHOT_REQUEST)
            self._send_heartbeat()  # now: a node holding our number hears of us at once
        else:
            self.stats["cluster_link_losses"] += 1
            log.warning(
                "worker %d: cluster bus down (%s); pushes to other nodes return False, "
                "broadcasts reach this node only, until it is back",
                self.worker.worker_id,
                reason,
            )
            self.view.clear()
            self._fail_questions(None)
            self._unread.clear()  # lost with the link: they will not come back
            self._unread_bytes = 0

    def _on_refusal(self, command: str, error: str) -> None:
        """One line when Redis starts refusing a command of ours, one when it takes it
        again (swoolish.worker.buslink); the link stays up meanwhile."""
        worker_id = self.worker.worker_id
        if not error:
            log.info("worker %d: Redis takes %s from the cluster bus again", worker_id, command)
            return
        log.warning(
            "worker %d: Redis refuses %s from the cluster bus (%s); %s, until it takes it again",
            worker_id,
            command,
            error,
            _REFUSED.get(command, "counted in refused_commands"),
        )

    def _beat(self) -> None:
        # What the subscriber read first: after a blocked loop, this timer may run
        # before the heartbeats read meanwhile are applied (docs/cluster.md, "Liveness").
        self.link.catch_up()
        now = self.loop.time()
        if self.link.up:
            self._send_heartbeat()
            self._refresh_claim()
        self._count_twin_drops()
        for node in self.view.expire(now):
            log.warning(
                "cluster: node %d silent for %gs, its sessions are gone", node, self.view.silence
            )
            self._fail_questions(node)
        self._prune_filters()
        if self._snapshot_wanted:
            self._snapshot_wanted = False
            self._send(self.names.ctl, bus.SNAPSHOT_REQUEST)
        self._heartbeat = self.loop.call_later(HEARTBEAT_INTERVAL, self._beat)

    def _send_heartbeat(self) -> None:
        body = bus.heartbeat_body(self.worker.worker_id, len(self.worker.connections), self.token)
        self._send(self.names.ctl, bus.HEARTBEAT, body)

    def _refresh_claim(self) -> None:
        """Keep our node key alive; while Redis refuses it, tried again each beat (the
        key expires meanwhile: liveness is judged by heartbeats, not by the key), and
        so is a refused repair of the node counter."""
        self._claim_key()
        if "EVAL" in self.link.refusing:
            self._repair_epoch()

    def _claim_key(self) -> None:
        info = bus.claim_value(self.token, os.getppid())
        self.link.command("SET", self.names.node_key(self.node), info, "PX", NODE_KEY_TTL_MS)

    def _repair_epoch(self) -> None:
        self.link.command("EVAL", REPAIR_EPOCH, 1, self.names.epoch_key, self.node)

    # ------------------------------------------------------------------ sending

    def _send(self, channel: bytes, kind: int, body: bytes = b"", now: bool = False) -> bool:
        self.seq += 1
        sent = self.link.publish(
            channel,
            bus.encode(kind, self.node, self.pid, self.seq, body),
            now,
            essential=channel == self.names.ctl,  # control: small, and never to be lost
        )
        if sent:
            self.stats["cluster_out"] += 1
        return sent

    def reachable(self, fd: int) -> bool:
        """Whether ``fd``, another node's session, is live as far as we know."""
        return self.link.up and self.view.exists(fd, fd >> NODE_SHIFT)

    def push(self, fd: int, payload: bytes, opcode: int) -> bool:
        if len(payload) > MAX_BUS_PAYLOAD:
            self.stats["push_too_large"] += 1
            return False
        if not self.reachable(fd):
            self.stats["cluster_push_refused"] += 1
            return False
        if self._send(
            self.names.node(fd >> NODE_SHIFT), bus.PUSH, bus.push_body(fd, opcode, payload)
        ):
            return True
        self.stats["cluster_push_refused"] += 1
        return False

    def push_many(self, fds: list[int], payload: bytes, opcode: int) -> int:
        """One message per node for ``broadcast(data, fds)``; returns how many went."""
        if len(payload) > MAX_BUS_PAYLOAD:
            self.stats["push_too_large"] += len(fds)
            return 0
        by_node: dict[int, list[int]] = {}
        for fd in fds:
            if self.reachable(fd):
                by_node.setdefault(fd >> NODE_SHIFT, []).append(fd)
            else:
                self.stats["cluster_push_refused"] += 1
        handed = 0
        for node, sids in by_node.items():
            if self._send(
                self.names.node(node), bus.MULTI_PUSH, bus.multi_push_body(sids, opcode, payload)
            ):
                handed += len(sids)
        return handed

    def broadcast(self, payload: bytes, opcode: int) -> int:
        """Publish a broadcast now (before the local fan-out); returns the sessions of
        other nodes it is handed to (as the replica counts them).

        Self-clocked: refused while MAX_UNREAD bytes of our broadcasts have not come
        back to our own subscriber. Every node reads every broadcast, so a publisher
        faster than the subscribers filled Redis's buffers for them until Redis closed
        them all, again and again (docs/cluster.md, "Failures")."""
        if len(payload) > MAX_BUS_PAYLOAD or not self.link.up:
            return 0
        body = bus.broadcast_body(opcode, payload)
        self._forget_read_back()
        if self._unread and self._unread_bytes + len(body) > MAX_UNREAD:
            self.stats["cluster_push_refused"] += 1
            return 0
        if not self._send(self.names.all, bus.BROADCAST, body, True):
            self.stats["cluster_push_refused"] += 1
            return 0
        self._unread.append((self.seq, len(body)))
        self._unread_bytes += len(body)
        return self.view.count()

    def _forget_read_back(self) -> None:
        """Our broadcasts up to the last of our messages the subscriber read are read."""
        unread, seq = self._unread, self._read_back
        while unread and unread[0][0] <= seq:
            self._unread_bytes -= unread.popleft()[1]

    def disconnect(self, fd: int, code: int, reason: str) -> bool:
        """``code`` bus.CLOSE_CODE: ``close()``. False if the session is not live."""
        if not self.reachable(fd):
            return False
        if code != bus.CLOSE_CODE:
            check_close(code, reason)
        if not self._send(
            self.names.node(fd >> NODE_SHIFT), bus.DISCONNECT, bus.disconnect_body(fd, code, reason)
        ):
            return False
        self.view.forget(fd, fd >> NODE_SHIFT)  # exists() is False here at once
        return True

    def send_pipe(self, node: int, worker_id: int, payload: bytes) -> bool:
        if not self.link.up or not self.view.is_up(node):
            return False
        return self._send(
            self.names.node(node),
            bus.PIPE,
            bus.pipe_body(worker_id, self.worker.worker_id, payload),
        )

    async def exists_remote(self, fd: int, timeout: float) -> bool:
        node = fd >> NODE_SHIFT
        if not self.link.up or not self.view.is_up(node):
            return False
        self._questions = (self._questions + 1) & 0xFFFFFFFF
        request = self._questions
        future: asyncio.Future[bool] = self.loop.create_future()
        self.questions[request] = (node, future)
        try:
            if not self._send(
                self.names.node(node), bus.EXISTS_QUESTION, bus.question_body(fd, request)
            ):
                return False
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            return False
        finally:
            self.questions.pop(request, None)

    def connections(self) -> list[int]:
        return list(self.view.sessions()) if self.link.up else []

    # -- our sessions, for the other nodes' replicas

    def opened(self, sid: int) -> None:
        self._opened.append(sid)
        self._schedule_events()

    def closed(self, sid: int) -> None:
        self._closed.append(sid)
        self._schedule_events()

    def _schedule_events(self) -> None:
        if not self._events_scheduled:
            self._events_scheduled = True
            self.loop.call_soon(self._flush_events)

    def _flush_events(self) -> None:
        """One opened and one closed event per loop iteration, not one per session."""
        self._events_scheduled = False
        if self._opened:
            opened, self._opened = self._opened, []
            self._send(self.names.ctl, bus.OPENED, bus.ids_body(opened))
        if self._closed:
            closed, self._closed = self._closed, []
            self._send(self.names.ctl, bus.CLOSED, bus.ids_body(closed))

    def _send_snapshot(self) -> None:
        self._flush_events()
        sids = [sid for sid, conn in self.worker.connections.items() if conn.established]
        self._send(self.names.ctl, bus.SNAPSHOT, bus.snapshot_body(self.worker.worker_id, sids))

    # ------------------------------------------------------------------ receiving

    # The subscriber's side (swoolish.worker.subscriber.BusReader). What is for sessions
    # (and pipe messages) is applied in order, bounded; what keeps the replica and the
    # node list (events, heartbeats, questions) first, so a worker busy applying a flood
    # still hears that the other nodes are alive.

    def classify(self, data: bytes) -> int:
        """In the subscriber's thread: reads nothing of the worker's but our own ids."""
        if len(data) < bus.HEADER_SIZE:
            return URGENT  # the loop counts it as bad
        node, publisher, seq = bus.read_origin(data)
        if node == self.node:
            if publisher == self.pid:
                self._read_back = seq
            elif data[0] == bus.HEARTBEAT and self._twin_heartbeat(data):
                return URGENT  # for the loop to log (_on_twin)
            elif data[0] == bus.SNAPSHOT_REQUEST:
                return URGENT  # a worker of our number links: answered with a heartbeat
            return SKIP  # our node's own: its sessions are reached through the master
        kind = data[0]
        if self._twin_until and kind in _ADDRESSED and self._twin_until > time.monotonic():
            self._twin_dropped += 1  # for our number, so maybe for the twin's sessions
            return SKIP
        if kind in _IN_ORDER:
            return IN_ORDER
        # Every worker of a node reads its channel, but one answers an exists_remote
        # question and one asked it: the others let them go here, not on their loop.
        if kind == bus.EXISTS_QUESTION:
            return URGENT if self.worker.worker_id == 0 else SKIP
        if kind == bus.EXISTS_ANSWER:
            return URGENT if self._asked(data) else SKIP
        return URGENT

    def _twin_heartbeat(self, data: bytes) -> bool:
        """In the subscriber's thread: a heartbeat of our number with another token is
        another node holding our number (a Redis that lost its data gave it out while
        we could not reach it, docs/cluster.md "Failures"). Session ids of the two
        collide, so what other nodes send to our number would reach the sessions of both:
        we apply none of it until that node is silent for TWIN_HOLD seconds."""
        try:
            _, _, token = bus.read_heartbeat(data)
        except bus.BusError:
            return False
        if not token or token == self.token:
            return False
        self._twin_token = token
        self._twin_until = time.monotonic() + TWIN_HOLD
        return True

    def _asked(self, data: bytes) -> bool:
        """Whether this worker asked the question ``data`` answers (a body cut short is
        for the loop to count as bad)."""
        try:
            asker, _, _ = bus.read_answer(data)
        except bus.BusError:
            return True
        return asker == self.pid

    def essential(self, data: bytes) -> bool:
        """A disconnect (small, and a session the app closed must close) and what keeps
        the replica and liveness; not ``exists_remote``'s questions and answers, which
        time out as False when dropped."""
        return data[0] not in _DROPPABLE

    def dropped(self, count: int) -> None:
        self.stats["cluster_dropped"] += count

    def apply(self, data: bytes) -> None:
        """One message of another node, on the loop."""
        try:
            header = bus.decode_header(data)
        except bus.BusError:
            self.stats["cluster_bad_messages"] += 1
            return
        if header.node == self.node:  # a twin's heartbeat, or a worker linking (classify)
            self._on_own_number(header.kind)
            return
        self.stats["cluster_in"] += 1
        if self.view.heard(header.node, header.publisher, self.loop.time()):
            if header.kind != bus.SNAPSHOT:  # a worker we do not know: ask for its list
                self._snapshot_wanted = True
        applier = self._appliers.get(header.kind)
        if applier is None:
            self.stats["cluster_bad_messages"] += 1
            return
        if header.kind in _FOR_SESSIONS:
            self.marks.seen(header)  # how far a moving session's messages were applied
            self._remember(header, data)
        try:
            applier(header, data)
        except (ValueError, IndexError) as exc:  # a body cut short: bus.BusError, a ValueError
            self.stats["cluster_bad_messages"] += 1
            log.debug("bad cluster message from node %d: %s", header.node, exc)

    def _remember(self, header: Header, data: bytes) -> None:
        """Keep recent messages for sessions that may yet move here (bounded)."""
        recent = self.recent
        recent.append((header, data))
        self._recent_bytes += len(data)
        while len(recent) > RECENT_MESSAGES or self._recent_bytes > RECENT_BYTES:
            old, old_data = recent.popleft()
            self._recent_bytes -= len(old_data)
            self.dropped_from_recent.seen(old)

    def _skips(self, sid: int, header: Header) -> bool:
        """A just-adopted session: its old worker applied this one already."""
        marks = self.filters.get(sid)
        return marks is not None and marks.covers(header)

    def _on_push(self, header: Header, data: bytes) -> None:
        fd, opcode, payload = bus.read_push(data)
        conn = self.worker.connections.get(fd)
        if conn is None:
            # every worker of this node reads the push: the one that has it applies it
            if self.worker.router.lookup(fd) is None:
                self.stats["cluster_to_closed"] += 1
        elif not (self.filters and self._skips(fd, header)):
            conn.push(payload, opcode)

    def _on_multi_push(self, header: Header, data: bytes) -> None:
        fds, opcode, payload = bus.read_multi_push(data)
        connections = self.worker.connections
        for fd in fds:
            conn = connections.get(fd)
            if conn is not None and not (self.filters and self._skips(fd, header)):
                conn.push(payload, opcode)

    def _on_broadcast(self, header: Header, data: bytes) -> None:
        opcode, payload = bus.read_broadcast(data)
        filters = self.filters
        conns = [
            conn
            for sid, conn in self.worker.connections.items()
            if conn.established and not conn.closing and not (filters and self._skips(sid, header))
        ]
        # the frame encoded once, for every session that takes it as is
        fan_out(conns, encode_frame(opcode, payload), payload, opcode, self.worker)

    def _on_disconnect(self, header: Header, data: bytes) -> None:
        fd, code, reason = bus.read_disconnect(data)
        conn = self.worker.connections.get(fd)
        if conn is None or (self.filters and self._skips(fd, header)):
            return
        with contextlib.suppress(ValueError):  # checked by the sender already
            if code != bus.CLOSE_CODE:
                conn.disconnect(code, reason)
            elif conn.established:
                conn.disconnect(NORMAL_CLOSURE, "")
            else:
                conn.abort()

    def _on_opened(self, header: Header, data: bytes) -> None:
        self.view.opened(header.node, header.publisher, bus.read_ids(data))

    def _on_closed(self, header: Header, data: bytes) -> None:
        self.view.closed(header.node, header.publisher, bus.read_ids(data))

    def _on_heartbeat(self, header: Header, data: bytes) -> None:
        worker_id, _, token = bus.read_heartbeat(data)
        if self.view.met(header.node, token):
            # its number was handed out again (a Redis that lost its data): a new node
            log.warning("cluster: node %d is heard again, as a new start of it", header.node)
            self.view.heard(header.node, header.publisher, self.loop.time())
            self._snapshot_wanted = True
        self.view.heartbeat(header.node, header.publisher, worker_id)

    def _on_leaving(self, header: Header, data: bytes) -> None:
        node_leaving, token = bus.read_leaving(data)
        was_up = self.view.is_up(header.node)
        self.view.leaving(header.node, header.publisher, node_leaving, self.loop.time(), token)
        if was_up and not self.view.is_up(header.node):
            log.info("cluster: node %d left", header.node)
            self._fail_questions(header.node)

    def _on_snapshot_request(self, header: Header, data: bytes) -> None:
        self._send_snapshot()

    def _on_snapshot(self, header: Header, data: bytes) -> None:
        worker_id, sids = bus.read_snapshot(data)
        self.view.snapshot(header.node, header.publisher, worker_id, sids, self.loop.time())

    def _on_question(self, header: Header, data: bytes) -> None:
        """One worker per node answers (slot 0): from the shared session table it sees
        every worker's sessions."""
        if self.worker.worker_id != 0:
            return
        fd, request = bus.read_question(data)
        alive = fd in self.worker.connections
        if not alive:
            found = self.worker.router.lookup(fd)  # type: ignore[attr-defined]
            alive = found is not None and found[1] >= ESTABLISHED
        self._send(
            self.names.node(header.node),
            bus.EXISTS_ANSWER,
            bus.answer_body(header.publisher, request, alive),
        )

    def _on_answer(self, header: Header, data: bytes) -> None:
        asker, request, alive = bus.read_answer(data)
        if asker != self.pid:
            return
        entry = self.questions.get(request)
        if entry is not None and not entry[1].done():
            entry[1].set_result(alive)

    def _on_pipe(self, header: Header, data: bytes) -> None:
        target, source, payload = bus.read_pipe(data)
        worker = self.worker
        if target != worker.worker_id or not worker.serves_slot():
            return  # around a reload: the old worker until paused, then the new one
        handler = worker.handler("pipe_message")
        if handler is None:
            return
        worker.stats["pipe_messages_in"] += 1
        try:
            result = handler(worker.server, source, pickle.loads(payload))
            if asyncio.iscoroutine(result):
                worker.track(result)
        except Exception:
            worker.stats["handler_errors"] += 1
            worker.log.exception("pipe_message handler raised")

    def _on_own_number(self, kind: int) -> None:
        """A worker of our number links (it asks for snapshots): our heartbeat now, so
        that if it is another node's, both hear of the clash one round trip after it
        links, not up to a heartbeat interval later (see _twin_heartbeat)."""
        if kind == bus.HEARTBEAT:
            self._on_twin()
        elif self.link.up:
            self._send_heartbeat()

    def _on_twin(self) -> None:
        """One error line per episode of another node holding our number."""
        now = time.monotonic()
        if now > self._twin_told_until:
            log.error(
                "cluster: node %d is also held by another node (token %016x, ours %016x): "
                "Redis lost its data and gave our number out again. Messages other nodes "
                "send to node %d are dropped here while it runs (its session ids are ours "
                "too); restart one of the two nodes",
                self.node,
                self._twin_token,
                self.token,
                self.node,
            )
        self._twin_told_until = now + TWIN_HOLD

    def count_refusals(self) -> None:
        """The link's count of commands Redis refused, as the worker counter
        cluster_refused_commands: a counter the master sums over the workers and keeps
        for those that exited (its metrics), where the link's own count only reached
        the worker's view in swoolish status. Called at each snapshot of the figures."""
        self.stats["cluster_refused_commands"] = self.link.refused

    def _count_twin_drops(self) -> None:
        dropped = self._twin_dropped
        if dropped != self._twin_counted:
            self.stats["cluster_twin_dropped"] += dropped - self._twin_counted
            self._twin_counted = dropped

    def _fail_questions(self, node: int | None) -> None:
        """Pending exists_remote() to ``node`` (None: every node) answer False now."""
        for asked, future in self.questions.values():
            if (node is None or asked == node) and not future.done():
                future.set_result(False)

    # ------------------------------------------------------------------ hand-off

    def marks_now(self) -> dict[tuple[int, int], int]:
        """How far we have read, at the moment sessions leave us (swoolish.worker.handoff)."""
        return dict(self.marks)

    def adopting(self, sid: int, marks: dict[tuple[int, int], int] | None) -> None:
        """A session is about to move here, with its old worker's marks."""
        if marks is not None:
            self.incoming[sid] = marks

    def adopted(self, sid: int) -> None:
        """A session moved here (called as it becomes ours, with no bus message applied
        in between): apply what its old worker had not read and we did, and from now on
        skip what it had read and we have not yet."""
        self.opened(sid)
        marks = self.incoming.pop(sid, None)
        if marks is None or not self.link.up:
            return
        theirs = Marks(marks)
        for key, seq in theirs.items():
            if self.dropped_from_recent.get(key, 0) > seq:
                self.stats["cluster_handoff_gaps"] += 1  # older than what we keep
        for header, data in list(self.recent):
            if not theirs.covers(header):
                self._apply_to(sid, header, data)
        if any(self.marks.get(key, 0) < seq for key, seq in theirs.items()):
            self.filters[sid] = theirs

    def _apply_to(self, sid: int, header: Header, data: bytes) -> None:
        """One remembered message, for one session only."""
        conn = self.worker.connections.get(sid)
        if conn is None:
            return
        kind = header.kind
        if kind == bus.BROADCAST:
            opcode, payload = bus.read_broadcast(data)
            if conn.established and not conn.closing:
                conn.push(payload, opcode)
        elif kind == bus.PUSH:
            fd, opcode, payload = bus.read_push(data)
            if fd == sid:
                conn.push(payload, opcode)
        elif kind == bus.MULTI_PUSH:
            fds, opcode, payload = bus.read_multi_push(data)
            if sid in fds:
                conn.push(payload, opcode)
        elif kind == bus.DISCONNECT:
            fd, _, _ = bus.read_disconnect(data)
            if fd == sid:
                self._on_disconnect(header, data)

    def _prune_filters(self) -> None:
        """A filter is done once our subscriber has read past every mark in it."""
        if self.filters:
            marks = self.marks
            for sid, theirs in list(self.filters.items()):
                if sid not in self.worker.connections or all(
                    marks.get(key, 0) >= seq for key, seq in theirs.items()
                ):
                    del self.filters[sid]

    # ------------------------------------------------------------------ status

    def describe(self) -> dict[str, Any]:
        link = self.link
        now = self.loop.time()
        return {
            "node": self.node,
            "link": "up" if link.up else "down",
            "since_seconds": round(now - link.changed_at, 1),
            "reason": link.reason,
            "reconnects": link.reconnects,
            "subscriber_restarts": link.subscriber_restarts,
            "pending_bytes": link.pending,
            "behind_bytes": link.behind,
            "unread_bytes": self._unread_bytes,
            "refused_commands": link.refused,
            "refusing": {name: episode.error for name, episode in link.refusing.items()},
            "nodes": {str(n): v for n, v in self.view.describe(now).items()},
        }


# What fails while Redis refuses a command of ours (docs/cluster.md, "Failures").
_REFUSED = {
    "SET": "this node's key is not refreshed and expires (liveness is judged by "
    "heartbeats, which still go out)",
    "EVAL": "the node counter is not repaired",
    "PUBLISH": "messages to other nodes are lost",
}

_FOR_SESSIONS = frozenset((bus.PUSH, bus.MULTI_PUSH, bus.BROADCAST, bus.DISCONNECT))
_IN_ORDER = _FOR_SESSIONS | {bus.PIPE}  # the rest is applied first (see classify)
# what other nodes send to a node's number (its channel): dropped while a twin holds ours
_ADDRESSED = (_IN_ORDER - {bus.BROADCAST}) | {bus.EXISTS_QUESTION, bus.EXISTS_ANSWER}
# what may be dropped when too much waits: all but a disconnect (see essential)
_DROPPABLE = (_IN_ORDER - {bus.DISCONNECT}) | {bus.EXISTS_QUESTION, bus.EXISTS_ANSWER}
