"""A worker's counters (swoolish.core.stats.Counts): Counter's reading, dict's speed; and
the cluster figures `swoolish status` sums from them."""

from __future__ import annotations

from swoolish.cli.commands import render_cluster
from swoolish.core.stats import COUNTERS, SESSION_COUNTED, Counts, cluster_summary


def test_a_name_not_counted_yet_reads_zero_and_is_not_stored() -> None:
    counts = Counts()
    assert counts["messages_in"] == 0
    assert "messages_in" not in counts
    counts["messages_in"] += 1
    counts["messages_in"] += 1
    assert counts == {"messages_in": 2}


def test_zeroed_holds_every_counter_a_worker_keeps_at_zero() -> None:
    counts = Counts.zeroed()
    assert type(counts) is Counts
    kept = [name for name in COUNTERS if name not in SESSION_COUNTED]
    assert dict(counts) == dict.fromkeys(kept, 0)
    assert "messages_in" not in counts  # summed over sessions, never counted twice


def test_storing_a_count_is_dicts_own_slot() -> None:
    # A __setitem__ or __delitem__ written in Python (collections.Counter has the
    # latter) makes every `counts[name] += 1` call a Python-level slot, three times
    # the cost on the path of every message.
    assert Counts.__setitem__ is dict.__setitem__
    assert Counts.__delitem__ is dict.__delitem__
    assert Counts.__getitem__ is dict.__getitem__


def test_cluster_dropped_refused_and_to_closed_are_shown_apart() -> None:
    """swoolish status: pushes refused at the sender (80 to a node killed) and pushes
    that arrived for a closed session are not "dropped", which docs/cluster.md keeps for
    messages that arrived and were dropped. Before, all three were summed as dropped."""
    view = {"node": 4, "link": "up", "nodes": {}}
    figures = [
        {"cluster": view, "cluster_push_refused": 50, "cluster_to_closed": 2},
        {"cluster": view, "cluster_push_refused": 30, "cluster_dropped": 1},
    ]
    summary = cluster_summary(figures, "swoolish")
    assert summary is not None
    assert (summary["dropped"], summary["refused"], summary["to_closed"]) == (1, 80, 2)
    line = render_cluster(summary)[1]
    assert "dropped 1, refused 80, to closed 2;" in line
