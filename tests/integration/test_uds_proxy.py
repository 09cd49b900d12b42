"""A proxy in front: a Unix socket (--uds) and proxy headers (--proxy-headers), served by
real processes to real clients."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import os
import signal
import socket
import stat
from pathlib import Path

import pytest
from support import free_port, run_cli, serving, timeout, wait_until, write_app
from websockets.sync.client import ClientConnection, connect, unix_connect

APP = """
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer()

    def describe(request):
        return {
            "path": request.path,
            "remote_addr": request.remote_addr,
            "scheme": request.scheme,
            "info": server.get_client_info(request.fd),
        }

    @server.on("open")
    def on_open(server, request):
        if request.path == "/who":
            server.push(request.fd, json.dumps(describe(request)))

    @server.on("message")
    def on_message(server, frame):
        command, _, arg = frame.data.partition(":")
        if command == "gen":
            server.push(frame.fd, str(server.generation))
        elif command == "pid":
            server.push(frame.fd, json.dumps({"pid": server.worker_pid, "fd": frame.fd}))
        elif command == "info":
            server.push(frame.fd, json.dumps(server.get_client_info(int(arg or frame.fd))))
        else:
            server.push(frame.fd, frame.data)

    @server.on("request")
    def on_request(request, response):
        response.header("Content-Type", "application/json")
        response.end(json.dumps(describe(request)))
