"""When a WebSocket session has websockets' protocol object, and when it lets it go.

The fast path serves whole messages, pings and pongs without it; it is made for the
first frame the fast path does not take (a fragment, a close, a larger frame) or when
the server closes, and let go once the session is back between messages, unless the
client keeps its compression window (its compressed messages all go that way). An idle
session, one answering heartbeat pings included, keeps none (docs/performance.md,
"Reconnect storm"), and one that keeps it holds no message in it.
"""

from __future__ import annotations

from unit.test_connection_fuzz import client_frame
from unit.test_deflate import compressed_client_frame, open_session, server_frames

TEXT, CONT, CLOSE, PING, PONG = 0x1, 0x0, 0x8, 0x9, 0xA


def test_messages_pings_and_pongs_need_no_protocol_object() -> None:
    worker, transport, conn = open_session()
    conn.data_received(
        client_frame(TEXT, b"one")
        + client_frame(PING, b"are you there")
        + client_frame(PONG, b"heartbeat answered")
        + client_frame(TEXT, b"two")
    )
    assert conn.ws is None
    _, raw, frames = server_frames(bytes(transport.out))
    assert [b0 for b0, _ in raw] == [0x81, 0x8A, 0x81]  # echo, pong, echo: in order
    assert [f.data for f in frames] == [b"one", b"are you there", b"two"]
    assert worker.connections.messages()[0] == 2


def test_a_pong_cut_by_the_read_still_needs_none() -> None:
    _, _, conn = open_session()
    pong = client_frame(PONG, b"late")
    conn.data_received(pong[:3])
    conn.data_received(pong[3:] + client_frame(TEXT, b"after"))
    assert conn.ws is None
    assert conn.messages_in == 1


def test_a_fragmented_message_borrows_it_and_gives_it_back() -> None:
    _, transport, conn = open_session()
    conn.data_received(client_frame(TEXT, b"frag", fin=False))
    assert conn.ws is not None  # a message in progress lives in it
    conn.data_received(client_frame(CONT, b"mented"))
    assert conn.ws is None  # back between messages
    conn.data_received(client_frame(TEXT, b"fast again"))
    _, _, frames = server_frames(bytes(transport.out))
    assert [f.data for f in frames] == [b"fragmented", b"fast again"]


def test_a_client_keeping_its_compression_context_keeps_it() -> None:
    """Without live hand-off the client may keep its deflate window (RFC 7692 §7.1.1.2),
    which the session's extension holds between messages; the protocol object its
    compressed messages go through stays, its parser holding no frame (the last
    message, inflated, up to max_message_size)."""
    _, transport, conn = open_session(reload_handoff=False)
    head = bytes(transport.out).partition(b"\r\n\r\n")[0]
    assert b"client_no_context_takeover" not in head
    conn.data_received(compressed_client_frame(TEXT, b"hello hello hello"))
    assert conn.ws is not None
    assert conn.messages_in == 1
    parsing = conn.ws.parser.gi_frame
    assert parsing is not None and "frame" not in parsing.f_locals


def test_a_server_close_makes_it_and_a_client_close_is_answered() -> None:
    _, transport, conn = open_session()
    assert conn.disconnect(4000, "bye")
    assert conn.ws is not None
    conn.data_received(client_frame(CLOSE, (4000).to_bytes(2, "big")))
    out = bytes(transport.out).partition(b"\r\n\r\n")[2]
    assert out[:1] == b"\x88" and int.from_bytes(out[2:4], "big") == 4000
    assert transport.closing
