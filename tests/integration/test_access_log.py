"""``swoolish serve --access-log``: one line per HTTP request and per WebSocket open and
close, as text or JSON, and none for a connection a reload moves to a new worker."""

from __future__ import annotations

import http.client
import json
import re
import signal

import pytest
from support import ServerProcess, serving, timeout, write_app
from websockets.exceptions import InvalidStatus

APP = """
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("request")
    def on_request(request, response):
        response.status(404 if request.path == "/missing" else 200)
        response.end("who: swoolish")

    @server.on("message")
    def on_message(server, frame):
        server.push(frame.fd, frame.data)
"""

BODY_SIZE = len("who: swoolish")
TEXT_PREFIX = r"^\S+ \S+ \[(\d+)\] INFO swoolish\.access: "


def http_exchange(server: ServerProcess) -> int:
    """Two requests on one keep-alive connection; returns the client's port."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(5))
    try:
        conn.request("GET", "/who?token=secret")
        response = conn.getresponse()
        assert response.status == 200 and response.read() == b"who: swoolish"
        conn.request("HEAD", "/missing")
        response = conn.getresponse()
        assert response.status == 404
        response.read()
        assert conn.sock is not None
        return conn.sock.getsockname()[1]
    finally:
        conn.close()


def websocket_exchange(server: ServerProcess) -> int:
    """Open /chat, echo one message, close with 1000; returns the client's port."""
    with server.connect("/chat") as ws:
        port = ws.local_address[1]
        ws.send("hello")
        assert ws.recv(timeout=timeout(5)) == "hello"
    return port


def stopped_log(server: ServerProcess) -> str:
    """The whole log, once the server has exited: every line is in it."""
    server.signal(signal.SIGTERM)
    assert server.wait_exit() == 0
    return server.log()


def test_text_lines_for_requests_and_websocket(tmp_path):
    target = write_app(tmp_path, APP)
    with serving(f"{target}:server", tmp_path, "--access-log") as server:
        http_port = http_exchange(server)
        ws_port = websocket_exchange(server)
        log = stopped_log(server)

    client = f"127.0.0.1:{http_port}"
    get = re.findall(
        TEXT_PREFIX + re.escape(f'{client} - "GET /who HTTP/1.1" 200 {BODY_SIZE} ') + r"[\d.]+ms$",
        log,
        re.M,
    )
    head = re.findall(
        TEXT_PREFIX + re.escape(f'{client} - "HEAD /missing HTTP/1.1" 404 0 ') + r"[\d.]+ms$",
        log,
        re.M,
    )
    assert len(get) == 1 and len(head) == 1, log
    assert "secret" not in log  # the path is logged without its query string
    ws_client = f"127.0.0.1:{ws_port}"
    opened = re.findall(
        TEXT_PREFIX + re.escape(f'{ws_client} - "WEBSOCKET /chat" open 101') + "$", log, re.M
    )
    closed = re.findall(
        TEXT_PREFIX + re.escape(f'{ws_client} - "WEBSOCKET /chat" close 1000 ') + r"\d+\.\ds$",
        log,
        re.M,
    )
    assert len(opened) == 1 and len(closed) == 1, log
    assert opened[0] != str(server.pid)  # logged by the worker
    assert len(re.findall(r"swoolish\.access:", log)) == 4  # the message made no line


def test_json_records_carry_the_fields(tmp_path):
    target = write_app(tmp_path, APP)
    with serving(f"{target}:server", tmp_path, "--access-log", "--log-format", "json") as server:
        http_port = http_exchange(server)
        ws_port = websocket_exchange(server)
        log = stopped_log(server)

    records = [json.loads(line) for line in log.splitlines()]
    access = [r for r in records if r["logger"] == "swoolish.access"]
    assert [r["event"] for r in access] == ["request", "request", "open", "close"]
    get, head, opened, closed = access
    assert get["message"].startswith(f'127.0.0.1:{http_port} - "GET /who HTTP/1.1" 200 13 ')
    for record, method, path, status, size in (
        (get, "GET", "/who", 200, BODY_SIZE),
        (head, "HEAD", "/missing", 404, 0),
    ):
        assert record["client"] == f"127.0.0.1:{http_port}"
        assert (record["method"], record["path"], record["http_version"]) == (method, path, "1.1")
        assert (record["status"], record["bytes"], record["level"]) == (status, size, "info")
        assert isinstance(record["duration_ms"], float) and record["duration_ms"] >= 0
    for record in (opened, closed):
        assert record["client"] == f"127.0.0.1:{ws_port}"
        assert record["path"] == "/chat"
        assert record["pid"] != server.pid
    assert opened["status"] == 101 and "close_code" not in opened
    assert closed["close_code"] == 1000 and closed["duration_ms"] >= 0
    others = [r for r in records if r["logger"] != "swoolish.access"]
    assert not any("client" in r or "status" in r for r in others)


def test_no_access_line_without_the_flag(tmp_path):
    target = write_app(tmp_path, APP)
    with serving(f"{target}:server", tmp_path) as server:
        http_exchange(server)
        websocket_exchange(server)
        log = stopped_log(server)
    assert "serving" in log
    assert "swoolish.access" not in log
    assert "WEBSOCKET" not in log and '"GET /who' not in log


def test_a_connection_moved_by_a_reload_is_one_open_and_one_close(tmp_path):
    target = write_app(tmp_path, APP)
    with serving(f"{target}:server", tmp_path, "--access-log") as server:
        old_worker = server.workers()[0].pid
        with server.connect("/stay") as ws:
            port = ws.local_address[1]
            ws.send("before")
            assert ws.recv(timeout=timeout(5)) == "before"
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            server.wait_for_log(r"1 moved to the new worker", 20)
            ws.send("after")  # the same connection, served by the new worker
            assert ws.recv(timeout=timeout(5)) == "after"
        log = stopped_log(server)

    client = re.escape(f'127.0.0.1:{port} - "WEBSOCKET /stay"')
    opened = re.findall(TEXT_PREFIX + client + " open 101$", log, re.M)
    closed = re.findall(TEXT_PREFIX + client + r" close (\d+) [\d.]+s$", log, re.M)
    assert opened == [str(old_worker)], log
    assert len(closed) == 1, log
    (close_pid, close_code) = closed[0]
    assert int(close_pid) not in (old_worker, server.pid)  # the new worker closed it
    assert close_code == "1000"


def test_a_refused_handshake_is_a_request_line(tmp_path):
    target = write_app(tmp_path, APP)
    with serving(
        f"{target}:server", tmp_path, "--access-log", "--websocket-origins", "https://a.example"
    ) as server:
        with pytest.raises(InvalidStatus) as refused:
            server.connect("/chat").close()  # no Origin header: 403
        assert refused.value.response.status_code == 403
        log = stopped_log(server)
    lines = re.findall(TEXT_PREFIX + r'(\S+) - "GET /chat HTTP/1.1" 403 \d+ [\d.]+ms$', log, re.M)
    assert len(lines) == 1, log
    assert "WEBSOCKET" not in log  # never opened, so never closed
