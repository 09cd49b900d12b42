"""A worker's view of the other nodes of its cluster: who is alive and their sessions.

Pure: every method takes ``now`` (seconds, any monotonic clock) from its caller.

``exists(fd)`` must stay synchronous in cluster mode (docs/cluster.md, "exists"), so
each worker keeps a replica of the live WebSocket sessions of every other node, fed by
what those nodes publish on the control channel: batched ``opened``/``closed`` events,
a ``snapshot`` of each worker's sessions when asked, a heartbeat every second, and a
``leaving`` word on a clean stop. The replica is kept per *publisher* (one worker of one
node): during a reload a session is listed by the worker it left and the worker it
moved to, and the old worker's list goes with the old worker, so no event ordering
between the two is needed.

A session moving between two workers of its node (a reload's live hand-off) drops out
of the old worker's list (its snapshot no longer has it, or it leaves) before or after
it enters the new one's: the two lists come over two connections, in no set order.
So a session that leaves a list without a ``closed`` event stays *in transit* for
``transit`` seconds, and counts as live meanwhile, until a list has it again or it
closes; pushes sent to it then reach the node, whose owner applies them.

A node is down when none of its workers was heard for ``silence`` seconds, or at once
when it says the whole node leaves (a stop); its sessions then read as gone. A worker
that leaves alone (a reload or a recycle replaces it) never takes its node down, even
when its successor has not been heard yet (docs/cluster.md, "Reloads"): the node stays
up until the silence says otherwise.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

__all__ = ["NODE_SILENCE", "TRANSIT", "ClusterView", "PublisherView"]

NODE_SILENCE = 3.0  # seconds without a word from any worker of a node: it is down
TRANSIT = 3.0  # seconds a session that left a worker's list without closing counts as live


@dataclass(slots=True)
class PublisherView:
    """One worker of another node, as heard from."""

    last_heard: float
    worker_id: int = -1
    sessions: set[int] = field(default_factory=set)
    complete: bool = False  # its snapshot arrived: ``sessions`` is its whole list
    departed: bool = False  # it left alone, its node's last word: kept until the silence


class ClusterView:
    """Every other node's workers and their sessions, as last heard."""

    def __init__(self, silence: float = NODE_SILENCE, transit: float = TRANSIT) -> None:
        self.silence = silence
        self.transit = transit
        self.nodes: dict[int, dict[int, PublisherView]] = {}
        self.moving: dict[int, dict[int, float]] = {}  # node -> {fd: until} (see above)
        # nodes that said they leave, with their token: the same start is never back
        self.left: dict[int, int] = {}

    # -- what the bus says

    def heard(self, node: int, publisher: int, now: float) -> bool:
        """Any message from ``publisher`` of ``node``: it lives. Returns True for a
        publisher not known before (its sessions are unknown until its snapshot)."""
        workers = self.nodes.get(node)
        if workers is None:
            if node in self.left:
                return False  # a word in flight from a node that left: not back
            workers = self.nodes[node] = {}
        view = workers.get(publisher)
        if view is None:
            self._drop_departed(workers)
            workers[publisher] = PublisherView(now)
            return True
        view.last_heard = now
        return False

    def opened(self, node: int, publisher: int, fds: Iterable[int]) -> None:
        view = self._view(node, publisher)
        if view is not None:
            view.sessions.update(fds)
            moving = self.moving.get(node)
            if moving:
                for fd in view.sessions.intersection(moving):
                    del moving[fd]

    def closed(self, node: int, publisher: int, fds: Iterable[int]) -> None:
        view = self._view(node, publisher)
        if view is not None:
            fds = list(fds)
            view.sessions.difference_update(fds)
            moving = self.moving.get(node)
            if moving:
                for fd in fds:
                    moving.pop(fd, None)

    def snapshot(
        self, node: int, publisher: int, worker_id: int, fds: Iterable[int], now: float
    ) -> None:
        """The publisher's whole list now; its later events apply on top (one ordered
        connection carries both). Sessions it no longer lists may be moving."""
        view = self._view(node, publisher)
        if view is not None:
            listed = set(fds)
            self._in_transit(node, view.sessions - listed, now)
            view.worker_id = worker_id
            view.sessions = listed
            view.complete = True
            self.opened(node, publisher, ())

    def _in_transit(self, node: int, fds: set[int], now: float) -> None:
        if fds:
            until = now + self.transit
            moving = self.moving.setdefault(node, {})
            for fd in fds:
                moving[fd] = until

    def heartbeat(self, node: int, publisher: int, worker_id: int) -> None:
        view = self._view(node, publisher)
        if view is not None:
            view.worker_id = worker_id

    def leaving(
        self, node: int, publisher: int, node_leaving: bool, now: float, token: int = 0
    ) -> None:
        """A worker stops (a reload or a recycle replaces it: its sessions may be moving
        to its successor) or the whole node stops (``token`` names that start of it)."""
        workers = self.nodes.get(node)
        if workers is None:
            return
        if node_leaving:
            self._down(node)
            self.left[node] = token
            return
        view = workers.get(publisher)
        if view is None:
            return
        self._in_transit(node, view.sessions, now)
        if len(workers) > 1:
            del workers[publisher]
        else:
            # Its successor may not be heard yet (it could not reach Redis in time, say):
            # the node stays up, as after any last word, until ``silence`` says it is down.
            view.sessions = set()
            view.departed = True

    @staticmethod
    def _drop_departed(workers: dict[int, PublisherView]) -> None:
        """A worker of the node is heard: one that left alone no longer stands in for it."""
        for publisher in [p for p, v in workers.items() if v.departed]:
            del workers[publisher]

    def expire(self, now: float) -> list[int]:
        """Drop workers silent for ``silence`` seconds; returns the nodes now down."""
        down = []
        for moving in self.moving.values():
            for fd, until in list(moving.items()):
                if until <= now:
                    del moving[fd]
        for node, workers in list(self.nodes.items()):
            for publisher, view in list(workers.items()):
                if now - view.last_heard > self.silence:
                    del workers[publisher]
            if not workers:
                self._down(node)  # heard again: it is back
                down.append(node)
        return down

    def forget(self, fd: int, node: int) -> None:
        """A session this worker disconnected: gone here at once (its owner's
        ``closed`` event confirms it later)."""
        for view in self.nodes.get(node, {}).values():
            view.sessions.discard(fd)
        self.moving.get(node, {}).pop(fd, None)

    def clear(self) -> None:
        """The link to the bus is lost: nothing of the other nodes is known any more."""
        self.nodes.clear()
        self.moving.clear()

    def _down(self, node: int) -> None:
        self.nodes.pop(node, None)
        self.moving.pop(node, None)

    def met(self, node: int, token: int) -> bool:
        """A heartbeat of ``node`` names its start by ``token``: True when the node had
        left with another token, so this is a new node given the same number (a Redis
        that lost its data hands numbers out again, docs/cluster.md "Failures"), no
        longer to be ignored. The same token is a word in flight of the one that left."""
        left = self.left.get(node)
        if left is None or left == token or not token:
            return False
        del self.left[node]
        return True

    def _view(self, node: int, publisher: int) -> PublisherView | None:
        workers = self.nodes.get(node)
        return None if workers is None else workers.get(publisher)

    # -- what the app asks

    def is_up(self, node: int) -> bool:
        return node in self.nodes

    def exists(self, fd: int, node: int) -> bool:
        workers = self.nodes.get(node)
        if workers is None:
            return False
        for view in workers.values():
            if fd in view.sessions:
                return True
        moving = self.moving.get(node)
        return moving is not None and fd in moving

    def count(self) -> int:
        """About how many sessions the other nodes have (cheap: a session listed by two
        workers of its node during a move counts twice)."""
        return sum(
            len(self.moving.get(node, ())) + sum(len(v.sessions) for v in workers.values())
            for node, workers in self.nodes.items()
        )

    def _node_sessions(self, node: int, workers: dict[int, PublisherView]) -> set[int]:
        """Node ``node``'s sessions, each once: every worker's list and those in transit."""
        sessions: set[int] = set(self.moving.get(node, ()))
        for view in workers.values():
            sessions.update(view.sessions)
        return sessions

    def sessions(self) -> Iterator[int]:
        """Every session of every other node, each once."""
        for node, workers in self.nodes.items():
            yield from self._node_sessions(node, workers)

    def describe(self, now: float) -> dict[int, dict[str, object]]:
        """Per node: its workers heard, sessions, and how long ago it was last heard."""
        out: dict[int, dict[str, object]] = {}
        for node, workers in sorted(self.nodes.items()):
            last = max(view.last_heard for view in workers.values())
            out[node] = {
                "workers": sum(not view.departed for view in workers.values()),
                "sessions": len(self._node_sessions(node, workers)),
                "heard_ago": round(max(0.0, now - last), 3),
            }
        return out
