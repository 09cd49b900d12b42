"""The counters every worker keeps, and how the figures of several workers add up."""

from __future__ import annotations

from collections import Counter
from typing import Any

__all__ = ["COUNTERS", "SUMMED", "totals"]

# Every counter a worker keeps; stats() reports each one, zero included.
COUNTERS = (
    "accepted",
    "closed",
    "refused",
    "requests",
    "websocket_opened",
    "messages_in",
    "messages_out",
    "push_to_closed",
    "push_over_buffer",
    "closed_over_buffer",  # more than buffer_output_size waited unsent (1008 / reset)
    "closed_idle",  # silent past heartbeat_idle_time (1001), or an HTTP client stuck
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
    # cluster mode (docs/cluster.md)
    "cluster_out",  # messages this worker published on the bus
    "cluster_in",  # messages of other nodes read from the bus
    "cluster_push_refused",  # pushes to other nodes refused: link down, node or session gone
    "cluster_to_closed",  # pushes from other nodes to a session no longer here
    "cluster_link_losses",
    "cluster_bad_messages",
    "cluster_handoff_gaps",  # a moved session may have missed bus messages (logged)
    "cluster_settle_timeouts",
)

SUMMED = (*COUNTERS, "connections", "websocket_connections", "timers", "tasks")


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    for figures in workers:
        for name, value in figures.items():
            if isinstance(value, int) and not isinstance(value, bool) and name in SUMMED:
                totals[name] += value
    return dict(totals)
