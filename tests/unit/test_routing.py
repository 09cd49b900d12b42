"""Routing around a live hand-off: the new owner of a just-adopted session holds its own
operations, in order; the master releases moved sessions batch by batch, in order."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from types import SimpleNamespace

import pytest

from swoolish.core.messages import (
    Arrived,
    Broadcast,
    Push,
    PushMany,
    Release,
    ReleaseDone,
    ToAll,
    ToRegion,
)
from swoolish.core.switchboard import PARK_TIMEOUT, Switchboard
from swoolish.worker.router import ARRIVAL_SHARE, Router
from swoolish.worker.sessions import SessionMap

SETTINGS = SimpleNamespace(  # what a broadcast's fan-out reads
    buffer_output_size=1 << 20, websocket_compression_threshold=512
)


class FakeConnection:
    def __init__(self):
        self.calls = []
        self.closing = False
        self.established = True
        self.transport = None  # nothing written yet: a held push counts what waits held

    def push(self, data, opcode):
        """Recorded as the message it carries (a broadcast hands over UTF-8 text)."""
        if isinstance(data, bytes) and opcode == 1:
            data = data.decode()
        self.calls.append(("push", data))
        return not self.closing

    def disconnect(self, code, reason):
        self.calls.append(("disconnect", code, reason))
        self.closing = True
        return True


@pytest.fixture
def router_and_conn():
    connections = SessionMap()
    conn = FakeConnection()
    dict.__setitem__(connections, 7, conn)
    connections.arriving[7] = []
    worker = SimpleNamespace(connections=connections, stats=Counter(), settings=SETTINGS)
    return Router(worker, None, None), conn


def test_own_pushes_and_a_disconnect_wait_for_arrival_then_keep_their_order(router_and_conn):
    router, conn = router_and_conn
    assert router.hold(conn, 7, "a", None)
    assert router.hold_disconnect(conn, 7, 4000, "bye")
    assert conn.calls == []  # nothing before what was routed to the session earlier
    router.arrived(7)
    assert conn.calls == [("push", "a"), ("disconnect", 4000, "bye")]


def test_a_held_disconnect_with_a_bad_code_raises_at_the_call(router_and_conn):
    router, conn = router_and_conn
    with pytest.raises(ValueError, match="cannot close with code 1005"):
        router.hold_disconnect(conn, 7, 1005, "")
    router.arrived(7)
    assert conn.calls == []


def test_operations_for_a_session_gone_before_arrival_are_counted_not_applied(router_and_conn):
    router, conn = router_and_conn
    router.hold(conn, 7, "a", None)
    router.hold_disconnect(conn, 7, 1000, "")
    dict.pop(router.worker.connections, 7)
    router.arrived(7)
    assert conn.calls == []
    assert router.worker.stats["push_to_closed"] == 1


def test_pushes_held_for_an_arriving_session_are_bounded_by_its_output_budget(router_and_conn):
    """An app pushing to a session still arriving (up to PARK_TIMEOUT) grew the held list
    without a bound: now, as push does, past buffer_output_size (1 MiB here) a push is
    refused and counted, and what was held goes out at the arrival."""
    router, conn = router_and_conn
    quarter = "x" * (256 * 1024)
    assert [router.hold(conn, 7, quarter, None) for _ in range(6)] == [True] * 4 + [False] * 2
    assert router.worker.stats["push_over_buffer"] == 2
    router.arrived(7)
    assert conn.calls == [("push", quarter)] * 4
    router.worker.connections.arriving[7] = []  # arriving again (another hand-off)
    assert router.hold(conn, 7, quarter, None)  # the budget starts afresh


# ---------------------------------------------------------------- the master's side

OLD, NEW, OTHER = 101, 202, 303  # worker pids
OLD_REGION, NEW_REGION, OTHER_REGION = 0, 1, 2


class FakeTable:
    """sid -> region, as the shared session table would answer a lookup."""

    def __init__(self):
        self.where = {}

    def region_of(self, sid):
        return self.where.get(sid)


@pytest.fixture
def board():
    table = FakeTable()
    switchboard = Switchboard(table.region_of)
    switchboard.region_pid.update({OLD_REGION: OLD, NEW_REGION: NEW, OTHER_REGION: OTHER})
    return switchboard, table


def push(sid, text):
    return Push(sid, text, None)


def test_a_release_waits_for_the_new_owner_to_announce_every_session(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7, 8], [push(7, "kept")], now=0.0)
    table.where.update({7: NEW_REGION, 8: NEW_REGION})  # listed, not yet announced
    assert switchboard.ready_releases(0.1) == []
    switchboard.note_adopted([7], 0.1)
    assert switchboard.ready_releases(0.1) == []
    switchboard.note_adopted([8], 0.2)
    assert switchboard.ready_releases(0.2) == [(OLD, 1)]
    assert switchboard.announced == {}  # consumed


def test_an_unannounced_release_is_granted_after_the_park_timeout(board):
    switchboard, _ = board
    switchboard.request_release((OLD, 1), [7], [], now=0.0)
    assert switchboard.ready_releases(PARK_TIMEOUT - 0.01) == []
    assert switchboard.ready_releases(PARK_TIMEOUT) == [(OLD, 1)]


def test_kept_then_late_then_parked_then_the_arrival_marker(board):
    """Per session, the order every sender made its operations in."""
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [push(7, "kept")], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.note_adopted([7], 0.0)
    switchboard.ready_releases(0.0)
    # granted: a route naming the old region (a lookup made before) is parked
    assert (
        switchboard.route(ToRegion(OLD_REGION), [push(7, "parked")], lambda s: 0, time.monotonic())
        == []
    )
    assert switchboard.deliver_parked(0.1) == []  # nothing before release_done
    switchboard.finish_release((OLD, 1), [push(7, "late")], now=0.1)
    assert switchboard.deliver_parked(0.1) == [
        (NEW, [push(7, "kept"), push(7, "late"), push(7, "parked"), Arrived(7)])
    ]


def test_batches_are_released_one_by_one(board):
    """A busy client in the first batch waits for that batch, not the whole hand-off."""
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [], now=0.0)
    switchboard.request_release((OLD, 2), [8], [], now=0.0)
    table.where.update({7: NEW_REGION})
    switchboard.note_adopted([7], 0.0)
    assert switchboard.ready_releases(0.0) == [(OLD, 1)]
    switchboard.finish_release((OLD, 1), [], now=0.0)
    assert switchboard.deliver_parked(0.0) == [(NEW, [Arrived(7)])]
    assert list(switchboard.waiting) == [(OLD, 2)]


def test_a_stale_route_to_the_old_region_after_delivery_goes_to_the_new_owner(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.note_adopted([7], 0.0)
    switchboard.ready_releases(0.0)
    switchboard.finish_release((OLD, 1), [], now=time.monotonic())
    switchboard.deliver_parked(0.0)
    ops = [push(7, "late lookup"), push(9, "stays"), PushMany([7, 9], "both", None)]
    routed = switchboard.route(ToRegion(OLD_REGION), ops, lambda s: 0, time.monotonic())
    assert sorted(routed) == sorted(
        [
            (OLD, [push(9, "stays"), PushMany([9], "both", None)]),
            (NEW, [push(7, "late lookup"), push(7, "both")]),
        ]
    )


def test_an_old_worker_dying_mid_release_still_delivers_what_it_kept(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [push(7, "kept")], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.worker_gone(OLD, OLD_REGION, now=0.0)
    assert switchboard.deliver_parked(0.0) == [(NEW, [push(7, "kept"), Arrived(7)])]
    assert OLD_REGION not in switchboard.region_pid


def test_announcements_nobody_asks_for_do_not_pile_up(board):
    switchboard, _ = board
    switchboard.note_adopted([1, 2, 3], 0.0)
    switchboard.note_adopted([4], 4 * PARK_TIMEOUT + 1)
    assert list(switchboard.announced) == [4]


def test_the_old_worker_releases_each_batch_with_what_it_kept_for_it():
    loop = asyncio.new_event_loop()
    try:
        reports = []
        connections = SessionMap()
        connections.moved.update({7, 8, 9})
        worker = SimpleNamespace(
            connections=connections,
            stats=Counter(),
            loop=loop,
            report=reports.append,
            settings=SETTINGS,
        )
        router = Router(worker, None, None)
        router.apply([push(7, "a"), push(8, "b"), push(7, "c"), push(9, "d")])
        router.release(1, [7])
        assert reports == [Release(1, [7], [push(7, "a"), push(7, "c")])]
        router.apply([push(7, "late"), push(8, "e")])
        router.on_released(1)
        assert reports[-1] == ReleaseDone(1, [push(7, "late")])
        assert 7 not in connections.moved  # ours no longer: nothing more is kept for it
        router.release(2, [8])
        connections.moved.discard(9)  # a failed hand-off took 9 back (it closes with 1012)
        released = router.handoff_over()
        assert not released.done()  # batch 2 is not answered yet
        assert worker.stats["routed_to_closed"] == 1
        router.on_released(2)
        assert released.done()
        assert router.kept == {}
    finally:
        loop.close()


def test_the_old_worker_can_wait_for_the_answer_to_one_release():
    """The hand-off lets the busiest clients' batch finish its release before it
    prepares the next one: ``answered`` resolves with the master's ``Released`` and
    gives up (False) after its bound, leaving the release pending."""
    loop = asyncio.new_event_loop()
    try:
        connections = SessionMap()
        connections.moved.update({7, 8})
        worker = SimpleNamespace(
            connections=connections,
            stats=Counter(),
            loop=loop,
            report=lambda message: None,
            settings=SETTINGS,
        )
        router = Router(worker, None, None)
        router.release(1, [7])
        router.release(2, [8])
        loop.call_soon(router.on_released, 1)
        assert loop.run_until_complete(router.answered(1, 5.0)) is True
        assert loop.run_until_complete(router.answered(2, 0.01)) is False
        assert 2 in router.releasing  # still pending: answered later or given up
        assert loop.run_until_complete(router.answered(1, 0.01)) is True  # answered already
        router.on_released(2)
        assert router._answers == {}  # nothing left waiting
    finally:
        loop.close()


def test_the_master_fans_a_broadcast_out_and_to_the_sessions_in_hand_over(board):
    """A session between its release and its delivery has no owner: the master adds
    the broadcast to what it keeps for it; every other worker gets the broadcast."""
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.note_adopted([7], 0.0)
    switchboard.ready_releases(0.0)
    op = Broadcast("hi", None, 42)
    routed = switchboard.route(ToAll(OTHER_REGION), [op], lambda s: 0, time.monotonic())
    assert sorted(routed) == [(OLD, [op]), (NEW, [op])]  # not back to its sender
    switchboard.finish_release((OLD, 1), [], now=0.0)
    assert switchboard.deliver_parked(0.0) == [(NEW, [Push(7, "hi", None, 42), Arrived(7)])]


def new_owner_with_an_arriving_session():
    connections = SessionMap()
    conn, settled = FakeConnection(), FakeConnection()
    dict.__setitem__(connections, 7, conn)  # adopted, waiting for "arrived"
    dict.__setitem__(connections, 8, settled)
    connections.arriving[7] = []
    worker = SimpleNamespace(connections=connections, stats=Counter(), settings=SETTINGS)
    return Router(worker, None, None), conn, settled


def test_a_new_owner_leaves_another_workers_broadcast_to_an_arriving_session_to_others():
    router, conn, settled = new_owner_with_an_arriving_session()
    router.apply([Broadcast("b", None, 42)])
    assert settled.calls == [("push", "b")]
    assert conn.calls == []  # it comes through the old worker or the master, once
    router.apply([Push(7, "b", None, 42)])
    router.apply([Push(7, "b", None, 42)])  # the same broadcast by the other path
    assert conn.calls == [("push", "b")]


def test_a_new_owners_own_broadcast_waits_in_order_and_is_not_doubled():
    router, conn, settled = new_owner_with_an_arriving_session()
    router.hold(conn, 7, "first", None)
    assert router.apply_broadcast("b", None, 99, local=True) == 2
    assert settled.calls == [("push", "b")]
    router.apply([Push(7, "kept", None), Push(7, "b", None, 99)])  # old worker's copy
    assert conn.calls == [("push", "kept")]
    router.arrived(7)
    assert conn.calls == [("push", "kept"), ("push", "first"), ("push", "b")]
    assert router.seen == {}


def test_an_old_worker_keeps_broadcasts_for_sessions_it_handed_off():
    connections = SessionMap()
    connections.moved.add(7)
    worker = SimpleNamespace(connections=connections, stats=Counter(), settings=SETTINGS)
    router = Router(worker, None, None)
    router.apply([Broadcast("b", None, 42)])
    assert router.kept == {7: [Push(7, "b", None, 42)]}


def test_an_old_worker_that_gives_up_waiting_hands_over_what_it_kept():
    """A stalled master or new worker: the old worker's wait for Released expires; it
    lets go anyway and gives the master every operation it kept, dropping none."""
    loop = asyncio.new_event_loop()
    try:
        reports = []
        connections = SessionMap()
        connections.moved.update({7})
        worker = SimpleNamespace(
            connections=connections,
            stats=Counter(),
            loop=loop,
            report=reports.append,
            settings=SETTINGS,
        )
        router = Router(worker, None, None)
        router.release(1, [7])
        router.apply([push(7, "kept after the release")])
        router.give_up_releases()
        assert reports[-1] == ReleaseDone(1, [push(7, "kept after the release")])
        assert connections.moved == set() and router.kept == {}
    finally:
        loop.close()


def test_a_release_done_for_a_batch_still_waiting_is_granted_counted_and_delivered(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [push(7, "kept")], now=0.0)
    table.where[7] = NEW_REGION  # adopted, but the stalled new owner announced nothing
    switchboard.finish_release((OLD, 1), [push(7, "late")], now=1.0)
    assert switchboard.forced_releases == 1
    assert switchboard.deliver_parked(1.0) == [
        (NEW, [push(7, "kept"), push(7, "late"), Arrived(7)])
    ]


def test_an_announced_release_is_not_counted_as_forced(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.note_adopted([7], 0.0)
    assert switchboard.ready_releases(0.0) == [(OLD, 1)]
    switchboard.finish_release((OLD, 1), [], now=0.0)
    assert switchboard.forced_releases == 0


def test_every_expiry_that_can_reorder_or_drop_is_counted(board):
    switchboard, _table = board
    switchboard.request_release((OLD, 1), [7], [push(7, "kept")], now=0.0)
    assert switchboard.ready_releases(PARK_TIMEOUT) == [(OLD, 1)]  # nobody announced
    assert switchboard.forced_releases == 1
    switchboard.finish_release((OLD, 1), [], now=PARK_TIMEOUT)
    # the session has no owner anywhere: after the wait, its operations are dropped
    assert switchboard.deliver_parked(2 * PARK_TIMEOUT) == []
    assert switchboard.expired_parked == 1 and switchboard.dropped == 1


def test_an_old_worker_dying_before_its_release_was_granted_counts_it_as_forced(board):
    switchboard, table = board
    switchboard.request_release((OLD, 1), [7], [push(7, "kept")], now=0.0)
    table.where[7] = NEW_REGION
    switchboard.worker_gone(OLD, OLD_REGION, now=0.0)
    assert switchboard.forced_releases == 1
    assert switchboard.deliver_parked(0.0) == [(NEW, [push(7, "kept"), Arrived(7)])]


def test_an_arrival_marker_that_never_comes_is_counted_and_the_held_pushes_go():
    loop = asyncio.new_event_loop()
    try:
        router, conn, _settled = new_owner_with_an_arriving_session()
        router.worker.loop = loop
        router.hold(conn, 7, "held", None)
        router._arrival_overdue(7)
        assert conn.calls == [("push", "held")]
        assert router.worker.stats["handoff_arrivals_overdue"] == 1
        router._arrival_overdue(7)  # arrived meanwhile: nothing more is counted
        assert router.worker.stats["handoff_arrivals_overdue"] == 1
    finally:
        loop.close()


def test_a_broadcast_leaves_for_the_other_workers_before_this_one_writes_to_its_own():
    """The other workers write to their sessions while this one writes to its own: the
    routed operation is reported to the master first, not at the end of the callback."""
    events: list = []
    connections = SessionMap()
    conn = FakeConnection()
    conn.calls = events
    dict.__setitem__(connections, 8, conn)
    worker = SimpleNamespace(
        connections=connections,
        stats=Counter(),
        settings=SETTINGS,
        report=events.append,
        loop=SimpleNamespace(call_soon=lambda callback: None),  # a flush left for later
    )
    router = Router(worker, table=object(), region=3)
    handed, routed = router.broadcast("b", None)
    assert (handed, routed) == (1, True)
    route, push = events
    assert push == ("push", "b")
    assert route.target == ToAll(3)
    assert [type(op) for op in route.ops] == [Broadcast]
    assert route.ops[0].data == "b"
    assert router.outbox == {}


def test_many_held_operations_go_a_share_per_turn_and_later_pushes_queue_behind(
    router_and_conn,
):
    """1. 3,000 pushes are held for an arriving session (a client flooding the worker
    while it moved, each of its messages answered)  2. at the arrival marker,
    ARRIVAL_SHARE of them go in this turn of the loop (before: all in one callback, which
    held the loop for 100-150 ms)  3. a push the app makes meanwhile is held behind the
    rest, and a second marker (an overdue one) neither sends twice nor is counted
    4. the next turns send the rest, then the late push, in order; the session is
    settled."""
    router, conn = router_and_conn
    loop = asyncio.new_event_loop()
    router.worker.loop = loop
    try:
        for n in range(3000):
            assert router.hold(conn, 7, str(n), None)
        router.arrived(7)
        assert len(conn.calls) == ARRIVAL_SHARE
        assert router.hold(conn, 7, "later", None)
        router.arrived(7)
        router._arrival_overdue(7)
        assert len(conn.calls) == ARRIVAL_SHARE
        assert router.worker.stats["handoff_arrivals_overdue"] == 0
        for _ in range(10):
            loop.run_until_complete(asyncio.sleep(0))
        assert conn.calls == [("push", str(n)) for n in range(3000)] + [("push", "later")]
        assert 7 not in router.worker.connections.arriving
    finally:
        loop.close()
