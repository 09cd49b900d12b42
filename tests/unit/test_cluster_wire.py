"""Cluster mode's pure parts: the bus wire format (swoolish.core.bus), a worker's replica
of the other nodes (swoolish.core.replica.ClusterView) and the link's reconnection
delays (swoolish.worker.buslink.retry_delay)."""

from __future__ import annotations

import asyncio
import struct
import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from swoolish.core import bus
from swoolish.core.replica import NODE_SILENCE, ClusterView
from swoolish.worker.buslink import (
    ESSENTIAL_ROOM,
    HEALTH_INTERVAL,
    LINK_TIMEOUT,
    REFUSAL_QUIET,
    RETRY,
    RETRY_CAP,
    RETRY_STEADY,
    BusLink,
    retry_delay,
)

U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
U16 = st.integers(0, 2**16 - 1)
U8 = st.integers(0, 255)


def msg(kind: int, body: bytes = b"", node: int = 7, publisher: int = 4242, seq: int = 1) -> bytes:
    return bus.encode(kind, node, publisher, seq, body)


# -- the header -----------------------------------------------------------------------


@given(kind=U8, node=U32, publisher=U32, seq=U64, body=st.binary(max_size=64))
def test_header_round_trips(kind, node, publisher, seq, body):
    data = bus.encode(kind, node, publisher, seq, body)
    assert len(data) == bus.HEADER_SIZE + len(body)
    assert bus.decode_header(data) == bus.Header(kind, node, publisher, seq)
    assert data[bus.HEADER_SIZE :] == body


@pytest.mark.parametrize("version", [0, bus.VERSION + 1, 255])
def test_another_version_is_a_bus_error(version):
    data = bytearray(msg(bus.PUSH, bus.push_body(1, 1, b"x")))
    data[1] = version
    with pytest.raises(bus.BusError, match="version"):
        bus.decode_header(bytes(data))


@pytest.mark.parametrize("size", [0, 1, bus.HEADER_SIZE - 1])
def test_a_payload_shorter_than_the_header_is_a_bus_error(size):
    with pytest.raises(bus.BusError, match="shorter than its header"):
        bus.decode_header(msg(bus.PUSH)[:size])


def test_bus_error_is_a_value_error():
    """What Cluster.on_message catches, counts and drops."""
    assert issubclass(bus.BusError, ValueError)


def test_kinds_are_distinct_ascii_letters():
    kinds = [
        getattr(bus, name)
        for name in bus.__all__
        if name.isupper() and name not in ("VERSION", "CLOSE_CODE")
    ]
    assert len(kinds) == len(set(kinds)) == 13
    assert all(chr(k).isalpha() and chr(k).isupper() for k in kinds)


# -- every body: encoded, then read back -------------------------------------------------


def test_push_round_trips():
    assert bus.read_push(msg(bus.PUSH, bus.push_body(2**40 + 5, 2, b"\x00\xff"))) == (
        2**40 + 5,
        2,
        b"\x00\xff",
    )
    assert bus.read_push(msg(bus.PUSH, bus.push_body(1, 1, b""))) == (1, 1, b"")


def test_broadcast_round_trips():
    assert bus.read_broadcast(msg(bus.BROADCAST, bus.broadcast_body(1, b"hi"))) == (1, b"hi")
    assert bus.read_broadcast(msg(bus.BROADCAST, bus.broadcast_body(2, b""))) == (2, b"")


def test_multi_push_round_trips():
    body = bus.multi_push_body([3, 2**52, 9], 1, b"all of you")
    assert bus.read_multi_push(msg(bus.MULTI_PUSH, body)) == ([3, 2**52, 9], 1, b"all of you")
    assert bus.read_multi_push(msg(bus.MULTI_PUSH, bus.multi_push_body([], 2, b""))) == ([], 2, b"")


