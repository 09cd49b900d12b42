"""TLS (--ssl-certfile): wss:// and https:// on real processes, real clients, real files.

Certificates come from ``trustme`` (a throw-away CA) written into the test's directory.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
import trustme
from support import (
    free_port,
    masked_frame,
    next_frame,
    read_server_frame,
    run_cli,
    serving,
    tcp_row,
    tcp_rows,
    timeout,
    upgrade,
    wait_until,
    write_app,
)
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

APP = """
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer()

    def describe(request):
        return json.dumps({
            "path": request.path,
            "remote_addr": request.remote_addr,
            "scheme": request.scheme,
            "gen": server.generation,
        })

    @server.on("open")
    def on_open(server, request):
        if request.path == "/who":
            server.push(request.fd, describe(request))

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "gen":
            server.push(frame.fd, str(server.generation))
        elif frame.data == "big":
            server.push(frame.fd, bytes(1 << 20))
        elif frame.data == "broadcast":
            server.broadcast("x" * 100)
        elif frame.data == "sessions":
            server.push(frame.fd, str(len(list(server.connections))))
        else:
            server.push(frame.fd, frame.data)

    @server.on("request")
    def on_request(request, response):
        response.header("Content-Type", "application/json")
        response.end(describe(request))
"""


class Certs:
    """A CA and a server certificate for 127.0.0.1, written to files a server reads."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.cert = directory / "server.pem"
        self.key = directory / "server.key"
        self.ca_file = directory / "ca.pem"
        self.issue()

    def issue(self) -> None:
        """A new CA and a new server certificate, written over the same paths."""
        self.ca = trustme.CA()
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.cert))
        leaf.private_key_pem.write_to_path(str(self.key))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.der = ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode())

    def options(self) -> tuple[str, ...]:
        return ("--ssl-certfile", str(self.cert), "--ssl-keyfile", str(self.key))

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def certs(tmp_path):
    return Certs(tmp_path)


@pytest.fixture
def app(tmp_path):
    return str(write_app(tmp_path, APP)) + ":server"


def wss(server, certs, path="/", **kwargs):
    return connect(
        f"wss://127.0.0.1:{server.port}{path}",
        ssl=certs.client_context(),
        open_timeout=timeout(5),
        close_timeout=timeout(5),
        **kwargs,
    )


def tls_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout(5))
    return context.wrap_socket(raw, server_hostname="127.0.0.1")


def test_wss_echo_and_https_answer(tmp_path, certs, app):
    """1. serve with --ssl-certfile/--ssl-keyfile  2. a websockets client trusting the CA
    echoes over wss://, and the open handler sees scheme wss  3. curl --cacert gets an
    HTTP answer over https:// that says https  4. the log says the master serves TLS."""
    with serving(app, tmp_path, *certs.options()) as server:
        with wss(server, certs, "/who") as ws:
            who = json.loads(ws.recv(timeout=timeout(5)))
            assert who["scheme"] == "wss" and who["remote_addr"] == "127.0.0.1"
            ws.send("hello over TLS")
            assert ws.recv(timeout=timeout(5)) == "hello over TLS"
        answer = subprocess.run(
            [
                "/usr/bin/curl",
                "-sS",
                "--cacert",
                str(certs.ca_file),
                f"https://127.0.0.1:{server.port}/page",
            ],
            capture_output=True,
            text=True,
            timeout=timeout(15),
        )
        assert answer.returncode == 0, answer.stderr
        page = json.loads(answer.stdout)
        assert page == {"path": "/page", "remote_addr": "127.0.0.1", "scheme": "https", "gen": 1}
        assert "listening on 127.0.0.1:" in server.log() and "(TLS)" in server.log()


def test_alpn_is_http11(tmp_path, certs, app):
    """A client offering h2 and http/1.1 gets http/1.1 (the server offers nothing else)."""
    with serving(app, tmp_path, *certs.options()) as server:
        context = certs.client_context()
        context.set_alpn_protocols(["h2", "http/1.1"])
        with tls_socket(server.port, context) as sock:
            assert sock.selected_alpn_protocol() == "http/1.1"
            assert sock.version() in ("TLSv1.2", "TLSv1.3")


