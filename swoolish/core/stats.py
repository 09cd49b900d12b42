"""The counters every worker keeps, and how the figures of several workers add up."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["COUNTERS", "SESSION_COUNTED", "SUMMED", "Counts", "cluster_summary", "totals"]

# Every counter a worker keeps; stats() reports each one, zero included.
COUNTERS = (
    "accepted",
    "accept_pauses",  # the accept balance stopped this worker accepting (worker/listener.py)
    "capacity_pauses",  # at max_connections (TLS: handshakes in): stopped accepting
    "closed",  # of those accepted: accepted - closed is what this worker holds open
    "refused",  # at max_connections: 503, neither accepted nor closed
    "requests",
    "websocket_opened",
    "messages_in",
    "messages_out",
    "push_to_closed",
    "push_over_buffer",
    "closed_over_buffer",  # more than buffer_output_size waited unsent (1008 / reset)
    "closed_idle",  # silent past heartbeat_idle_time (1001), or a client not taking output
    "origin_refused",  # a WebSocket handshake from an origin not in websocket_origins (403)
    "handler_errors",
    "handshake_timeouts",
    "bound_timers_cleared",
    "adopted",
    "handed_off",
    "timers_not_movable",
    "timers_not_resumed",
    "routed_out",
    "routed_to_closed",
    "routed_refused",  # too much waited for the master already (swoolish.worker.router)
    "push_too_large",
    "pipe_messages_in",
    "handoff_arrivals_overdue",
    "heap_trims",  # free heap memory given back to the system (worker/heaptrim.py)
    "heap_trimmed_bytes",  # ... and how much the resident size went down by it
    # cluster mode (docs/cluster.md)
    "cluster_out",  # messages this worker published on the bus
    "cluster_in",  # messages of other nodes applied (not those for another worker)
    "cluster_push_refused",  # pushes to other nodes refused: link down, node or session gone
    "cluster_to_closed",  # pushes from other nodes to a session no longer here
    "cluster_dropped",  # messages of other nodes dropped: too far behind applying them
    "cluster_link_losses",
    "cluster_refused_commands",  # commands Redis answered with an error (worker/buslink.py)
    "cluster_bad_messages",
    "cluster_handoff_gaps",  # a moved session may have missed bus messages (logged)
    "cluster_settle_timeouts",
    "cluster_twin_dropped",  # sent to our node number while another node held it too
)

#: Of COUNTERS, those each session counts for itself; a worker's figure is the sum over
#: its sessions (swoolish.worker.sessions.SessionMap.messages), never a counter of its own.
SESSION_COUNTED = ("messages_in", "messages_out")


class Counts(dict[str, int]):
    """A worker's counters: a name not counted yet reads 0, as in ``collections.Counter``.

    Not a ``Counter``: its ``__delitem__`` is written in Python, so every
    ``counts[name] += 1`` goes through a Python-level slot; 190 ns against 57 here. When
    an echo still counted two, that was about 10% of the instructions of its Python
    (docs/performance.md, "The compiled fast path").
    """

    __slots__ = ()

    def __missing__(self, name: str) -> int:
        return 0

    @classmethod
    def zeroed(cls) -> Counts:
        """Every counter a worker keeps itself at 0: ``stats()`` reports them all."""
        return cls((name, 0) for name in COUNTERS if name not in SESSION_COUNTED)


SUMMED = (*COUNTERS, "connections", "websocket_connections", "timers", "tasks")


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    for figures in workers:
        for name, value in figures.items():
            if isinstance(value, int) and not isinstance(value, bool) and name in SUMMED:
                totals[name] += value
    return dict(totals)


def cluster_summary(figures: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
    """The cluster as ``swoolish status`` shows it, from the serving event workers'
    figures (each has its own view, under ``cluster``); None without cluster mode.

    The link is up when every worker's is; the other nodes are the ones the workers
    know of, each with the most sessions any worker's replica lists for it."""
    views = [f["cluster"] for f in figures if isinstance(f.get("cluster"), dict)]
    if not views:
        return None
    nodes: dict[str, dict[str, Any]] = {}
    for view in views:
        for node, seen in view.get("nodes", {}).items():
            known = nodes.get(node)
            if known is None or seen["sessions"] > known["sessions"]:
                nodes[node] = dict(seen)
    down = [v for v in views if v.get("link") != "up"]
    return {
        "name": name,
        "node": views[0].get("node"),
        "link": "up" if not down else "down",
        "workers_linked": len(views) - len(down),
        "down_reason": down[0].get("reason", "") if down else "",
        "down_for_seconds": max((v.get("since_seconds", 0) for v in down), default=0),
        "nodes": dict(sorted(nodes.items(), key=lambda item: int(item[0]))),
        "messages_out": sum(f.get("cluster_out", 0) for f in figures),
        "messages_in": sum(f.get("cluster_in", 0) for f in figures),
        # Apart, as docs/cluster.md names them: refused pushes to a node that died are
        # no messages that arrived and were dropped.
        "dropped": sum(f.get("cluster_dropped", 0) for f in figures),
        "refused": sum(f.get("cluster_push_refused", 0) for f in figures),
        "to_closed": sum(f.get("cluster_to_closed", 0) for f in figures),
        "link_losses": sum(f.get("cluster_link_losses", 0) for f in figures),
        "subscriber_restarts": sum(v.get("subscriber_restarts", 0) for v in views),
        "refused_commands": sum(v.get("refused_commands", 0) for v in views),
        "refusing": sorted({name for v in views for name in v.get("refusing", {})}),
        "pending_bytes": sum(v.get("pending_bytes", 0) for v in views),
    }