def test_disconnect_round_trips():
    body = bus.disconnect_body(77, 4000, "bye ünïcode")
    assert bus.read_disconnect(msg(bus.DISCONNECT, body)) == (77, 4000, "bye ünïcode")
    body = bus.disconnect_body(78, bus.CLOSE_CODE, "")
    assert bus.read_disconnect(msg(bus.DISCONNECT, body)) == (78, bus.CLOSE_CODE, "")


def test_a_disconnect_reason_that_is_not_utf8_still_reads():
    data = msg(bus.DISCONNECT, struct.pack("!QH", 5, 4001) + b"\xff\xfe")
    fd, code, reason = bus.read_disconnect(data)
    assert (fd, code) == (5, 4001) and reason == "\ufffd\ufffd"


def test_session_lists_round_trip():
    for fds in ([], [1], [2**53 - 1, 0, 12345]):
        assert bus.read_ids(msg(bus.OPENED, bus.ids_body(fds))) == fds
        assert bus.read_ids(msg(bus.CLOSED, bus.ids_body(fds))) == fds


def test_heartbeat_round_trips_and_clamps_the_session_count():
    assert bus.read_heartbeat(msg(bus.HEARTBEAT, bus.heartbeat_body(3, 1500, 7))) == (3, 1500, 7)
    assert bus.read_heartbeat(msg(bus.HEARTBEAT, bus.heartbeat_body(0, 2**40, 2**64 - 1))) == (
        0,
        0xFFFFFFFF,
        2**64 - 1,
    )


def test_a_heartbeat_without_a_token_reads_token_0():
    """An older node's heartbeat (worker id and sessions only) still reads."""
    old = msg(bus.HEARTBEAT, bus.heartbeat_body(3, 9)[:6])
    assert bus.read_heartbeat(old) == (3, 9, 0)
    assert bus.read_leaving(msg(bus.LEAVING, b"\x01")) == (True, 0)


def test_a_node_key_value_names_its_token():
    value = bus.claim_value(0xABC, 42)
    assert value.startswith("token=0000000000000abc;pid=42;host=")


def test_snapshot_round_trips():
    assert bus.read_snapshot(msg(bus.SNAPSHOT, bus.snapshot_body(2, [10, 11]))) == (2, [10, 11])
    assert bus.read_snapshot(msg(bus.SNAPSHOT, bus.snapshot_body(0, []))) == (0, [])


def test_exists_question_and_answer_round_trip():
    assert bus.read_question(msg(bus.EXISTS_QUESTION, bus.question_body(2**50, 7))) == (2**50, 7)
    for alive in (True, False):
        data = msg(bus.EXISTS_ANSWER, bus.answer_body(4242, 2**32 - 1, alive))
        assert bus.read_answer(data) == (4242, 2**32 - 1, alive)


def test_pipe_round_trips():
    assert bus.read_pipe(msg(bus.PIPE, bus.pipe_body(1, 0, b"\x80pickled"))) == (
        1,
        0,
        b"\x80pickled",
    )


def test_leaving_round_trips():
    assert bus.read_leaving(msg(bus.LEAVING, bus.leaving_body(True, 5))) == (True, 5)
    assert bus.read_leaving(msg(bus.LEAVING, bus.leaving_body(False))) == (False, 0)
    assert bus.read_leaving(msg(bus.LEAVING)) == (False, 0)  # no body: only this worker


# -- what is not a message of this version ------------------------------------------------


def test_a_broadcast_without_its_opcode_is_a_bus_error():
    with pytest.raises(bus.BusError):
        bus.read_broadcast(msg(bus.BROADCAST))


def test_a_multi_push_shorter_than_its_list_is_a_bus_error():
    body = bus.multi_push_body([1, 2, 3], 1, b"x")
    count_and_two_ids = bus.HEADER_SIZE + 4 + 16
    with pytest.raises(bus.BusError):
        bus.read_multi_push(msg(bus.MULTI_PUSH, body)[:count_and_two_ids])
    with pytest.raises(bus.BusError):  # the list, but no opcode after it
        bus.read_multi_push(msg(bus.MULTI_PUSH, body)[: count_and_two_ids + 8])


