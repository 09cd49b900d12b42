"""Bad input and limits (docs/quickstart.md) against a real `swoolish serve` process.

Every test serves ``tests/apps/limits_app.py`` through a small generated wrapper that
sets the limits it needs, and talks to it over real loopback sockets: hand-built
frames and requests where the exact bytes matter, the ``websockets`` client and
``http.client`` where they do not. Each bad client must get its specific outcome while
the other clients of the same worker keep being served.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import uuid

import psutil
import pytest
from support import (
    masked_frame,
    raw_connect,
    raw_handshake,
    read_close_code,
    read_to_eof,
    serving,
    timeout,
    wait_until,
    write_app,
)
from websockets.exceptions import ConnectionClosed, InvalidMessage, InvalidStatus

HANDSHAKE = (
    b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)


# ---------------------------------------------------------------------- helpers


def limits_app(tmp_path, http: bool = False, **settings) -> str:
    """Write a wrapper serving ``limits_app.build(http, **settings)``; return its TARGET."""
    source = (
        "from tests.apps.limits_app import build\n\n"
        f"server = build(http={http!r}, **{settings!r})\n"
    )
    path = write_app(tmp_path, source)
    return f"{path}:server"


def http_exchange(port: int, request: bytes) -> bytes:
    """Send raw request bytes, return the raw answer; fails if the server keeps the socket."""
    with raw_connect(port) as sock:
        sock.sendall(request)
        return read_to_eof(sock)


def status_of(answer: bytes) -> int:
    assert answer.startswith(b"HTTP/1.1 "), answer[:200]
    return int(answer.split(b" ", 2)[1])


def headers_of(answer: bytes) -> dict[str, str]:
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in head)}


def ask(ws, command: str):
    """Send a ``cmd:`` message on a websockets client and decode the JSON answer."""
    ws.send(command)
    return json.loads(ws.recv(timeout=timeout(5)))


def assert_echoes(ws, text: str = "still here") -> None:
    ws.send(text)
    assert ws.recv(timeout=timeout(5)) == text


class FrameReader:
    """Reads server frames (unmasked, RFC 6455 §5.2) from a raw socket."""

    def __init__(self, sock: socket.socket, leftover: bytes = b"") -> None:
        self.sock = sock
        self.buffer = bytearray(leftover)

    def _parse(self) -> tuple[int, bool, bytes] | None:
        buf = self.buffer
        if len(buf) < 2:
            return None
        fin, opcode, length, offset = bool(buf[0] & 0x80), buf[0] & 0x0F, buf[1] & 0x7F, 2
        if length == 126:
            if len(buf) < 4:
                return None
            length, offset = int.from_bytes(buf[2:4], "big"), 4
        elif length == 127:
            if len(buf) < 10:
                return None
            length, offset = int.from_bytes(buf[2:10], "big"), 10
        if len(buf) < offset + length:
            return None
        payload = bytes(buf[offset : offset + length])
        del buf[: offset + length]
        return opcode, fin, payload

    def frame(self, seconds: float = 5.0) -> tuple[int, bool, bytes]:
        self.sock.settimeout(timeout(seconds))
        while True:
            parsed = self._parse()
            if parsed is not None:
                return parsed
            chunk = self.sock.recv(262144)
            assert chunk, "the server closed the connection before a whole frame arrived"
            self.buffer += chunk


def with_rsv1(frame: bytes) -> bytes:
    return bytes([frame[0] | 0x40]) + frame[1:]


# ---------------------------------------------------------------------- WebSocket frames


def test_message_over_max_message_size_closes_1009_and_other_clients_still_echo(tmp_path):
    """1. serve max_message_size=1000  2. a bystander connects  3. a 1000-byte message
    echoes  4. one 1001-byte frame, a 3x400-byte fragmented message and a compressed
    5000-byte message (tiny on the wire) each close with 1009  5. the bystander echoes."""
    with serving(limits_app(tmp_path, max_message_size=1000), tmp_path) as server:
        with server.connect() as bystander:
            assert_echoes(bystander)
            with server.connect(compression=None) as exact:
                assert_echoes(exact, "x" * 1000)

            sock, _ = raw_handshake(server.port)
            with sock:
                sock.sendall(masked_frame(0x2, b"\x00" * 1001))
                assert read_close_code(sock) == 1009

            sock, _ = raw_handshake(server.port)
            with sock:
                sock.sendall(masked_frame(0x1, b"a" * 400, fin=False))
                sock.sendall(masked_frame(0x0, b"b" * 400, fin=False))
                sock.sendall(masked_frame(0x0, b"c" * 400, fin=True))
                assert read_close_code(sock) == 1009

            with server.connect(compression="deflate") as zipped:
                assert zipped.protocol.extensions, "permessage-deflate was not negotiated"
                zipped.send("a" * 5000)
                with pytest.raises(ConnectionClosed) as closed:
                    zipped.recv(timeout=timeout(5))
                assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

            assert_echoes(bystander)


def test_a_message_of_empty_fragments_ends_with_1009(tmp_path):
    """1. a client opens a fragmented message and streams empty continuation frames
    (nothing adds to the message's size, so before it never ended, at some 4 µs of the
    worker per frame)  2. each short fragment counts 64 bytes against max_message_size:
    the message is refused with 1009, here after some 16 KiB of frames  3. a bystander
    echoes. A message in 1-byte fragments under the limit still arrives whole."""
    empty = masked_frame(0x0, b"", fin=False, mask=b"\0\0\0\0")
    with serving(limits_app(tmp_path, max_message_size=16384), tmp_path) as server:
        with server.connect() as bystander:
            sock, _ = raw_handshake(server.port)
            with sock:
                sock.sendall(masked_frame(0x2, b"x", fin=False))
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    for _ in range(100):  # 100,000 frames at most; the limit is 256
                        sock.sendall(empty * 1000)
                assert read_close_code(sock) == 1009

            sock, _ = raw_handshake(server.port)
            with sock:
                text = "fragments of one byte"
                sock.sendall(masked_frame(0x1, text[:1].encode(), fin=False))
                for char in text[1:-1]:
                    sock.sendall(masked_frame(0x0, char.encode(), fin=False))
                sock.sendall(masked_frame(0x0, text[-1:].encode()))
                assert FrameReader(sock).frame() == (0x1, True, text.encode())

            assert_echoes(bystander)


PROTOCOL_ERRORS = {
    "unmasked client frame": bytes([0x81, 0x02]) + b"hi",
    "reserved opcode 0x3": masked_frame(0x3, b"x"),
    "reserved control opcode 0xB": masked_frame(0xB, b"x"),
    "fragmented control frame": masked_frame(0x9, b"ping", fin=False),
    "control frame over 125 bytes": masked_frame(0x9, b"p" * 126),
    "RSV1 without an extension": with_rsv1(masked_frame(0x1, b"hi")),
    "RSV2 and RSV3 set": bytes([0x81 | 0x30]) + masked_frame(0x1, b"hi")[1:],
    "continuation with nothing to continue": masked_frame(0x0, b"x"),
    "new message inside a fragmented one": (
        masked_frame(0x1, b"a", fin=False) + masked_frame(0x1, b"b")
    ),
    "close frame with a reserved code": masked_frame(0x8, (1005).to_bytes(2, "big")),
    "close frame with a 1-byte payload": masked_frame(0x8, b"\x03"),
}


def test_protocol_errors_close_1002_and_other_clients_still_echo(tmp_path):
    """1. serve  2. a bystander connects  3. for each protocol error of RFC 6455 a fresh
    raw client sends it  4. each gets close code 1002  5. the bystander echoes."""
    with serving(limits_app(tmp_path), tmp_path) as server, server.connect() as bystander:
        codes = {}
        for name, data in PROTOCOL_ERRORS.items():
            sock, _ = raw_handshake(server.port)
            with sock:
                sock.sendall(data)
                codes[name] = read_close_code(sock)
        assert codes == dict.fromkeys(PROTOCOL_ERRORS, 1002)
        assert_echoes(bystander)


def test_invalid_utf8_closes_1007_in_one_frame_or_fail_fast_across_fragments(tmp_path):
    """1. serve  2. a text frame with invalid UTF-8 closes 1007  3. a fragmented text
    message whose second fragment is invalid gets 1007 before its final fragment is
    sent  4. a close reason with invalid UTF-8 gets 1007  5. a character split across
    two fragments is valid and echoes  6. a bystander still echoes."""
    with serving(limits_app(tmp_path), tmp_path) as server, server.connect() as bystander:
        sock, _ = raw_handshake(server.port)
        with sock:
            sock.sendall(masked_frame(0x1, b"ok \xff\xfe"))
            assert read_close_code(sock) == 1007

        sock, _ = raw_handshake(server.port)
        with sock:
            sock.sendall(masked_frame(0x1, b"hello ", fin=False))
            sock.sendall(masked_frame(0x0, b"\xc3\x28 bad", fin=False))
            # the final fragment is never sent: the close must come without it
            assert read_close_code(sock) == 1007

        sock, _ = raw_handshake(server.port)
        with sock:
            sock.sendall(masked_frame(0x8, (1000).to_bytes(2, "big") + b"\xff"))
            assert read_close_code(sock) == 1007

        sock, leftover = raw_handshake(server.port)
        with sock:
            sock.sendall(masked_frame(0x1, b"caf\xc3", fin=False))
            sock.sendall(masked_frame(0x0, b"\xa9", fin=True))
            assert FrameReader(sock, leftover).frame() == (0x1, True, "café".encode())

        assert_echoes(bystander)


# ---------------------------------------------------------------------- handshakes


STALLED_CLIENTS = {
    "silent after connect": b"",
    "partial request line": b"GET /chat HT",
    "partial upgrade headers": HANDSHAKE[: HANDSHAKE.index(b"Sec-WebSocket-Key")],
}


def test_clients_that_never_finish_their_handshake_get_408_while_others_are_served(tmp_path):
    """1. serve handshake_timeout=0.5  2. open one silent client, one with half a
    request line, one with half the upgrade headers  3. meanwhile a WebSocket client
    connects and echoes  4. each stalled client gets 408 and is closed  5. stats count
    the timeouts and the WebSocket client still echoes."""
    with serving(limits_app(tmp_path, handshake_timeout=0.5), tmp_path) as server:
        stalled = {}
        for name, data in STALLED_CLIENTS.items():
            sock = raw_connect(server.port)
            if data:
                sock.sendall(data)
            stalled[name] = sock
        try:
            with server.connect() as ws:
                assert_echoes(ws, "served meanwhile")
                answers = {name: read_to_eof(sock) for name, sock in stalled.items()}
                statuses = {name: status_of(answer) for name, answer in answers.items()}
                assert statuses == dict.fromkeys(STALLED_CLIENTS, 408)
                assert ask(ws, "cmd:stats")["handshake_timeouts"] >= len(STALLED_CLIENTS)
                assert_echoes(ws)
        finally:
            for sock in stalled.values():
                sock.close()


def test_client_dripping_its_request_byte_by_byte_is_still_dropped(tmp_path):
    """1. serve handshake_timeout=0.5  2. a client sends a never-ending request one byte
    at a time, checking between bytes whether the server answered  3. the server answers
    408 and closes although bytes kept arriving."""
    endless = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 4000
    with serving(limits_app(tmp_path, handshake_timeout=0.5), tmp_path) as server:
        with raw_connect(server.port) as sock:
            for byte in endless:
                readable, _, _ = select.select([sock], [], [], 0.01)
                if readable:
                    break
                try:
                    sock.send(bytes([byte]))
                except OSError:
                    break
            assert status_of(read_to_eof(sock)) == 408


# ---------------------------------------------------------------------- plain HTTP limits


def test_plain_http_without_request_handler_gets_426_and_is_closed(tmp_path):
    """1. serve a WebSocket-only app  2. a plain HTTP GET  3. the answer is 426 with
    Upgrade: websocket and Connection: close  4. the server closes the socket."""
    with serving(limits_app(tmp_path), tmp_path) as server:
        with raw_connect(server.port) as sock:
            sock.sendall(b"GET /page HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            answer = read_to_eof(sock)  # returns only once the server has closed
        assert status_of(answer) == 426
        headers = headers_of(answer)
        assert headers["upgrade"].lower() == "websocket"
        assert headers["connection"].lower() == "close"


def test_oversized_and_malformed_http_requests_get_413_431_and_400(tmp_path):
    """1. serve with a request handler and max_request_size=1000  2. a 1000-byte body is
    echoed  3. a 5000-byte body gets 413, also when chunked  4. 70 KiB of headers get
    431  5. garbage bytes get 400  6. each rejected connection is closed  7. a normal
    request still works."""
    with serving(limits_app(tmp_path, http=True, max_request_size=1000), tmp_path) as server:
        port = server.port

        def post(body: bytes) -> bytes:
            head = f"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n"
            return http_exchange(port, head.encode() + b"Connection: close\r\n\r\n" + body)

        answer = post(b"k" * 1000)
        assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n" + b"k" * 1000)

        assert status_of(post(b"k" * 5000)) == 413

        chunked = b"".join(b"%x\r\n%s\r\n" % (600, b"c" * 600) for _ in range(3)) + b"0\r\n\r\n"
        answer = http_exchange(
            port, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked
        )
        assert status_of(answer) == 413

        big_header = b"X-Big: " + b"h" * (70 * 1024) + b"\r\n"
        answer = http_exchange(port, b"GET / HTTP/1.1\r\nHost: x\r\n" + big_header + b"\r\n")
        assert status_of(answer) == 431

        assert status_of(http_exchange(port, b"\x00\x01\x02 not http at all\r\n\r\n")) == 400

        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout(5))
        try:
            conn.request("GET", "/")
            assert conn.getresponse().read() == b"hello\n"
        finally:
            conn.close()


# ---------------------------------------------------------------------- resource limits


def test_client_that_does_not_read_has_a_bounded_buffer_and_worker_memory(tmp_path):
    """1. serve buffer_output_size=64 KiB  2. an observer learns the worker pid and its
    RSS  3. a raw client with a 4 KiB SO_RCVBUF asks the app to push it 100 MiB and
    reads nothing  4. once the app is done, some pushes returned True, most False, and
    stats count push_over_buffer  5. the worker's RSS grew by less than 50 MB  6. the
    client then reads exactly the accepted messages, intact  7. the observer echoes."""
    total, chunk = 100 * 1024 * 1024, 64 * 1024
    with serving(limits_app(tmp_path, buffer_output_size=chunk), tmp_path) as server:
        with server.connect() as observer:
            pid = ask(observer, "cmd:whoami")["pid"]
            assert pid in {p.pid for p in server.workers()}
            rss_before = psutil.Process(pid).memory_info().rss

            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(timeout(5))
            sock.connect(("127.0.0.1", server.port))
            with sock:
                sock.sendall(HANDSHAKE)
                reader = FrameReader(sock)
                while b"\r\n\r\n" not in reader.buffer:
                    data = sock.recv(4096)
                    assert data, "closed during the handshake"
                    reader.buffer += data
                head, _, rest = bytes(reader.buffer).partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 101"), head
                reader.buffer = bytearray(rest)
                sock.sendall(masked_frame(0x1, f"cmd:flood:{total}:{chunk}".encode()))

                result = wait_until(
                    lambda: (r := ask(observer, "cmd:flood_result"))["done"] and r,
                    seconds=60,
                    interval=0.05,
                    what="the app to finish pushing",
                )
                rss_after = psutil.Process(pid).memory_info().rss
                stats = ask(observer, "cmd:stats")

                assert result["accepted"] + result["refused"] == total // chunk
                assert result["accepted"] >= 1
                assert result["refused"] > result["accepted"]
                assert stats["push_over_buffer"] >= result["refused"]
                assert rss_after - rss_before < 50 * 1024 * 1024

                for _ in range(result["accepted"]):
                    assert reader.frame() == (0x2, True, b"\x00" * chunk)
                assert_echoes(observer)


def test_connections_over_max_connections_get_503_and_the_others_keep_working(tmp_path):
    """1. serve max_connections=5  2. five WebSocket clients connect  3. a sixth TCP
    client gets 503 and is closed  4. the five still echo  5. once one leaves, a new
    client gets in."""
    with (
        serving(limits_app(tmp_path, max_connections=5), tmp_path) as server,
        contextlib.ExitStack() as stack,
    ):
        first = stack.enter_context(server.connect())
        # the readiness probe of the harness may not be gone yet: wait until only this
        # client counts, so that the next four fill the worker exactly
        wait_until(lambda: ask(first, "cmd:stats")["connections"] == 1, what="1 connection")
        clients = [first] + [stack.enter_context(server.connect()) for _ in range(3)]
        with server.connect() as fifth:
            with raw_connect(server.port) as extra:
                answer = read_to_eof(extra)
            assert status_of(answer) == 503
            assert headers_of(answer)["connection"].lower() == "close"

            for n, ws in enumerate([*clients, fifth]):
                assert_echoes(ws, f"client {n} unharmed")
            assert ask(first, "cmd:stats")["refused"] >= 1

        def newcomer():
            try:
                return stack.enter_context(server.connect())
            except InvalidStatus as refused:
                assert refused.response.status_code == 503
            except (InvalidMessage, OSError):
                pass  # refused before the client's request was read
            return None

        assert_echoes(wait_until(newcomer, what="a free slot after a client left"), "newcomer")
        for n, ws in enumerate(clients):
            assert_echoes(ws, f"client {n} still unharmed")


def test_handler_that_raises_is_logged_and_closes_only_its_connection_with_1011(tmp_path):
    """1. serve  2. a bystander and a victim connect  3. the victim's message makes the
    handler raise  4. the victim gets close 1011  5. the log has the traceback and the
    message  6. the bystander echoes, the worker pid is unchanged, a new client is
    served by the same worker."""
    marker = f"handler exploded {uuid.uuid4().hex}"
    with serving(limits_app(tmp_path), tmp_path) as server, server.connect() as bystander:
        pid = ask(bystander, "cmd:whoami")["pid"]
        with server.connect() as victim:
            victim.send(f"cmd:raise:{marker}")
            with pytest.raises(ConnectionClosed) as closed:
                victim.recv(timeout=timeout(5))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011

        server.wait_for_log(f"RuntimeError: {marker}")
        log = server.log()
        assert "Traceback (most recent call last)" in log
        assert log.index("Traceback") < log.index(f"RuntimeError: {marker}")

        assert_echoes(bystander)
        assert ask(bystander, "cmd:whoami")["pid"] == pid
        assert [p.pid for p in server.workers()] == [pid]
        with server.connect() as newcomer:
            assert ask(newcomer, "cmd:whoami")["pid"] == pid


# ---------------------------------------------------------------------- HTTP requests


@pytest.fixture
def http_server(tmp_path):
    with serving(limits_app(tmp_path, http=True), tmp_path) as server:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(5))
        try:
            yield server, conn
        finally:
            conn.close()


def test_http_keep_alive_query_headers_and_body_reach_the_handler(http_server):
    """1. one HTTPConnection  2. GET /info with a query and a mixed-case header  3. a
    POST of 200 KB binary on the same connection  4. both are answered on one TCP
    connection (same session id), the query is parsed, the header is found in any case,
    the body comes back byte for byte."""
    _, conn = http_server
    conn.request("GET", "/info?name=swoolish&empty=&n=1", headers={"X-Test": "MiXeD"})
    response = conn.getresponse()
    assert response.status == 200 and response.getheader("Connection") == "keep-alive"
    info = json.loads(response.read())
    assert info["query"] == {"name": "swoolish", "empty": "", "n": "1"}
    assert info["method"] == "GET" and info["path"] == "/info"
    assert info["x_test_lower"] == info["x_test_upper"] == "MiXeD"
    first_sock = conn.sock

    body = bytes(range(256)) * 800
    conn.request("POST", "/echo", body=body)
    response = conn.getresponse()
    assert response.status == 200 and response.read() == body
    assert conn.sock is first_sock, "the second request needed a new TCP connection"

    conn.request("GET", "/info")
    assert json.loads(conn.getresponse().read())["fd"] == info["fd"]


def test_http_status_headers_and_a_handler_without_end_are_honoured(http_server):
    """1. GET /missing: 404 with the handler's header and body  2. GET /no-end: the
    handler returns without end() and the client still gets its 202 and header  3. a
    coroutine handler answers  4. all on one keep-alive connection."""
    _, conn = http_server
    conn.request("GET", "/missing")
    response = conn.getresponse()
    assert (response.status, response.read()) == (404, b"not found\n")
    assert response.getheader("X-Reason") == "nothing here"

    conn.request("GET", "/no-end")
    response = conn.getresponse()
    assert (response.status, response.read()) == (202, b"")
    assert response.getheader("X-Handled") == "yes"

    conn.request("GET", "/async")
    response = conn.getresponse()
    assert (response.status, response.read()) == (200, b"later\n")


def test_an_end_after_the_handler_returned_is_logged_once(http_server):
    """Swoole apps end a response from a timer: 1. GET /late-end twice: the handler
    returns, the client gets its empty 200 at once  2. the timer's end() sends nothing,
    and the worker says so once, naming the way out."""
    server, conn = http_server
    for _ in range(2):
        conn.request("GET", "/late-end")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"")

    def late_ends() -> list[bool]:
        conn.request("GET", "/late-ends")
        return json.loads(conn.getresponse().read())

    assert wait_until(lambda: len(late_ends()) == 2 and late_ends()) == [False, False]
    server.wait_for_log(r"response\.end\(\) was called after its request handler returned")
    assert server.log().count("was called after its request handler returned") == 1


@pytest.mark.parametrize("path", ["/raise", "/async-raise"])
def test_http_handler_that_raises_gets_500_and_a_logged_traceback(http_server, path):
    """1. GET a path whose handler (plain or coroutine) raises  2. the answer is 500 and
    the connection closes  3. the log has the traceback  4. the next request is served."""
    server, conn = http_server
    conn.request("GET", path)
    response = conn.getresponse()
    assert response.status == 500
    assert response.getheader("Connection") == "close"
    response.read()
    server.wait_for_log("request handler failed on purpose")
    assert "Traceback (most recent call last)" in server.log()

    conn.close()
    conn.request("GET", "/")
    assert conn.getresponse().read() == b"hello\n"


def test_http_head_gets_the_headers_of_get_without_a_body(http_server):
    """1. GET / for reference  2. HEAD / on a raw socket  3. same status and
    Content-Length, and not one body byte before the server closes."""
    server, conn = http_server
    conn.request("GET", "/")
    get = conn.getresponse()
    assert get.read() == b"hello\n"

    answer = http_exchange(server.port, b"HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert status_of(answer) == 200
    assert headers_of(answer)["content-length"] == get.getheader("Content-Length") == "6"
    assert answer.endswith(b"\r\n\r\n") and answer.count(b"\r\n\r\n") == 1


def test_request_offering_an_unsupported_upgrade_is_answered_as_plain_http(http_server):
    """1. a GET offering ``Upgrade: h2c`` (what ``curl --http2`` sends) followed by a
    pipelined GET on the same connection  2. both get their plain HTTP/1.1 answers, in
    order  3. a CONNECT is still refused with 400."""
    server, _ = http_server
    answer = http_exchange(
        server.port,
        b"GET /info?via=h2c HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    assert status_of(answer) == 200
    first, _, second = answer.partition(b"\r\n\r\n")[2].partition(b"HTTP/1.1 ")
    assert json.loads(first)["query"] == {"via": "h2c"}
    assert second.startswith(b"200 ") and second.endswith(b"\r\n\r\nhello\n")

    connect = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
    assert status_of(http_exchange(server.port, connect)) == 400


def test_a_websocket_handshake_over_http_1_0_is_a_plain_request(http_server):
    """RFC 9110 §7.8: an Upgrade in an HTTP/1.0 request is ignored (RFC 6455 §4.1 asks
    HTTP/1.1): 1. a complete WebSocket handshake, but HTTP/1.0  2. no 101: the request
    handler answers it as the plain GET it is, and the connection closes (HTTP/1.0)."""
    server, _ = http_server
    answer = http_exchange(
        server.port,
        b"GET /info HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert status_of(answer) == 200
    assert json.loads(answer.partition(b"\r\n\r\n")[2])["query"] == {}


def test_repeated_connection_and_upgrade_fields_get_answers_not_errors(http_server):
    """1. a keep-alive request repeating ``Connection`` (keep-alive, then close)  2. it
    is answered, and the connection closes, as the lines joined say (RFC 9110 §5.3)
    3. a handshake repeating ``Upgrade: websocket`` gets websockets' refusal of an
    Upgrade that is not exactly "websocket" (426, naming it), not a dropped socket
    4. no traceback in the log; the worker still serves."""
    server, conn = http_server
    answer = http_exchange(
        server.port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\nConnection: close\r\n\r\n",
    )
    assert status_of(answer) == 200
    assert headers_of(answer)["connection"] == "close"
    repeated = HANDSHAKE.replace(b"Upgrade: websocket\r\n", b"Upgrade: websocket\r\n" * 2)
    refusal = http_exchange(server.port, repeated)
    assert status_of(refusal) == 426 and b"websocket, websocket" in refusal
    conn.request("GET", "/")
    assert conn.getresponse().status == 200
    log = server.log()
    assert "Traceback" not in log and "MultipleValuesError" not in log


def read_response(sock: socket.socket) -> bytes:
    """One response with a Content-Length body, read from a connection kept open."""
    sock.settimeout(timeout(5))
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response head: {data!r}"
        data += chunk
    length = int(headers_of(data)["content-length"])
    while len(data.partition(b"\r\n\r\n")[2]) < length:
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole response body: {data!r}"
        data += chunk
    return data


def test_connection_options_decide_keep_alive_as_tokens(http_server):
    """1. one socket: HTTP/1.0 asking keep-alive, then HTTP/1.1 with an option that only
    contains "close" (``x-close-later``), then ``te, close``  2. the first two answers keep
    the connection, the third says close and the server closes (RFC 9112 §9.3, §9.6)
    3. HTTP/1.0 without the option is answered and closed."""
    server, _ = http_server
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\nHost: x\r\nConnection: Keep-Alive\r\n\r\n")
        assert headers_of(read_response(sock))["connection"] == "keep-alive"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-close-later\r\n\r\n")
        assert headers_of(read_response(sock))["connection"] == "keep-alive"
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: te, close\r\n\r\n")
        last = read_to_eof(sock)
        assert status_of(last) == 200 and headers_of(last)["connection"] == "close"
    answer = http_exchange(server.port, b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    assert status_of(answer) == 200 and headers_of(answer)["connection"] == "close"