"""

FORWARDED = {"X-Forwarded-For": "6.6.6.6, 198.51.100.7", "X-Forwarded-Proto": "https"}


@pytest.fixture
def app(tmp_path):
    return str(write_app(tmp_path, APP)) + ":server"


def sock_path(tmp_path: Path) -> Path:
    return tmp_path / "swoolish.sock"


# ---------------------------------------------------------------------------- clients


def ws_unix(path: Path, target: str = "/", headers: dict[str, str] | None = None):
    return unix_connect(
        str(path),
        uri=f"ws://localhost{target}",
        additional_headers=headers,
        open_timeout=timeout(5),
        close_timeout=timeout(5),
    )


def ws_tcp(port: int, target: str = "/", headers: dict[str, str] | None = None):
    return connect(
        f"ws://127.0.0.1:{port}{target}",
        additional_headers=headers,
        open_timeout=timeout(5),
        close_timeout=timeout(5),
    )


def ask(ws: ClientConnection, text: str) -> str:
    ws.send(text)
    answer = ws.recv(timeout=timeout(5))
    assert isinstance(answer, str)
    return answer


def http_unix(path: Path, target: str, headers: dict[str, str] | None = None):
    """(status, JSON body) of a GET over the Unix socket at ``path``."""
    lines = [f"GET {target} HTTP/1.1", "Host: localhost", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout(5))
        sock.connect(str(path))
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def http_tcp(port: int, target: str, headers: dict[str, str] | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout(5))
    try:
        conn.request("GET", target, headers=headers or {})
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


# ---------------------------------------------------------------------------- Unix socket


def test_websocket_and_http_over_a_unix_socket(tmp_path, app):
    """1. serve --uds PATH  2. the socket file is there, mode 0660  3. a WebSocket echoes
    over it, and a plain HTTP request is answered; no peer address: remote_addr ""
    4. the log and `swoolish status` show unix:PATH  5. after a stop, the file is gone."""
    path = sock_path(tmp_path)
    pid_file = tmp_path / "pid"
    with serving(app, tmp_path, "--pid-file", str(pid_file), uds=path) as server:
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o660
        with ws_unix(path, "/who") as ws:
            who = json.loads(ws.recv(timeout=timeout(5)))
            assert (who["remote_addr"], who["scheme"], who["info"]["remote_ip"]) == ("", "ws", "")
            assert ask(ws, "over a unix socket") == "over a unix socket"
        status, page = http_unix(path, "/page?x=1")
        assert status == 200 and page["path"] == "/page" and page["scheme"] == "http"
        assert f"listening on unix:{path} with 1 worker" in server.log()
        shown = run_cli("status", "--pid-file", str(pid_file))
        assert f"on unix:{path}" in shown.stdout, shown.stdout + shown.stderr
        server.signal(signal.SIGTERM)
        assert server.wait_exit() == 0
        assert not path.exists(), "the master removes its socket file"


def test_nothing_listens_on_the_tcp_port_with_uds(tmp_path, app):
    path = sock_path(tmp_path)
    with serving(app, tmp_path, uds=path) as server:
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", server.port), timeout=1).close()


def test_a_reload_moves_a_websocket_on_a_unix_socket(tmp_path, app):
    """1. a WebSocket over the Unix socket, from a client a trusted proxy names
    2. SIGUSR1  3. the hand-off moves it (the descriptor passing does not care about
    the family): the same connection is served by generation 2 without a close, and
    still shows the client its handshake named."""
    path = sock_path(tmp_path)
    options = ("--proxy-headers", "--forwarded-allow-ips", "unix")
    with serving(app, tmp_path, *options, uds=path) as server:
        with ws_unix(path, "/", FORWARDED) as ws:
            assert ask(ws, "gen") == "1"
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"1 moved to the new worker .* 0 fell back", seconds=15)
            assert ask(ws, "gen") == "2"
            assert ask(ws, "still open") == "still open"
            assert json.loads(ask(ws, "info"))["remote_ip"] == "198.51.100.7"
        assert path.exists(), "a reload keeps the socket file"


def test_a_stale_socket_file_is_replaced(tmp_path, app):
    path = sock_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stale:
        stale.bind(str(path))  # the file stays; nothing listens on it once closed
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    with serving(app, tmp_path, uds=path):
        with ws_unix(path) as ws:
            assert ask(ws, "fresh") == "fresh"


def refused(app: str, path: Path) -> list[str]:
    result = run_cli("serve", app, "--port", str(free_port()), "--uds", str(path))
    assert result.returncode == 2, result.stderr
    return result.stderr.splitlines()


def test_a_socket_something_listens_on_is_refused(tmp_path, app):
    path = sock_path(tmp_path)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        assert refused(app, path) == [
            f"swoolish: cannot listen on unix:{path}: something listens on it already; "
            "stop it or choose another --uds"
        ]
        assert stat.S_ISSOCK(os.lstat(path).st_mode), "another server's file is left alone"


def test_a_file_that_is_no_socket_is_refused_and_kept(tmp_path, app):
    path = sock_path(tmp_path)
    path.write_text("precious")
    assert refused(app, path) == [
        f"swoolish: cannot listen on unix:{path}: a file that is not a socket is there; "
        "remove it or choose another --uds"
    ]
    assert path.read_text() == "precious"


def test_a_missing_directory_is_refused(tmp_path, app):
    path = tmp_path / "nowhere" / "s.sock"
    assert refused(app, path) == [
        f"swoolish: cannot listen on unix:{path}: the directory {path.parent} does not exist"
    ]


# ---------------------------------------------------------------------------- proxy headers


def test_a_trusted_proxy_names_the_client(tmp_path, app):
    """--proxy-headers, the peer (127.0.0.1) trusted by default: the HTTP request, the
    WebSocket handshake and get_client_info() all show the right-most untrusted
    X-Forwarded-For entry and X-Forwarded-Proto's scheme."""
    with serving(app, tmp_path, "--proxy-headers") as server:
        status, page = http_tcp(server.port, "/page", FORWARDED)
        assert status == 200
        assert (page["remote_addr"], page["scheme"]) == ("198.51.100.7", "https")
        assert page["info"]["remote_ip"] == "198.51.100.7"
        with ws_tcp(server.port, "/who", FORWARDED) as ws:
            who = json.loads(ws.recv(timeout=timeout(5)))
            assert (who["remote_addr"], who["scheme"]) == ("198.51.100.7", "wss")
            info = json.loads(ask(ws, "info"))
            assert (info["remote_ip"], info["remote_port"]) == ("198.51.100.7", 0)
        status, page = http_tcp(server.port, "/page")  # no headers: the peer itself
        assert (page["remote_addr"], page["scheme"]) == ("127.0.0.1", "http")