def test_plain_http_on_the_tls_port_gets_no_answer(tmp_path, certs, app):
    """A client speaking plain HTTP to the TLS port is not served (no HTTP answer)."""
    with serving(app, tmp_path, *certs.options()) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout(5)) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            try:
                while chunk := sock.recv(4096):
                    received += chunk
            except ConnectionResetError:
                pass
            assert not received.startswith(b"HTTP/")
        with wss(server, certs) as ws:  # and the worker still serves TLS clients
            ws.send("still here")
            assert ws.recv(timeout=timeout(5)) == "still here"


def test_a_client_that_never_starts_tls_is_dropped(tmp_path, certs, app):
    """The TLS handshake has handshake_timeout too: a silent client is disconnected."""
    with serving(app, tmp_path, *certs.options(), "--handshake-timeout", "0.5") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout(10)) as sock:
            try:
                assert sock.recv(4096) == b""  # the server hung up, having sent nothing
            except ConnectionResetError:
                pass


@pytest.mark.parametrize(
    ("files", "reason"),
    [
        ("missing", "No such file or directory"),
        ("garbage", "no PEM certificate chain with an unencrypted private key found"),
        ("mismatch", "the private key does not match the certificate"),
    ],
)
def test_a_certificate_that_does_not_load_stops_the_start(tmp_path, certs, app, files, reason):
    """A bad certificate: exit status 2 and one line on stderr, before anything serves."""
    cert, key = certs.cert, certs.key
    if files == "missing":
        cert = tmp_path / "nowhere.pem"
    elif files == "garbage":
        cert.write_text("not a certificate\n")
    else:
        other = trustme.CA().issue_cert("127.0.0.1")
        other.private_key_pem.write_to_path(str(key))
    port = free_port()
    result = run_cli(
        "serve", app, "--port", str(port), "--ssl-certfile", str(cert), "--ssl-keyfile", str(key)
    )
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"swoolish: cannot load TLS certificate {cert}"), lines[0]
    assert lines[0].endswith(reason), lines[0]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_client_cert_options_without_what_they_need_stop_the_start(tmp_path, certs, app):
    result = run_cli("serve", app, "--port", "0", *certs.options(), "--ssl-client-cert", "required")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "swoolish: ssl_client_cert=required needs ssl_ca_file (--ssl-ca-certs): the CA "
        "bundle client certificates are verified against"
    ]


def test_reload_closes_a_tls_websocket_once_with_1012(tmp_path, certs, app):
    """1. a wss client is connected  2. SIGUSR1  3. its connection cannot move (TLS state
    lives in the old worker): it gets exactly one close frame, 1012, and the drain counts
    it as fell back ('TLS')  4. the client reconnects and is served by generation 2."""
    with serving(app, tmp_path, *certs.options()) as server:
        with tls_socket(server.port, certs.client_context()) as sock:
            rest = upgrade(sock)  # a raw client sees every frame the server sends
            server.signal(signal.SIGUSR1)
            assert _close_codes(sock, rest) == [1012]
        server.wait_for_log(
            r"0 moved to the new worker .* 1 fell back to a 1012 close \{'TLS': 1\}"
        )
        with wss(server, certs) as ws:
            ws.send("gen")
            assert ws.recv(timeout=timeout(5)) == "2"


def test_reload_close_seen_by_a_websockets_client(tmp_path, certs, app):
    """The same as a library client sees it: ConnectionClosed with code 1012, once."""
    with serving(app, tmp_path, *certs.options()) as server:
        with wss(server, certs) as ws:
            ws.send("gen")
            assert ws.recv(timeout=timeout(5)) == "1"
            server.signal(signal.SIGUSR1)
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=timeout(15))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
        wait_until(lambda: "reload to generation 2 complete" in server.log(), what="reload")
        with wss(server, certs) as ws:
            ws.send("gen")
            assert ws.recv(timeout=timeout(5)) == "2"