def test_a_session_list_of_a_ragged_length_is_a_bus_error():
    with pytest.raises(bus.BusError):
        bus.read_ids(msg(bus.OPENED, bus.ids_body([1, 2]) + b"\x00"))
    with pytest.raises(bus.BusError):
        bus.read_snapshot(msg(bus.SNAPSHOT, bus.snapshot_body(1, [1]) + b"\x00\x00"))


READERS = {
    "push": (bus.read_push, bus.PUSH, bus.push_body(1, 1, b"")),
    "multi_push": (bus.read_multi_push, bus.MULTI_PUSH, bus.multi_push_body([1], 1, b"")),
    "disconnect": (bus.read_disconnect, bus.DISCONNECT, bus.disconnect_body(1, 4000, "")),
    "heartbeat": (bus.read_heartbeat, bus.HEARTBEAT, bus.heartbeat_body(1, 1, 1)),
    "leaving": (bus.read_leaving, bus.LEAVING, bus.leaving_body(True, 1)),
    "snapshot": (bus.read_snapshot, bus.SNAPSHOT, bus.snapshot_body(1, [])),
    "question": (bus.read_question, bus.EXISTS_QUESTION, bus.question_body(1, 1)),
    "answer": (bus.read_answer, bus.EXISTS_ANSWER, bus.answer_body(1, 1, True)),
    "pipe": (bus.read_pipe, bus.PIPE, bus.pipe_body(1, 1, b"")),
}


@pytest.mark.parametrize("name", sorted(READERS))
def test_a_truncated_body_raises_what_the_cluster_counts_and_drops(name):
    """Cluster.on_message counts and drops a message whose reader raises ValueError
    (BusError is one), IndexError or UnicodeDecodeError; any other exception escapes it
    (the bus link then logs a traceback per message). Every fixed-size body cut short
    by one byte must raise one of those."""
    reader, kind, body = READERS[name]
    data = msg(kind, body)[:-1]
    with pytest.raises((ValueError, IndexError, UnicodeDecodeError)):
        reader(data)


# -- properties: arbitrary bytes in, the same bytes out -------------------------------


@given(fd=U64, opcode=U8, payload=st.binary(max_size=2048), seq=U64)
def test_any_push_round_trips(fd, opcode, payload, seq):
    data = msg(bus.PUSH, bus.push_body(fd, opcode, payload), seq=seq)
    assert bus.decode_header(data).seq == seq
    assert bus.read_push(data) == (fd, opcode, payload)


@given(fds=st.lists(U64, max_size=200), opcode=U8, payload=st.binary(max_size=2048))
def test_any_multi_push_round_trips(fds, opcode, payload):
    data = msg(bus.MULTI_PUSH, bus.multi_push_body(fds, opcode, payload))
    assert bus.read_multi_push(data) == (fds, opcode, payload)


@given(fd=U64, code=U16, reason=st.text(st.characters(codec="utf-8"), max_size=123))
def test_any_disconnect_round_trips(fd, code, reason):
    data = msg(bus.DISCONNECT, bus.disconnect_body(fd, code, reason))
    assert bus.read_disconnect(data) == (fd, code, reason)


@given(fd=U64, code=U16, raw=st.binary(max_size=123))
def test_any_disconnect_reason_bytes_read_without_raising(fd, code, raw):
    data = msg(bus.DISCONNECT, struct.pack("!QH", fd, code) + raw)
    assert bus.read_disconnect(data) == (fd, code, raw.decode(errors="replace"))


@given(opcode=U8, payload=st.binary(max_size=2048))
def test_any_broadcast_round_trips(opcode, payload):
    assert bus.read_broadcast(msg(bus.BROADCAST, bus.broadcast_body(opcode, payload))) == (
        opcode,
        payload,
    )


@given(worker_id=U16, fds=st.lists(U64, max_size=200))
def test_any_snapshot_round_trips(worker_id, fds):
    data = msg(bus.SNAPSHOT, bus.snapshot_body(worker_id, fds))
    assert bus.read_snapshot(data) == (worker_id, fds)