def test_another_worker_sees_the_forwarded_address(tmp_path, app):
    """The session table carries the client a trusted proxy named: a WebSocket on one
    worker reads another worker's session with get_client_info()."""
    with serving(app, tmp_path, "--proxy-headers", workers=2) as server:
        clients: dict[int, tuple[str, int]] = {}  # worker pid -> (forwarded address, fd)
        with contextlib.ExitStack() as stack:
            first: list[ClientConnection] = []  # the first WebSocket on each worker
            numbers = itertools.count(1)

            def two_workers() -> bool:
                addr = f"198.51.100.{next(numbers)}"  # each client its own address
                ws = stack.enter_context(ws_tcp(server.port, "/", {"X-Forwarded-For": addr}))
                seen = json.loads(ask(ws, "pid"))
                if seen["pid"] not in clients:
                    clients[seen["pid"]] = (addr, seen["fd"])
                    first.append(ws)
                return len(clients) == 2

            wait_until(two_workers, what="WebSockets on both workers")
            (_, _), (other_addr, other_fd) = clients.values()
            info = json.loads(ask(first[0], f"info:{other_fd}"))
            assert info["remote"] is True, "answered from the session table"
            assert info["remote_ip"] == other_addr


def test_an_untrusted_peer_cannot_forge_its_address(tmp_path, app):
    """The attack: a client sends X-Forwarded-For itself. Its peer (127.0.0.1) is not in
    --forwarded-allow-ips, so the headers are ignored everywhere."""
    with serving(app, tmp_path, "--proxy-headers", "--forwarded-allow-ips", "10.1.2.3") as server:
        _, page = http_tcp(server.port, "/page", FORWARDED)
        assert (page["remote_addr"], page["scheme"]) == ("127.0.0.1", "http")
        assert page["info"]["remote_ip"] == "127.0.0.1"
        with ws_tcp(server.port, "/who", FORWARDED) as ws:
            who = json.loads(ws.recv(timeout=timeout(5)))
            assert (who["remote_addr"], who["scheme"]) == ("127.0.0.1", "ws")
            assert json.loads(ask(ws, "info"))["remote_ip"] == "127.0.0.1"


def test_proxy_headers_are_off_by_default(tmp_path, app):
    with serving(app, tmp_path) as server:
        _, page = http_tcp(server.port, "/page", FORWARDED)
        assert (page["remote_addr"], page["scheme"]) == ("127.0.0.1", "http")


def test_a_proxy_on_the_unix_socket(tmp_path, app):
    """'unix' in --forwarded-allow-ips trusts the Unix socket's peers (the proxy): the
    app sees the client it names, over HTTP and WebSocket."""
    path = sock_path(tmp_path)
    options = ("--proxy-headers", "--forwarded-allow-ips", "unix")
    with serving(app, tmp_path, *options, uds=path):
        _, page = http_unix(path, "/page", FORWARDED)
        assert (page["remote_addr"], page["scheme"]) == ("198.51.100.7", "https")
        with ws_unix(path, "/who", FORWARDED) as ws:
            who = json.loads(ws.recv(timeout=timeout(5)))
            assert (who["remote_addr"], who["scheme"]) == ("198.51.100.7", "wss")
            assert json.loads(ask(ws, "info"))["remote_ip"] == "198.51.100.7"


def test_a_unix_socket_peer_is_not_trusted_unless_listed(tmp_path, app):
    path = sock_path(tmp_path)
    with serving(app, tmp_path, "--proxy-headers", uds=path):  # default: loopback only
        _, page = http_unix(path, "/page", FORWARDED)
        assert (page["remote_addr"], page["scheme"]) == ("", "http")


def test_a_bad_forwarded_allow_ips_entry_stops_the_start(tmp_path, app):
    result = run_cli("serve", app, "--port", "0", "--forwarded-allow-ips", "10.0.0.0/8,proxy")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "swoolish: forwarded_allow_ips: 'proxy' is not an address, a network such as "
        "10.0.0.0/8 (no host bits set), 'unix' or '*'"
    ]
