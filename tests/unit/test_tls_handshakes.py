"""TlsHandshakes: the connections whose TLS handshake is under way, counted exactly."""

from __future__ import annotations

from swoolish.worker.tlshandshakes import TlsHandshakes


class Conn:
    """A protocol object as uvloop holds it while the handshake runs."""


def test_counted_from_the_accept_until_the_handshake_completes():
    handshakes = TlsHandshakes()
    conns = [Conn() for _ in range(3)]
    for conn in conns:
        handshakes.begun(conn)
    assert len(handshakes) == 3
    handshakes.completed(conns[1])
    assert len(handshakes) == 2
    handshakes.completed(conns[1])  # once only
    assert len(handshakes) == 2


def test_a_connection_dropped_in_its_handshake_stops_counting_when_let_go():
    """uvloop never tells the protocol of a handshake that failed or timed out: it lets
    go of it, and the weak reference's callback takes it off the count."""
    handshakes = TlsHandshakes()
    conn = Conn()
    handshakes.begun(conn)
    handshakes.begun(Conn())  # let go at once
    assert len(handshakes) == 1
    del conn
    assert len(handshakes) == 0