def test_a_renewed_certificate_is_served_after_a_reload(tmp_path, certs, app):
    """1. serve certificate A  2. write certificate B (another CA, another serial) over
    the same files  3. before the reload new connections still get A  4. reload --wait
    5. new connections get B, and B's CA verifies them."""
    with serving(app, tmp_path, *certs.options(), "--pid-file", str(tmp_path / "pid")) as server:
        first = certs.der
        assert _served_certificate(server.port) == first
        certs.issue()
        assert certs.der != first
        assert _served_certificate(server.port) == first, "read again only by new workers"
        result = run_cli("reload", "--wait", "--pid-file", str(tmp_path / "pid"))
        assert result.returncode == 0, result.stdout + result.stderr
        assert _served_certificate(server.port) == certs.der
        with wss(server, certs) as ws:  # trusting only the new CA
            ws.send("renewed")
            assert ws.recv(timeout=timeout(5)) == "renewed"


def test_a_renewed_certificate_that_does_not_load_rolls_the_reload_back(tmp_path, certs, app):
    """A broken renewal: the new workers fail at boot, the reload is rolled back, and the
    old workers go on serving the old certificate."""
    with serving(app, tmp_path, *certs.options(), "--pid-file", str(tmp_path / "pid")) as server:
        first = certs.der
        certs.key.write_text("broken\n")
        result = run_cli("reload", "--wait", "--pid-file", str(tmp_path / "pid"))
        assert result.returncode == 1, result.stdout + result.stderr
        assert "cannot load TLS certificate" in server.log()
        assert "cannot load TLS certificate" in result.stdout, "the reload's result says why"
        assert _served_certificate(server.port) == first


class TestClientCertificates:
    """--ssl-ca-certs with --ssl-client-cert required (and optional)."""

    def serve(self, tmp_path, certs, app, mode):
        options = (*certs.options(), "--ssl-ca-certs", str(certs.ca_file))
        return serving(app, tmp_path, *options, "--ssl-client-cert", mode)

    def test_required_refuses_a_client_without_a_certificate(self, tmp_path, certs, app):
        with self.serve(tmp_path, certs, app, "required") as server:
            assert _https_get(server.port, certs.client_context()) is None

    def test_required_refuses_a_certificate_of_another_ca(self, tmp_path, certs, app):
        with self.serve(tmp_path, certs, app, "required") as server:
            context = certs.client_context()
            trustme.CA().issue_cert("intruder@example.com").configure_cert(context)
            assert _https_get(server.port, context) is None

    def test_required_serves_a_client_with_a_certificate_of_the_ca(self, tmp_path, certs, app):
        with self.serve(tmp_path, certs, app, "required") as server:
            context = certs.client_context()
            certs.ca.issue_cert("client@example.com").configure_cert(context)
            answer = _https_get(server.port, context)
            assert answer is not None and answer.startswith(b"HTTP/1.1 200 ")
            with connect(
                f"wss://127.0.0.1:{server.port}/",
                ssl=context,
                open_timeout=timeout(5),
                close_timeout=timeout(5),
            ) as ws:
                ws.send("with a certificate")
                assert ws.recv(timeout=timeout(5)) == "with a certificate"

    def test_optional_serves_clients_with_and_without(self, tmp_path, certs, app):
        with self.serve(tmp_path, certs, app, "optional") as server:
            assert (_https_get(server.port, certs.client_context()) or b"").startswith(
                b"HTTP/1.1 200 "
            )
            context = certs.client_context()
            trustme.CA().issue_cert("intruder@example.com").configure_cert(context)
            assert _https_get(server.port, context) is None, "a certificate is still verified"


def _https_get(port: int, context: ssl.SSLContext) -> bytes | None:
    """The first bytes of the answer to a GET, or None if TLS refused us (before or,
    with TLS 1.3, right after the handshake: the server's alert arrives on first read)."""
    try:
        with tls_socket(port, context) as sock:
            sock.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            data = _read_to_eof(sock)
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return None
    return data or None


