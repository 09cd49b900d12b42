"""HTTP/1.1 framing and request rules (RFC 9110, RFC 9112) against a real `swoolish serve`.

The app below misbehaves on cue: a Content-Length that is not its body's, a body on a
204 or 304, a Transfer-Encoding of its own. Clients are real (``http.client``, raw
sockets where the exact bytes matter) and keep their connection, so that a response
framed wrongly shows up as the next request getting the wrong answer.
"""

from __future__ import annotations

import http.client
import select
import socket
import time

import pytest
from support import (
    masked_frame,
    raw_connect,
    read_to_eof,
    server_has_read_everything,
    serving,
    timeout,
    upgrade_with,
    wait_until,
    write_app,
)

APP = """
import asyncio

from swoolish import WebSocketServer

server = WebSocketServer(**SETTINGS)


@server.on("request")
def on_request(request, response):
    path = request.path
    if path == "/wrong-length":  # the length of the str, not of its UTF-8 bytes
        text = "h\\u00e9llo w\\u00f6rld"
        response.header("Content-Length", str(len(text)))
        response.end(text)
    elif path == "/right-length":
        text = "h\\u00e9llo w\\u00f6rld"
        response.header("Content-Length", str(len(text.encode())))
        response.end(text)
    elif path == "/announced":  # HEAD: the length a GET would get, and no body
        response.header("Content-Length", "1234")
        response.end()
    elif path in ("/204", "/304"):
        response.status(int(path[1:]))
        response.end("should not be sent")
    elif path == "/te":
        response.header("Transfer-Encoding", "chunked")
        response.end("hello")
    elif path == "/slow":
        return answer_later(response)
    elif path == "/connection-close":  # Swoole apps close a connection this way
        response.header("Connection", "close")
        response.end("bye\\n")
    elif path == "/connection-keep-alive":
        response.header("Connection", "keep-alive")
        response.end("kept\\n")
    else:
        response.end(f"{request.method} {path} {len(request.body)}\\n")
    return None


@server.on("handshake")
def on_handshake(request, response):
    if request.path == "/app-fields":  # fields the server's 101 carries, and one of its own
        response.header("Connection", "Upgrade")
        response.header("Upgrade", "websocket")
        response.header("Content-Length", "0")
        response.header("X-App", "yes")


async def answer_later(response):
    await asyncio.sleep(0.3)
    response.end("slow\\n")
"""


def app(tmp_path, **settings) -> str:
    return f"{write_app(tmp_path, APP.replace('**SETTINGS', f'**{settings!r}'))}:server"


@pytest.fixture
def server(tmp_path):
    with serving(app(tmp_path, max_request_size=10_000), tmp_path) as server:
        yield server


def heads_and_bodies(answer: bytes) -> list[bytes]:
    """The parts of ``answer`` between blank lines: a head, then its body if any."""
    return answer.split(b"\r\n\r\n")


def read_until(sock: socket.socket, end: bytes) -> bytes:
    """What the server sends up to and including ``end`` (fails if it closes first, or
    sends nothing for 5 s)."""
    sock.settimeout(timeout(5))
    data = b""
    while end not in data:
        chunk = sock.recv(65536)
        assert chunk, f"closed before {end!r}: {data!r}"
        data += chunk
    return data


def fields(head: bytes) -> dict[str, str]:
    lines = head.decode("latin-1").split("\r\n")[1:]
    return {name.lower(): value.strip() for name, _, value in (h.partition(":") for h in lines)}


# ---------------------------------------------------------------------- response framing