# -- Marks ------------------------------------------------------------------------------


def test_marks_cover_what_was_read_per_publisher():
    marks = bus.Marks()
    marks.seen(bus.Header(bus.PUSH, 1, 100, 5))
    assert marks.covers(bus.Header(bus.PUSH, 1, 100, 5))
    assert marks.covers(bus.Header(bus.BROADCAST, 1, 100, 4))
    assert not marks.covers(bus.Header(bus.PUSH, 1, 100, 6))
    assert not marks.covers(bus.Header(bus.PUSH, 1, 101, 1))  # another publisher
    assert not marks.covers(bus.Header(bus.PUSH, 2, 100, 1))  # another node


def test_channels_of_a_cluster():
    names = bus.Channels("prod")
    assert names.all == b"sw:prod:all"
    assert names.ctl == b"sw:prod:ctl"
    assert names.node(12) == b"sw:prod:node:12"
    assert names.node_key(12) == "sw:prod:node:12"
    assert names.epoch_key == "sw:prod:epoch"


# -- ClusterView: the replica of the other nodes ---------------------------------------


def view_of(**kwargs: float) -> ClusterView:
    """A view with a long silence unless told: tests of transit are not about silence."""
    kwargs.setdefault("silence", 100.0)
    return ClusterView(**kwargs)


def test_a_new_publisher_is_reported_once_and_its_sessions_are_unknown_until_told():
    view = view_of()
    assert view.heard(2, 100, now=0.0) is True
    assert view.heard(2, 100, now=0.5) is False
    assert view.is_up(2) and not view.exists(5, 2)
    view.opened(2, 100, [5, 6])
    assert view.exists(5, 2) and view.exists(6, 2)
    assert not view.exists(5, 3)  # the same number on another node is another session
    view.closed(2, 100, [5])
    assert not view.exists(5, 2) and view.exists(6, 2)


def test_events_of_a_publisher_never_heard_are_ignored():
    view = view_of()
    view.opened(2, 100, [5])
    view.snapshot(2, 100, 0, [6], 0.0)
    view.heartbeat(2, 100, 1)
    assert not view.is_up(2) and not view.exists(5, 2) and not view.exists(6, 2)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [5])  # the node is known, this publisher still is not
    assert not view.exists(5, 2)


def test_a_snapshot_replaces_the_list_and_later_events_apply_on_top():
    view = view_of()
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [1, 2])
    view.snapshot(2, 100, 3, [2, 3], 0.0)
    publisher = view.nodes[2][100]
    assert publisher.complete and publisher.worker_id == 3 and publisher.sessions == {2, 3}
    view.opened(2, 100, [4])
    view.closed(2, 100, [2])
    view.closed(2, 100, [1])  # 1 was left out of the snapshot: closed after all
    assert sorted(view.sessions()) == [3, 4]


def test_a_session_a_snapshot_leaves_out_is_in_transit_for_a_while():
    """Left out without a ``closed`` event: it may be moving to another worker of its
    node, so it counts as live for ``transit`` seconds, then is gone."""
    view = view_of(transit=3.0)
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [1, 2])
    view.snapshot(2, 100, 0, [2], 10.0)
    assert view.exists(1, 2) and sorted(view.sessions()) == [1, 2]
    view.expire(12.9)
    assert view.exists(1, 2)
    view.expire(13.0)
    assert not view.exists(1, 2) and sorted(view.sessions()) == [2]


def test_a_heartbeat_names_the_worker():
    view = view_of()
    view.heard(2, 100, 0.0)
    view.heartbeat(2, 100, 5)
    assert view.nodes[2][100].worker_id == 5


def test_sessions_lists_each_session_once():
    view = view_of()
    for publisher in (100, 101):
        view.heard(2, publisher, 0.0)
        view.opened(2, publisher, [1, 2])  # mid-reload: listed by both workers
    view.heard(3, 200, 0.0)
    view.opened(3, 200, [1])  # node 3's session 1: same number, another node
    assert sorted(view.sessions()) == [1, 1, 2]