def _close_codes(sock: ssl.SSLSocket, data: bytes) -> list[int]:
    """The code of every close frame the server sends until it hangs up; the first is
    answered as RFC 6455 §5.5.1 asks, so the server completes its closing handshake."""
    codes: list[int] = []
    sock.settimeout(timeout(15))
    while True:
        while (frame := next_frame(data)) is not None:
            opcode, payload, data = frame
            if opcode == 8:
                codes.append(int.from_bytes(payload[:2], "big") if payload else 1005)
                if len(codes) == 1:
                    sock.sendall(masked_frame(8, payload[:2]))
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLZeroReturnError, ConnectionResetError):
            return codes
        if not chunk:
            return codes
        data += chunk


def _read_to_eof(sock: ssl.SSLSocket) -> bytes:
    data = b""
    sock.settimeout(timeout(10))
    while True:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            return data
        if not chunk:
            return data
        data += chunk


def _served_certificate(port: int) -> bytes:
    """The DER certificate the server presents to a new connection (not verified)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with tls_socket(port, context) as sock:
        der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_a_tls_session_once_sent_1_mib_does_not_keep_a_megabyte(tmp_path, certs, app):
    """1. 30 wss clients each ask for a 1 MiB message and read it  2. the worker did not
    keep a megabyte per idle session: uvloop encrypts a write whole into the
    connection's TLS buffer, which keeps its size, so the server hands it 64 KiB at a
    time (worker/tlswrites.py); 30 such sessions kept some 32 MiB before."""
    with serving(app, tmp_path, *certs.options()) as server:
        (worker,) = server.workers()
        with contextlib.ExitStack() as stack:
            clients = []
            for _ in range(30):
                sock = stack.enter_context(tls_socket(server.port, certs.client_context()))
                assert upgrade(sock) == b""
                sock.sendall(masked_frame(0x1, b"warm"))
                assert read_server_frame(sock) == b"warm"
                clients.append(sock)
            rss_before = worker.memory_info().rss
            for sock in clients:
                sock.sendall(masked_frame(0x1, b"big"))
                assert read_server_frame(sock) == bytes(1 << 20)
            grown = worker.memory_info().rss - rss_before
    assert grown < 16 * 2**20, f"the worker kept {grown / 2**20:.0f} MiB"


def test_three_hundred_wss_handshakes_in_a_row_are_all_answered(tmp_path, certs, app):
    """1. a websockets client opens 300 wss:// connections, 30 at a time, each echoing
    once  2. every handshake is answered. With TLS 1.3 session tickets on, a request
    that came with the client's Finished was now and then left unread in the worker's
    TLS layer: 1 to 6 of 300 such handshakes got no answer (shared/tls.py)."""
    with serving(app, tmp_path, *certs.options()) as server:
        for _ in range(10):
            with contextlib.ExitStack() as stack:
                for n in range(30):
                    ws = stack.enter_context(wss(server, certs, compression=None))
                    ws.send(f"ping {n}")
                    assert ws.recv(timeout=timeout(5)) == f"ping {n}"


def test_connections_stalled_in_the_tls_handshake_count_against_max_connections(
    tmp_path, certs, app
):
    """1. max_connections 20; 100 TCP connections to the TLS port that send nothing
    2. the worker holds no more than the limit's share of them in their handshake (about
    50 KiB each, for up to handshake_timeout), the rest wait in the kernel's accept
    queue; before, it took them all (3,000 such connections held 147 MiB)  3. they
    leave: the worker accepts again and a wss client is served."""
    limit, stalled = 20, 100
    with (
        serving(app, tmp_path, *certs.options(), "--max-connections", str(limit)) as server,
        contextlib.ExitStack() as stack,
    ):
        (worker,) = server.workers()
        for _ in range(stalled):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout(5))
            stack.callback(sock.close)

        def held_and_queued() -> tuple[int, int]:
            held = [
                c
                for c in worker.net_connections("tcp")
                if c.laddr.port == server.port and c.status == "ESTABLISHED"
            ]
            return len(held), _accept_queue(server.port)

        def limit_held() -> bool:
            held, queued = held_and_queued()
            return held <= 2 * limit and held + queued == stalled

        wait_until(limit_held, 10, what="the rest to wait in the accept queue")
        stack.close()  # the stalled clients go: their handshakes end
        with wss(server, certs) as ws:
            ws.send("after")
            assert ws.recv(timeout=timeout(5)) == "after"


def _accept_queue(port: int) -> int:
    """Connections waiting in the accept queue of the loopback listener on ``port``."""
    local = f"0100007F:{port:04X}"
    (row,) = [r for r in tcp_rows() if r[1] == local and r[3] == "0A"]  # 0A: LISTEN
    return int(row[4].split(":")[1], 16)  # a listener's rx_queue: its accept queue


def test_a_fin_without_close_notify_ends_the_session_and_floods_no_log(tmp_path, certs, app):
    """1. a wss client asks for 3 MiB, reads none of it, and closes its side of the TCP
    connection without TLS's close_notify  2. another client makes the app broadcast 50
    times  3. the session of the first is over for the app (before: it stayed in
    server.connections, each broadcast counted it and logged 'SSL connection is closed',
    for as long as the heartbeat allowed)  4. the log has no such flood."""
    with serving(app, tmp_path, *certs.options()) as server:
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # takes little of it
        raw.settimeout(timeout(5))
        raw.connect(("127.0.0.1", server.port))
        gone = certs.client_context().wrap_socket(raw, server_hostname="127.0.0.1")
        with gone, wss(server, certs) as ws:
            assert upgrade(gone) == b""
            gone.sendall(masked_frame(0x1, b"big") * 3)
            gone.shutdown(socket.SHUT_WR)  # drops TLS first: a FIN, no close_notify

            def sessions_after_broadcasts() -> bool:
                for _ in range(10):
                    ws.send("broadcast")
                    assert ws.recv(timeout=timeout(5)) == "x" * 100
                ws.send("sessions")
                return ws.recv(timeout=timeout(5)) == "1"

            wait_until(sessions_after_broadcasts, what="the half-closed session to end")
            for _ in range(40):
                ws.send("broadcast")
                assert ws.recv(timeout=timeout(5)) == "x" * 100
        assert server.log().count("SSL connection is closed") < 5


def test_the_tls_handshake_and_the_request_share_one_handshake_timeout(tmp_path, certs, app):
    """1. handshake_timeout 3 s; a client sends all of its ClientHello but the last byte,
    the last 2 s later, completes the TLS handshake, then sends half a request
    2. the 408 comes within the 1 s left of the one handshake_timeout (waited for up to
    2 s here); before, the request had a handshake_timeout of its own: the 408 came 3 s
    after the TLS handshake, 6 s in all (20 s at the defaults)."""
    with serving(app, tmp_path, *certs.options(), "--handshake-timeout", "3") as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=timeout(5)) as sock:
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = certs.client_context().wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
            with contextlib.suppress(ssl.SSLWantReadError):
                tls.do_handshake()
            hello = outgoing.read()
            sock.sendall(hello[:-1])
            time.sleep(2)  # the client's own pace: its ClientHello's last byte comes late
            sock.sendall(hello[-1:])
            while True:
                try:
                    tls.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    sock.sendall(outgoing.read())
                    incoming.write(sock.recv(65536))
            tls.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and no end of the head
            sock.sendall(outgoing.read())
            sock.settimeout(2)
            answer = b""
            while b"\r\n" not in answer:
                try:
                    answer += tls.read(65536)
                except ssl.SSLWantReadError:
                    incoming.write(sock.recv(65536))
            assert answer.startswith(b"HTTP/1.1 408 ")


HELD_ANSWERS_APP = """
    import asyncio
    from swoolish import WebSocketServer

    server = WebSocketServer()
    released = asyncio.Event()  # set by a request for /release
    unstuck = asyncio.Event()  # set by a request for /unstick

    @server.on("request")
    async def on_request(request, response):
        if request.path == "/release":
            released.set()
        elif request.path == "/unstick":
            unstuck.set()
        elif request.path == "/held":
            await released.wait()
        elif request.path == "/stuck":
            await unstuck.wait()
        response.end(b"ok")
