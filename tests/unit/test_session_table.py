"""The shared session table: one writer per region, lock-free readers in any process."""

from __future__ import annotations

import os

from swoolish.shared.table import (
    ESTABLISHED,
    MOVING,
    OPEN,
    RegionWriter,
    SessionTable,
    peer_from_word,
    peer_word,
)
from swoolish.worker.sessions import SessionMap


def make(regions: int = 4, max_connections: int = 8) -> SessionTable:
    return SessionTable(regions, max_connections)


def test_capacity_is_a_power_of_two_at_least_twice_max_connections():
    assert make(max_connections=8).capacity == 16
    assert make(max_connections=9).capacity == 32
    assert make(max_connections=10_000).capacity == 32768


def test_insert_lookup_state_and_delete():
    table = make()
    region = table.claim(slot=2)
    writer = RegionWriter(table, region)
    assert writer.insert(5, OPEN, peer_word(("127.0.0.1", 4242)))
    assert table.lookup(5) == (region, OPEN, peer_word(("127.0.0.1", 4242)))
    assert peer_from_word(table.lookup(5)[2]) == ("127.0.0.1", 4242)
    assert table.region_slot(region) == 2
    writer.set_state(5, ESTABLISHED)
    assert table.lookup(5)[1] == ESTABLISHED and table.established_count(region) == 1
    assert table.established() == [5]
    writer.delete(5)
    assert table.lookup(5) is None and table.established_count(region) == 0
    assert table.lookup(6) is None and table.lookup(0) is None


def test_tombstones_keep_probe_chains_and_are_reused():
    table = make(regions=1, max_connections=8)  # capacity 16
    writer = RegionWriter(table, table.claim(0))
    # Colliding ids: same home slot, so they form one probe chain.
    home = table.slot_of(1)
    colliding = [sid for sid in range(1, 100_000) if table.slot_of(sid) == home][:3]
    for sid in colliding:
        writer.insert(sid, ESTABLISHED)
    writer.delete(colliding[0])  # a tombstone at the head of the chain
    assert table.lookup(colliding[0]) is None
    assert all(table.lookup(sid) is not None for sid in colliding[1:])
    used = writer.used
    writer.insert(colliding[0], OPEN)  # takes the tombstone back, not a new slot
    assert writer.used == used and table.lookup(colliding[0])[1] == OPEN


def test_churn_rebuilds_into_the_other_half_and_never_loses_a_live_entry():
    table = make(regions=1, max_connections=8)
    writer = RegionWriter(table, table.claim(0))
    live: set[int] = set()
    halves = set()
    for sid in range(1, 2000):
        writer.insert(sid, OPEN)  # accepted, then established: an update in place
        writer.insert(sid, ESTABLISHED)
        live.add(sid)
        if len(live) > 5:
            gone = min(live)
            writer.delete(gone)
            live.discard(gone)
            assert table.lookup(gone) is None
        halves.add(writer.half)
    assert halves == {0, 1}  # rebuilt (and flipped) more than once
    assert sorted(table.established()) == sorted(live)
    assert all(table.lookup(sid)[1] == ESTABLISHED for sid in live)
    assert table.established_count(writer.region) == len(live)


def test_a_full_region_refuses_and_counts_and_lookups_still_end():
    table = make(regions=1, max_connections=4)  # capacity 8: at most 7 entries
    writer = RegionWriter(table, table.claim(0))
    assert all(writer.insert(sid, OPEN) for sid in range(1, 8))
    assert writer.insert(8, OPEN) is False and writer.overflow == 1
    assert table.lookup(8) is None and table.lookup(12345) is None
    assert writer.insert(3, ESTABLISHED)  # an update of a present id still works
    writer.delete(1)
    assert writer.insert(8, OPEN)


def test_regions_are_claimed_released_cleared_and_reused():
    table = make(regions=2)
    a, b = table.claim(0), table.claim(1)
    assert table.claim(0) is None  # all taken
    RegionWriter(table, a).insert(7, ESTABLISHED)
    assert table.lookup(7)[0] == a
    table.deactivate(a)
    assert table.lookup(7) is None  # readers ignore an inactive region
    table.release(a)
    again = table.claim(3)
    assert again == a and table.lookup(7) is None and table.established_count(a) == 0
    assert {r for r, _ in table.active_regions()} == {a, b}


def test_moving_entry_wins_over_the_new_owner():
    table = make()
    old, new = table.claim(0), table.claim(0)
    RegionWriter(table, new).insert(9, ESTABLISHED)
    writer = RegionWriter(table, old)
    writer.insert(9, ESTABLISHED)
    writer.set_state(9, MOVING)
    assert table.lookup(9)[:2] == (old, MOVING)
    table.deactivate(old)
    assert table.lookup(9)[:2] == (new, ESTABLISHED)


def test_another_process_sees_inserts_and_deletes():
    table = make()
    writer = RegionWriter(table, table.claim(0))
    writer.insert(11, ESTABLISHED)
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child writes in its own region, after the fork
        try:
            child = RegionWriter(table, 1)
            table.words[table.header(1)] = 1  # as the master would (test shortcut)
            child.insert(22, ESTABLISHED)
            os.write(w, b"1" if table.lookup(11) is not None else b"0")
            os.read(go_r, 1)
            child.delete(22)
            os.write(w, b"1" if table.lookup(11) is None else b"0")
        finally:
            os._exit(0)
    try:
        assert os.read(r, 1) == b"1"  # the child saw the parent's entry
        assert table.lookup(22)[1] == ESTABLISHED  # the parent sees the child's
        writer.delete(11)
        os.write(go_w, b"x")
        assert os.read(r, 1) == b"1"  # the child saw the delete
        assert table.lookup(22) is None
    finally:
        os.waitpid(pid, 0)
        for fd in (r, w, go_r, go_w):
            os.close(fd)


class FakeConn:
    def __init__(self) -> None:
        self.peer = ("10.0.0.1", 80)
        self.messages_in = self.messages_out = 0


def test_session_map_mirrors_every_change_of_a_session():
    table = make()
    region = table.claim(0)
    sessions = SessionMap(RegionWriter(table, region))
    conn = FakeConn()
    sessions.accepted(1, conn)
    assert table.lookup(1)[1] == OPEN
    upgraded = FakeConn()
    sessions.upgraded(1, upgraded)
    assert table.lookup(1)[1] == ESTABLISHED and sessions[1] is upgraded
    sessions.closing(1)
    assert 1 not in sessions and table.lookup(1) is None
    sessions.closing(1)  # a second close changes nothing
    moving = FakeConn()
    sessions.accepted(2, moving)
    sessions.upgraded(2, moving)
    sessions.moving(2)
    assert table.lookup(2)[1] == MOVING and sessions.moved == {2} and 2 not in sessions
    sessions.taken_back(2, moving)  # taken back after a failed hand-off
    assert table.lookup(2)[1] == ESTABLISHED and sessions.moved == set()


def test_an_adopted_session_waits_for_what_was_routed_to_it_before():
    table = make()
    sessions = SessionMap(RegionWriter(table, table.claim(0)))
    announced = []
    sessions.on_adopt = announced.append
    sessions.adopted(5, FakeConn())
    assert table.lookup(5)[1] == ESTABLISHED
    assert sessions.arriving == {5: []} and announced == [5]
    sessions.let_go([5])  # still ours: listed
    assert table.lookup(5) is not None