def test_a_session_listed_by_two_publishers_survives_one_of_them_leaving():
    """A reload: the old worker (100) and its successor (101) both list session 7; the
    old one leaves (only itself): 7 stays for good, the node stays up; 8, listed by the
    old worker only, is in transit, then gone."""
    view = view_of(transit=3.0)
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7, 8])
    view.opened(2, 101, [7])
    view.leaving(2, 100, node_leaving=False, now=1.0)
    assert view.is_up(2) and view.exists(7, 2) and view.exists(8, 2)
    view.expire(4.0)
    assert view.is_up(2) and view.exists(7, 2)
    assert not view.exists(8, 2)
    view.closed(2, 101, [7])
    assert not view.exists(7, 2)


def test_a_session_in_transit_stays_once_its_new_worker_lists_it():
    view = view_of(transit=3.0)
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7, 8, 9])
    view.leaving(2, 100, node_leaving=False, now=1.0)  # before its successor's "opened"
    view.opened(2, 101, [7])
    view.snapshot(2, 101, 0, [7, 8], 1.5)
    view.closed(2, 101, [])  # (an empty batch changes nothing)
    view.expire(10.0)
    assert view.exists(7, 2) and view.exists(8, 2)
    assert not view.exists(9, 2)  # never listed again: closed meanwhile, or lost


def test_a_session_in_transit_that_closes_or_is_forgotten_is_gone_at_once():
    view = view_of(transit=3.0)
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7, 8])
    view.leaving(2, 100, node_leaving=False, now=1.0)
    view.closed(2, 101, [7])
    view.forget(8, 2)
    assert not view.exists(7, 2) and not view.exists(8, 2)
    assert list(view.sessions()) == []


def test_the_last_worker_leaving_alone_keeps_its_node_up_until_the_silence():
    """A reload whose new worker is not heard yet (it could not reach Redis in time):
    the node stays up, its sessions in transit; its successor is heard and the node is
    its; or nobody is heard for ``silence`` seconds and the node is down, not gone for
    good (before, it counted as a whole node's clean leave, never heard again)."""
    view = ClusterView(silence=3.0, transit=3.0)
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [7])
    view.heard(2, 100, 0.5)
    view.leaving(2, 100, node_leaving=False, now=0.5)
    assert view.is_up(2) and view.exists(7, 2)
    assert view.describe(0.5)[2]["workers"] == 0
    assert view.heard(2, 101, 1.0) is True  # its successor
    assert list(view.nodes[2]) == [101]
    view.snapshot(2, 101, 0, [7], 1.0)
    assert view.expire(10.0) == [2]  # then silent: down
    assert view.heard(2, 101, 11.0) is True and view.is_up(2)  # and back


def test_the_last_worker_leaving_alone_with_no_successor_is_down_after_the_silence():
    view = ClusterView(silence=3.0, transit=3.0)
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [7])
    view.leaving(2, 100, node_leaving=False, now=0.0)
    assert view.expire(3.0) == [] and view.is_up(2)
    assert view.expire(3.01) == [2] and not view.exists(7, 2)


def test_a_node_that_left_cleanly_is_not_resurrected_by_a_late_message():
    """1. node 2 (two workers) says it leaves  2. a message it published before that is
    read after: the node stays down, its sessions gone  3. so do its later events."""
    view = view_of()
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7])
    view.leaving(2, 100, node_leaving=True, now=0.0, token=77)
    assert not view.is_up(2) and not view.exists(7, 2)
    assert view.met(2, 77) is False  # a heartbeat in flight, of the same start
    assert view.heard(2, 101, 0.1) is False
    view.opened(2, 101, [9])
    view.snapshot(2, 101, 1, [7, 9], 0.1)
    assert not view.is_up(2) and not view.exists(7, 2) and not view.exists(9, 2)
    assert list(view.sessions()) == []
    assert view.describe(0.2) == {}
    view.clear()  # a lost link forgets what it heard, not who left
    assert view.heard(2, 101, 0.3) is False and not view.is_up(2)


