"""A real `swoolish serve` process with real WebSocket clients: echo, order, sessions."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import socket
import threading

import pytest
from support import read_server_frame, serving
from websockets.exceptions import ConnectionClosed

TARGET = "tests/apps/echo_app.py:server"


# The compiled fast path (swoolish/core/_speedups.c, when built) and the pure-Python one.
FAST_PATHS = {"default": None, "python": {"SWOOLISH_NO_SPEEDUPS": "1"}}


@pytest.mark.parametrize("fast_path", sorted(FAST_PATHS))
def test_echo_text_and_binary_round_trip(tmp_path, fast_path):
    """1. serve the echo app  2. send text and binary  3. each comes back unchanged."""
    with serving(TARGET, tmp_path, env=FAST_PATHS[fast_path]) as server, server.connect() as ws:
        ws.send("hello")
        assert ws.recv() == "hello"
        ws.send(b"\x00\xffbinary")
        assert ws.recv() == b"\x00\xffbinary"
        ws.send("ü" * 100)  # a 16-bit length, UTF-8 beyond ASCII
        assert ws.recv() == "ü" * 100
        ws.send("é" * 50_000)
        assert ws.recv() == "é" * 50_000


@pytest.mark.parametrize("fast_path", sorted(FAST_PATHS))
def test_a_handshake_and_a_frame_in_one_write_are_served_in_order(tmp_path, fast_path):
    """1. a handshake head (a query, a value with spaces after it) and a masked frame in
    one write  2. the 101 with the right accept key  3. the open handler saw the query
    4. the frame is echoed. The compiled path reads such a head without a parser
    (docs/design.md, "The handshake without a parser"); the Python one with httptools."""
    key = base64.b64encode(b"sixteen byte key").decode()
    head = (
        "GET /hello?a=1&b=%20x HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
        f"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13  \r\nUser-Agent: test\t\r\n\r\n"
    ).encode()
    mask = b"\x01\x02\x03\x04"
    payload = b"behind the head"
    frame = bytes([0x81, 0x80 | len(payload)]) + mask
    frame += bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    with serving(TARGET, tmp_path, env=FAST_PATHS[fast_path]) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(head + frame)
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = sock.recv(1)
                assert chunk, "the server closed the connection"
                answer += chunk
            accept = base64.b64encode(
                hashlib.sha1(key.encode() + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
            ).decode()
            assert answer.startswith(b"HTTP/1.1 101 ")
            assert f"\r\nSec-WebSocket-Accept: {accept}\r\n".encode() in answer
            assert json.loads(read_server_frame(sock))["query"] == {"a": "1", "b": " x"}
            assert read_server_frame(sock) == payload


def test_messages_of_one_connection_are_handled_in_order(tmp_path):
    """1. a slow awaiting handler first  2. fast messages after it  3. replies keep order."""
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("cmd:sleep:0.2")
        for i in range(50):
            ws.send(f"m{i}")
        replies = [ws.recv() for _ in range(51)]
        assert replies == ["slept 0.2"] + [f"m{i}" for i in range(50)]


def test_connections_run_concurrently(tmp_path):
    """1. client A's handler sleeps  2. client B is answered meanwhile."""
    with serving(TARGET, tmp_path) as server, server.connect() as a, server.connect() as b:
        a.send("cmd:sleep:1.5")
        b.send("quick")
        assert b.recv(timeout=1.0) == "quick"
        assert a.recv(timeout=5) == "slept 1.5"


def test_session_ids_are_positive_unique_and_exist(tmp_path):
    """1. 20 clients  2. ids are distinct positive ints  3. exists/push/disconnect agree."""
    with serving(TARGET, tmp_path) as server, contextlib.ExitStack() as stack:
        clients = [stack.enter_context(server.connect("/hello")) for _ in range(20)]
        ids = [json.loads(c.recv())["fd"] for c in clients]
        assert len(set(ids)) == 20 and all(isinstance(i, int) and 0 < i < 2**53 for i in ids)
        probe = clients[0]
        probe.send(f"cmd:exists:{ids[1]}")
        assert json.loads(probe.recv()) == {"exists": True, "established": True}
        probe.send(f"cmd:push:{ids[1]}:hi there")
        assert json.loads(probe.recv()) == {"pushed": True}
        assert clients[1].recv() == "hi there"
        probe.send(f"cmd:disconnect:{ids[2]}:4000")
        assert json.loads(probe.recv()) == {"disconnected": True}
        with pytest.raises(ConnectionClosed) as closed:
            clients[2].recv(timeout=5)
        assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4000, "bye")
        probe.send(f"cmd:exists:{ids[2]}")
        assert json.loads(probe.recv()) == {"exists": False, "established": False}
        probe.send(f"cmd:push:{ids[2]}:late")
        assert json.loads(probe.recv()) == {"pushed": False}
        probe.send("cmd:push:999999999:nobody")
        assert json.loads(probe.recv()) == {"pushed": False}


def test_ids_never_reused_after_close(tmp_path):
    """1. open and close 30 clients one after another  2. no id comes back."""
    seen = set()
    with serving(TARGET, tmp_path) as server:
        for _ in range(30):
            with server.connect("/hello") as ws:
                fd = json.loads(ws.recv())["fd"]
                assert fd not in seen
                seen.add(fd)


def test_client_info_and_stats(tmp_path):
    with serving(TARGET, tmp_path) as server, server.connect() as ws:
        ws.send("cmd:info")
        info = json.loads(ws.recv())
        assert info["remote_ip"] == "127.0.0.1" and info["remote_port"] > 0
        assert info["websocket_status"] == 3 and info["worker_id"] == 0
        ws.send("x")
        ws.recv()
        ws.send("cmd:push:123456789:nobody")
        ws.recv()
        ws.send("cmd:stats")
        stats = json.loads(ws.recv())
        assert stats["messages_in"] >= 3 and stats["push_to_closed"] >= 1
        assert stats["websocket_connections"] == 1 and stats["generation"] == 1


def test_many_clients_in_parallel_all_get_their_own_echo(tmp_path):
    errors = []

    def client(server, n):
        try:
            with server.connect() as ws:
                for i in range(20):
                    ws.send(f"{n}-{i}")
                    assert ws.recv() == f"{n}-{i}"
        except Exception as exc:  # reported below
            errors.append(exc)

    with serving(TARGET, tmp_path, workers=2) as server:
        threads = [threading.Thread(target=client, args=(server, n)) for n in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    assert errors == []
