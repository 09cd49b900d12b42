"""A worker's counters (swoolish.core.stats.Counts): Counter's reading, dict's speed."""

from __future__ import annotations

from swoolish.core.stats import COUNTERS, SESSION_COUNTED, Counts


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