def test_a_node_number_heard_again_with_another_token_is_a_new_node():
    """A Redis that lost its data hands node 2's number out again: the new node's
    heartbeat carries another token, so it is a node like any other, not the one that
    left (before, a number that had left was ignored for good: pushes to the new node
    refused 5 of 5). A heartbeat without a token (an older node) changes nothing."""
    view = view_of()
    view.heard(2, 100, 0.0)
    view.leaving(2, 100, node_leaving=True, now=0.0, token=77)
    assert view.met(2, 0) is False and view.heard(2, 300, 1.0) is False
    assert view.met(2, 78) is True
    assert view.heard(2, 300, 1.0) is True and view.is_up(2)
    view.opened(2, 300, [5])
    assert view.exists(5, 2)
    assert view.met(2, 78) is False and 2 not in view.left  # met once


def test_leaving_of_a_node_never_heard_changes_nothing():
    view = view_of()
    view.leaving(5, 100, node_leaving=True, now=0.0)
    assert view.nodes == {}
    assert view.heard(5, 100, 0.0) is True  # it was never up here: nothing to bury


def test_expire_takes_down_a_node_silent_too_long():
    view = ClusterView(silence=3.0)
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [7])
    view.heard(3, 300, 0.0)
    view.heard(3, 300, 2.5)
    assert view.expire(3.0) == []  # exactly the silence: not yet
    assert view.expire(3.01) == [2]
    assert not view.is_up(2) and not view.exists(7, 2)
    assert view.is_up(3)
    assert view.expire(10.0) == [3]
    assert view.expire(20.0) == []  # each node reported once


def test_expire_drops_a_silent_worker_of_a_node_that_lives():
    view = ClusterView(silence=3.0)
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7])
    view.opened(2, 101, [8])
    view.heard(2, 101, 2.0)
    assert view.expire(3.5) == []
    assert view.is_up(2) and not view.exists(7, 2) and view.exists(8, 2)


def test_a_node_expired_by_silence_comes_back_when_heard_again():
    """Silence is not leaving: a node whose words were late (a Redis stalled for a few
    seconds, a worker blocked) is a live node again as soon as it is heard, and its
    sessions come back with its snapshot."""
    view = ClusterView(silence=3.0)
    view.heard(2, 100, 0.0)
    view.opened(2, 100, [7])
    assert view.expire(NODE_SILENCE + 1) == [2]
    assert not view.exists(7, 2)
    assert view.heard(2, 100, 5.0) is True  # unknown again: a snapshot is wanted
    assert view.is_up(2)
    view.snapshot(2, 100, 0, [7], 5.0)
    assert view.exists(7, 2)


def test_forget_drops_a_session_from_every_publisher_of_its_node():
    view = view_of()
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7])
    view.opened(2, 101, [7, 8])
    view.heard(3, 300, 0.0)
    view.opened(3, 300, [7])
    view.forget(7, 2)
    assert not view.exists(7, 2) and view.exists(8, 2)
    assert view.exists(7, 3)  # node 3's 7 is another session
    view.forget(7, 9)  # a node not known: nothing happens


def test_clear_forgets_every_node_and_lets_them_be_heard_again():
    view = view_of()
    view.heard(2, 100, 0.0)
    view.heard(2, 101, 0.0)
    view.opened(2, 100, [7])
    view.leaving(2, 100, node_leaving=False, now=0.0)  # 7 in transit
    view.clear()
    assert view.nodes == {} and not view.exists(7, 2) and not view.is_up(2)
    assert view.heard(2, 100, 1.0) is True
    assert not view.exists(7, 2)  # not in transit any more either