"""


def _https_get_path(port: int, context: ssl.SSLContext, path: str) -> bytes:
    """The whole answer to a GET of ``path``, on a connection of its own."""
    with tls_socket(port, context) as sock:
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
        )
        return _read_to_eof(sock)


def _unread_by_server(server_port: int, client_port: int) -> int:
    """Bytes of the client on ``client_port`` in the server socket's receive queue."""
    row = tcp_row(server_port, client_port)
    return int(row[4].split(":")[1], 16) if row else 0


def _unacknowledged(client_port: int, server_port: int) -> int:
    """Bytes the client on ``client_port`` sent that the server's kernel has not taken."""
    row = tcp_row(client_port, server_port)
    return int(row[4].split(":")[0], 16) if row else 0


def test_a_fin_the_worker_has_not_read_yet_still_lets_its_connection_go(tmp_path, certs):
    """1. an https client pipelines a request whose handler waits (/held), one whose
    handler waits longer (/stuck), then more requests, 64 KiB at a time, until the
    worker stops reading it (16 requests parsed and unanswered, uvloop's TLS input
    buffer full: bytes stay in the kernel while the worker serves other clients)
    2. it closes its side of the TCP connection without TLS's close_notify: its FIN
    waits unread behind those bytes  3. /held is answered: that write sees the FIN,
    and the connection's eof_received ends the session  4. the worker lets go of the
    connection within 10 s (heartbeat_idle_time 600 s). Before, nothing closed the
    transport after eof_received asked for the close, the worker never read the FIN,
    and it kept the connection in CLOSE_WAIT, owing its answers, for good."""
    app = str(write_app(tmp_path, HELD_ANSWERS_APP, "held_app.py")) + ":server"
    with serving(app, tmp_path, *certs.options(), "--heartbeat-idle-time", "600") as server:
        (worker,) = server.workers()
        context = certs.client_context()
        try:
            with tls_socket(server.port, context) as sock:
                client_port = sock.getsockname()[1]
                sock.sendall(
                    b"GET /held HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                    b"GET /stuck HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                )
                one = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                for _ in range(64):  # 4 MiB at most
                    sock.sendall(one * (65536 // len(one)))
                    wait_until(
                        lambda: _unacknowledged(client_port, server.port) == 0,
                        what="the server's kernel to take what the client sent",
                    )
                    answer = _https_get_path(server.port, context, "/")
                    assert answer.startswith(b"HTTP/1.1 200 "), answer  # its loop ran since
                    if _unread_by_server(server.port, client_port):
                        break  # the worker has stopped reading this client
                else:
                    raise AssertionError("the worker read 4 MiB of pipelined requests")
                sock.shutdown(socket.SHUT_WR)  # drops TLS first: a FIN, no close_notify

                def held_by_worker() -> list[str]:
                    return [
                        c.status
                        for c in worker.net_connections("tcp")
                        if c.raddr and c.raddr.port == client_port
                    ]

                wait_until(lambda: held_by_worker() == ["CLOSE_WAIT"], what="the FIN")
                assert _unread_by_server(server.port, client_port), "the FIN waits unread"
                answer = _https_get_path(server.port, context, "/release")
                assert answer.startswith(b"HTTP/1.1 200 "), answer
                wait_until(
                    lambda: not held_by_worker(),
                    10,
                    what="the worker to let go of the half-closed connection",
                )
        finally:
            with contextlib.suppress(OSError):
                _https_get_path(server.port, context, "/unstick")


SIZED_ANSWER_APP = """
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("request")
    def on_request(request, response):
        response.end(bytes(int(request.path[1:])))  # GET /N: N bytes
"""


def _queued(server_port: int, client_port: int) -> int:
    """Bytes of the answer to the client on ``client_port`` in the kernel: in the
    server socket's send queue and in the client socket's receive queue."""
    sent, received = tcp_row(server_port, client_port), tcp_row(client_port, server_port)
    return sum(int(row[4].split(":")[i], 16) for row, i in ((sent, 0), (received, 1)) if row)


def _steady_queue(server_port: int, client_port: int) -> int:
    """_queued once it has stopped growing (the same over a tenth of a second)."""
    seen: list[int] = []

    def steady() -> int:
        seen.append(_queued(server_port, client_port))
        return seen[-1] if len(seen) > 5 and seen[-1] and len(set(seen[-6:])) == 1 else 0

    return wait_until(steady, what="the kernel's queues to stop growing")


def test_a_client_that_asked_for_an_answer_and_takes_none_is_let_go(tmp_path, certs):
    """1. a first https client asks for 16 MB and reads nothing: what the kernel holds
    of it once that stops growing (some 4 MiB) is what both sockets' buffers take
    2. a second client asks for that much and 16 KiB more, closes its side of the TCP
    connection without close_notify, and reads nothing: every byte has left uvloop's
    TLS transport, the last ones wait in the TCP transport below it  3. the worker
    lets go of it once keepalive_timeout and then heartbeat_idle_time have passed
    with nothing taken, as over plain TCP. Before, the TLS transport looked empty, the
    close armed no deadline, and uvloop waited for ever to send the rest before
    closing the socket: the connection was held in CLOSE_WAIT for good."""
    app = str(write_app(tmp_path, SIZED_ANSWER_APP, "sized_app.py")) + ":server"
    options = ("--keepalive-timeout", "1", "--heartbeat-idle-time", "2")
    with serving(app, tmp_path, *certs.options(), *options) as server:
        (worker,) = server.workers()
        context = certs.client_context()
        with tls_socket(server.port, context) as probe:
            probe.sendall(b"GET /16000000 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            taken = _steady_queue(server.port, probe.getsockname()[1])
        with tls_socket(server.port, context) as sock:
            client_port = sock.getsockname()[1]
            size = taken + 16 * 1024
            sock.sendall(f"GET /{size} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            _steady_queue(server.port, client_port)
            sock.shutdown(socket.SHUT_WR)  # drops TLS first: a FIN, no close_notify

            def held_by_worker() -> bool:
                return any(
                    c.raddr and c.raddr.port == client_port for c in worker.net_connections("tcp")
                )

            wait_until(
                lambda: not held_by_worker(), 20, what="the worker to let go of the connection"
            )


DUMP_APP = """
    import json
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "stats":
            server.push(frame.fd, json.dumps(server.stats()))
        else:
            server.push(frame.fd, bytes(int(frame.data.split()[1])))  # "dump N": N bytes
"""


def test_a_wss_client_that_closes_after_asking_for_pushes_and_takes_none_is_reset(tmp_path, certs):
    """1. a first wss client asks for 16 MB and reads nothing: what the kernel holds of
    it once that stops growing is what both sockets' buffers take  2. a second client
    asks for that much and 16 KiB more and sends a close frame in the same write, then
    reads nothing: the server echoes the close and closes with every byte gone below
    uvloop's TLS transport  3. the worker lets go of it within the closing handshake's
    bound (CLOSE_TIMEOUT, 2 s), counted in closed_idle, as over plain TCP. Before, the
    TLS transport looked empty, the close armed no deadline, and uvloop waited to send
    the rest for good."""
    app = str(write_app(tmp_path, DUMP_APP, "dump_app.py")) + ":server"
    options = ("--heartbeat-check-interval", "0")
    with serving(app, tmp_path, *certs.options(), *options) as server:
        (worker,) = server.workers()
        context = certs.client_context()
        with tls_socket(server.port, context) as probe:
            assert upgrade(probe) == b""
            probe.sendall(masked_frame(0x1, b"dump 16000000"))
            taken = _steady_queue(server.port, probe.getsockname()[1])
        with tls_socket(server.port, context) as sock:
            client_port = sock.getsockname()[1]
            assert upgrade(sock) == b""
            dump = masked_frame(0x1, f"dump {taken + 16 * 1024}".encode())
            sock.sendall(dump + masked_frame(0x8, (1000).to_bytes(2, "big")))

            def held_by_worker() -> bool:
                return any(
                    c.raddr and c.raddr.port == client_port for c in worker.net_connections("tcp")
                )

            wait_until(
                lambda: not held_by_worker(), 10, what="the worker to let go of the connection"
            )
        with wss(server, certs) as ws:
            ws.send("stats")
            assert json.loads(ws.recv(timeout=timeout(5)))["closed_idle"] == 1