def test_content_length_unlike_the_body_gets_500_and_the_connection_stays_in_step(server):
    """1. one keep-alive HTTPConnection  2. GET a handler that sets Content-Length to the
    length of a non-ASCII str (11) and sends its 13 UTF-8 bytes  3. the client gets a
    500 whose framing is the server's, the log says why  4. the next request on the same
    TCP connection gets its own answer (before, it read the last 2 bytes of the body as
    its status line)  5. a Content-Length that is right is sent as the handler set it."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(5))
    try:
        conn.request("GET", "/wrong-length")
        response = conn.getresponse()
        assert (response.status, response.read()) == (500, b"Internal Server Error\n")
        assert response.getheader("Connection") == "keep-alive"
        first_sock = conn.sock

        conn.request("GET", "/next")
        response = conn.getresponse()
        assert (response.status, response.read()) == (200, b"GET /next 0\n")
        assert conn.sock is first_sock, "the connection was not kept"

        conn.request("GET", "/right-length")
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Length") == "13"
        assert response.read() == "héllo wörld".encode()
    finally:
        conn.close()
    server.wait_for_log(r"set Content-Length: 11, but its body is 13 bytes")


def test_head_may_announce_the_length_of_a_get_without_a_body(server):
    """1. HEAD of a handler that sets Content-Length: 1234 and ends with no body, then a
    pipelined GET /next  2. the HEAD answer carries 1234 and no body  3. the GET gets its
    own answer right after the HEAD's head."""
    with raw_connect(server.port) as sock:
        sock.sendall(
            b"HEAD /announced HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, second, body = heads_and_bodies(read_to_eof(sock))
    assert head.startswith(b"HTTP/1.1 200 ") and fields(head)["content-length"] == "1234"
    assert second.startswith(b"HTTP/1.1 200 ") and body == b"GET /next 0\n"


@pytest.mark.parametrize("status", [204, 304])
def test_204_and_304_go_without_body_or_content_length(server, status):
    """1. a handler answers ``status`` with a body (18 bytes); a GET /next is pipelined
    behind it on the same socket  2. the answer is a head alone, without Content-Length
    or Content-Type (RFC 9110 §6.4.1, §8.6)  3. the next bytes are the GET's own
    answer  4. one warning in the log says the body was dropped  5. http.client on a
    keep-alive connection gets both answers too."""
    with raw_connect(server.port) as sock:
        sock.sendall(
            f"GET /{status} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        first, second, body = heads_and_bodies(read_to_eof(sock))
    assert first.startswith(f"HTTP/1.1 {status} ".encode())
    assert "content-length" not in fields(first) and "content-type" not in fields(first)
    assert second.startswith(b"HTTP/1.1 200 ") and body == b"GET /next 0\n"
    server.wait_for_log(rf"WARNING .*a {status} response has no body")

    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(5))
    try:
        conn.request("GET", f"/{status}")
        response = conn.getresponse()
        assert (response.status, response.read()) == (status, b"")
        conn.request("GET", "/next")
        assert conn.getresponse().read() == b"GET /next 0\n"
    finally:
        conn.close()


def test_transfer_encoding_from_the_app_is_refused_at_the_call(server):
    """1. a handler calls ``response.header("Transfer-Encoding", "chunked")``  2. the
    call raises ValueError naming the reason, the handler fails: the client gets a 500
    framed by Content-Length, and no Transfer-Encoding (before: both, with a body that
    was not chunked)  3. the worker serves the next client."""
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET /te HTTP/1.1\r\nHost: x\r\n\r\n")
        head, body = heads_and_bodies(read_to_eof(sock))
    assert head.startswith(b"HTTP/1.1 500 ") and "transfer-encoding" not in fields(head)
    assert int(fields(head)["content-length"]) == len(body)
    server.wait_for_log(r"ValueError: invalid HTTP header 'Transfer-Encoding'.*frames every")
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert read_to_eof(sock).endswith(b"\r\n\r\nGET /next 0\n")


def field_lines(head: bytes, name: str) -> list[bytes]:
    """The lines of ``head`` that carry the field ``name`` (however spelled)."""
    return [line for line in head.split(b"\r\n") if line.lower().startswith(name + b":")]


def test_connection_close_from_the_app_is_honoured_and_sent_once(server):
    """1. a keep-alive request to a handler that sets ``Connection: close``, then a
    pipelined request  2. the answer carries one Connection field, ``close`` (before:
    the app's and the server's ``keep-alive``, both), and the server closes the
    connection after it: the pipelined request is not answered."""
    with raw_connect(server.port) as sock:
        sock.sendall(
            b"GET /connection-close HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        head, body = heads_and_bodies(read_to_eof(sock))
    assert field_lines(head, b"connection") == [b"Connection: close"]
    assert body == b"bye\n"


def test_connection_keep_alive_from_the_app_is_not_sent_twice(server):
    """1. a handler sets ``Connection: keep-alive`` on a keep-alive connection  2. the
    answer has one Connection field, and the connection serves the next request."""
    with raw_connect(server.port) as sock:
        sock.sendall(
            b"GET /connection-keep-alive HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /next HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        head, first_body_and_second_head, body = heads_and_bodies(read_to_eof(sock))
    assert field_lines(head, b"connection") == [b"Connection: keep-alive"]
    assert first_body_and_second_head.startswith(b"kept\nHTTP/1.1 200 ")
    assert body == b"GET /next 0\n"


def test_handshake_handler_fields_the_101_carries_itself_are_not_repeated(server):
    """1. a handshake handler sets Connection, Upgrade and Content-Length (which a 101
    never has), and a field of its own  2. the 101 carries one Connection and one
    Upgrade, the server's, no Content-Length, and the app's own field  3. one warning
    per field name in the log  4. the session works: a ping is answered."""
    with raw_connect(server.port) as sock:
        head, rest = upgrade_with(sock, "/app-fields")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert field_lines(head, b"connection") == [b"Connection: Upgrade"]
        assert field_lines(head, b"upgrade") == [b"Upgrade: websocket"]
        assert field_lines(head, b"content-length") == []
        assert field_lines(head, b"x-app") == [b"X-App: yes"]
        sock.sendall(masked_frame(0x9, b"hi"))
        assert rest + read_until(sock, b"hi") == b"\x8a\x02hi"
    server.wait_for_log(r"WARNING .*handshake handler set Upgrade")
    server.wait_for_log(r"WARNING .*handshake handler set Content-Length")


# ---------------------------------------------------------------------- Expect: 100-continue

CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def upload_head(length: int, version: str = "1.1") -> bytes:
    return (
        f"POST /upload HTTP/{version}\r\nHost: x\r\nContent-Length: {length}\r\n"
        "Expect: 100-continue\r\nConnection: close\r\n\r\n"
    ).encode()


def test_expect_100_continue_is_answered_before_the_body_is_sent(server):
    """1. a raw client sends only the head of a 5,000-byte POST with ``Expect:
    100-continue`` and waits, as curl and aiohttp do  2. it gets ``100 Continue``
    (before: nothing, until a 408 at handshake_timeout)  3. it sends the body and gets
    the final answer, which saw the whole body."""
    with raw_connect(server.port) as sock:
        sock.sendall(upload_head(5000))
        assert read_until(sock, b"\r\n\r\n") == CONTINUE
        sock.sendall(b"x" * 5000)
        final = read_to_eof(sock)
    assert final.startswith(b"HTTP/1.1 200 ") and final.endswith(b"POST /upload 5000\n")


def test_expect_with_a_body_over_max_request_size_gets_413_without_sending_it(server):
    """1. the head of a POST of 100 MB (max_request_size is 10,000) with ``Expect:
    100-continue``, and no body  2. 413 at once, and the server closes: the client
    need not send the 100 MB to learn it (before: nothing, until handshake_timeout)."""
    with raw_connect(server.port) as sock:
        sock.sendall(upload_head(100_000_000))
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 413 ") and CONTINUE not in answer


def test_100_continue_comes_after_the_answers_of_requests_before_it(server):
    """1. a GET to a coroutine handler that answers after 0.3 s, and behind it on the
    same socket the head of a POST with ``Expect: 100-continue``  2. the GET's answer
    comes first, then ``100 Continue`` (an interim answer must not cut into another
    response)  3. the body, then the POST's answer."""
    with raw_connect(server.port) as sock:
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n" + upload_head(10))
        got = read_until(sock, CONTINUE)
        assert got.startswith(b"HTTP/1.1 200 ") and got.endswith(b"\r\n\r\nslow\n" + CONTINUE)
        sock.sendall(b"y" * 10)
        assert read_to_eof(sock).endswith(b"POST /upload 10\n")


def test_expect_of_an_http_1_0_request_is_ignored(server):
    """RFC 9110 §10.1.1: an HTTP/1.0 client knows no 100. 1. its head with ``Expect:
    100-continue``  2. once the worker has read it, the body  3. the only answer is
    the final one."""
    with raw_connect(server.port) as sock:
        sock.sendall(upload_head(5, "1.0"))
        wait_until(lambda: server_has_read_everything(server.port, sock), what="head read")
        sock.sendall(b"12345")
        answer = read_to_eof(sock)
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"POST /upload 5\n")


# ---------------------------------------------------------------------- a request still arriving


def trickle(sock: socket.socket, start: bytes, seconds: float = 15.0) -> bytes:
    """Send ``start``, then one more header byte whenever the server has sent nothing
    for 0.2 s (a client still sending, slowly); return what the server sent until it
    closed."""
    sock.sendall(start)
    data = b""
    deadline = time.monotonic() + timeout(seconds)
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0.2)[0]:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return data
            if not chunk:
                return data
            data += chunk
        else:
            try:
                sock.sendall(b"y")
            except OSError:
                return data
    raise AssertionError(f"still open after {seconds} s: {data!r}")


@pytest.mark.parametrize("first", ["/a", "/slow"])
def test_request_arriving_behind_an_answered_one_gets_408_at_handshake_timeout(tmp_path, first):
    """keepalive_timeout 0.5 s, handshake_timeout 2 s. 1. one write: a GET (answered
    at once, or by a coroutine after 0.3 s), then the start of a second GET  2. the
    second's header line goes on, one byte at a time  3. the first is answered, and
    the second gets 408 when its time is up, as a lone slow request does (before: the
    connection was closed without a word at keepalive_timeout, as if idle)."""
    target = app(tmp_path, keepalive_timeout=0.5, handshake_timeout=2.0)
    with serving(target, tmp_path) as server, raw_connect(server.port) as sock:
        answer = trickle(
            sock,
            f"GET {first} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            + b"GET /b HTTP/1.1\r\nHost: x\r\nX-Slow: ",
        )
    answered, _, rest = answer.partition(b"\r\n\r\n")
    assert answered.startswith(b"HTTP/1.1 200 ")
    assert b"\nHTTP/1.1 408 Request Timeout\r\n" in rest, answer