def test_describe_counts_workers_sessions_and_silence_per_node():
    view = view_of()
    view.heard(2, 100, 10.0)
    view.heard(2, 101, 11.0)
    view.heard(2, 102, 11.0)
    view.opened(2, 100, [1, 2])
    view.opened(2, 101, [2, 3])
    view.opened(2, 102, [4])
    view.leaving(2, 102, node_leaving=False, now=11.0)  # 4 in transit: still counted
    view.heard(5, 500, 9.0)
    assert view.describe(11.5) == {
        2: {"workers": 2, "sessions": 4, "heard_ago": 0.5},
        5: {"workers": 1, "sessions": 0, "heard_ago": 2.5},
    }
    assert list(view.describe(11.5)) == [2, 5]  # in node order
    assert view.describe(0.0)[2]["heard_ago"] == 0.0  # never negative


# -- retry_delay --------------------------------------------------------------------------


def bounds(attempt: int) -> tuple[float, float]:
    """The range retry_delay draws from (the draw returns both ends)."""
    return retry_delay(attempt, draw=lambda low, high: (low, high))  # type: ignore[return-value]


@pytest.mark.parametrize("attempt", range(1, RETRY_STEADY + 1))
def test_the_first_attempts_wait_half_a_second_with_jitter(attempt):
    assert RETRY == 0.5 and RETRY_STEADY == 10
    low, high = bounds(attempt)
    assert low == pytest.approx(0.4) and high == pytest.approx(0.6)


def test_later_attempts_grow_to_five_seconds_with_jitter_and_stay_there():
    assert RETRY_CAP == 5.0
    lows = [bounds(attempt)[0] for attempt in range(RETRY_STEADY, 60)]
    assert lows == sorted(lows)  # never shorter than the one before
    assert bounds(RETRY_STEADY + 1)[0] > bounds(RETRY_STEADY)[0]  # growing from then on
    for attempt in (20, 50, 1000):
        low, high = bounds(attempt)
        assert low == pytest.approx(4.0) and high == pytest.approx(6.0)


@pytest.mark.parametrize("attempt", [1800, 5000, 100_000])
def test_a_long_outage_still_has_a_delay(attempt):
    """Attempt 1800 comes after about 2.5 hours of a Redis that refuses connections
    (5 s apart): the link must keep trying at 5 s, whatever the count."""
    low, high = bounds(attempt)
    assert low == pytest.approx(4.0) and high == pytest.approx(6.0)


@given(attempt=st.integers(1, 1000))
def test_a_drawn_delay_is_within_twenty_percent_of_its_base(attempt):
    delay = retry_delay(attempt)
    if attempt <= RETRY_STEADY:
        assert 0.4 <= delay <= 0.6
    else:
        assert 0.4 <= delay <= 6.0
    if attempt >= 16:  # 0.5 * 1.5**6 > 5: capped
        assert 4.0 <= delay <= 6.0


# -- the publisher's bound (a stalled Redis must not grow a worker's memory) -------------


class _Writer:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def writelines(self, parts: list[bytes]) -> None:
        self.written.extend(parts)


def offline_link(loop: asyncio.AbstractEventLoop, **options: Any) -> BusLink:
    """A link to no Redis at all: the test plays the connection's part."""
    return BusLink(
        "redis://127.0.0.1:1/0", [b"c"], lambda data: None, lambda up, why: None, loop, **options
    )


def test_publishes_past_the_bound_are_refused_until_redis_answers():
    """1. a link whose Redis answers nothing: publishes are written until what waits
    unanswered reaches max_pending, then refused (False), nothing more written  2. Redis
    answers them: room again  3. a link that is down refuses at once."""
    loop = asyncio.new_event_loop()
    try:
        link = offline_link(loop, max_pending=10_000)
        writer = _Writer()
        link._pub = type("Pub", (), {"_writer": writer})()
        link.up = True
        accepted = 0
        while link.publish(b"sw:t:node:2", b"x" * 1000, now=True):
            accepted += 1
            assert accepted < 100, "never refused"
        written = len(writer.written)
        assert 5 <= accepted <= 10 and link.pending <= 10_000
        assert not link.publish(b"sw:t:node:2", b"x" * 1000, now=True)
        assert len(writer.written) == written  # nothing more went out
        for _ in range(accepted):
            link._answered()  # Redis answers each PUBLISH
        assert link.pending == 0
        assert link.publish(b"sw:t:node:2", b"x" * 1000, now=True)
        link.up = False
        assert not link.publish(b"sw:t:node:2", b"y", now=True)
    finally:
        loop.close()


