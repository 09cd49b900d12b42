"""The new owner of a just-adopted session holds its own operations, in order."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest

from swoolish.routing import Router, SessionMap


class FakeConnection:
    def __init__(self):
        self.calls = []
        self.closing = False
        self.established = True

    def push(self, data, opcode):
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
    worker = SimpleNamespace(connections=connections, stats=Counter())
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
