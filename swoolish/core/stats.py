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
    "handler_errors",
    "handshake_timeouts",
    "bound_timers_cleared",
    "adopted",
    "handed_off",
    "timers_not_movable",
    "timers_not_resumed",
    "routed_out",
    "routed_to_closed",
    "push_too_large",
    "pipe_messages_in",
)

SUMMED = (*COUNTERS, "connections", "websocket_connections", "timers", "tasks")


def totals(workers: list[dict[str, Any]]) -> dict[str, Any]:
    totals: Counter[str] = Counter()
    for figures in workers:
        for name, value in figures.items():
            if isinstance(value, int) and not isinstance(value, bool) and name in SUMMED:
                totals[name] += value
    return dict(totals)