def test_an_essential_publish_goes_past_the_bound_that_refuses_app_messages():
    """1. app messages fill max_pending: the next is refused  2. a control message (a
    session event, a heartbeat) still goes, up to ESSENTIAL_ROOM more: refused, a
    session event was lost for good and the other nodes' view stayed wrong."""
    loop = asyncio.new_event_loop()
    try:
        link = offline_link(loop, max_pending=10_000)
        link._pub = type("Pub", (), {"_writer": _Writer()})()
        link.up = True
        for size in (1000, 40):  # full, to the byte
            while link.publish(b"sw:t:node:2", b"x" * size, now=True):
                pass
        assert not link.publish(b"sw:t:ctl", b"e" * 40, now=True)
        assert link.publish(b"sw:t:ctl", b"e" * 40, now=True, essential=True)
        assert not link.publish(b"sw:t:ctl", b"e" * (ESSENTIAL_ROOM + 1), essential=True)
    finally:
        loop.close()


def test_a_health_check_that_wakes_late_does_not_judge_the_link():
    """1. a command is unanswered, and the loop is then busy past LINK_TIMEOUT (its
    answer waits unread in the socket)  2. the check that wakes late does not declare
    Redis down; the next one, on time, does if the answer is still missing."""

    async def scenario() -> list[str]:
        loop = asyncio.get_running_loop()
        lost: list[str] = []
        link = offline_link(loop)
        link._lose = lost.append  # type: ignore[method-assign]
        link.command = lambda *args: True  # type: ignore[method-assign]
        link._unanswered.append((1, 10, loop.time()))
        check = loop.create_task(link._check_health())
        await asyncio.sleep(0)
        time.sleep(LINK_TIMEOUT + 0.2)  # the loop is busy: the check wakes late
        await asyncio.sleep(HEALTH_INTERVAL / 5)  # the late check has run by now
        late = list(lost)
        await asyncio.wait_for(check, HEALTH_INTERVAL * 2)  # on time: judged, and lost
        return [*late, "then", *lost]

    assert asyncio.run(scenario()) == ["then", f"no answer from Redis within {LINK_TIMEOUT:g}s"]


def test_an_error_reply_is_told_as_its_own_commands_refusal_once_per_episode():
    """1. replies come in command order: an error reply is blamed on the command it
    answers (a SET between publishes), a PUBLISH's on PUBLISH  2. told once when the
    refusals start, however many follow  3. the episode ends (told again) only once the
    command was taken again and none was refused for REFUSAL_QUIET seconds."""
    loop = asyncio.new_event_loop()
    told: list[tuple[str, str]] = []
    try:
        link = offline_link(loop, on_refusal=lambda *t: told.append(t))
        link._pub = type("Pub", (), {"pack_command": lambda self, *a: [b"x"]})()
        link._went_up()
        oom = "OutOfMemoryError: command not allowed"
        for _ in range(3):
            link.publish(b"sw:t:ctl", b"beat")
            link.command("SET", "sw:t:node:1", "x", "PX", 3000)
            link.publish(b"sw:t:ctl", b"event")
            for error in ("", oom, ""):
                link._replied(error)
        assert told == [("SET", oom)] and link.refused == 3
        link.command("PING")
        link.publish(b"sw:t:ctl", b"beat")
        link._replied("")
        link._replied("NOPERM no permission")
        assert told[-1] == ("PUBLISH", "NOPERM no permission") and link.refused == 4
        link.command("SET", "sw:t:node:1", "x", "PX", 3000)
        link._replied("")  # taken again
        link._end_refusals()
        assert "SET" in link.refusing  # not quiet for long enough yet
        link.refusing["SET"].last -= REFUSAL_QUIET
        link._end_refusals()
        assert told[-1] == ("SET", "") and list(link.refusing) == ["PUBLISH"]
    finally:
        loop.close()
