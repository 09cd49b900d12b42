"""Shared helpers for tests: real ``swoolish serve`` processes, real clients.

Every process a test starts is tracked by pid (the master and, through psutil, every
worker it forked) and killed by pid at teardown, even when the test fails. Waiting is
always on a condition with a deadline; deadlines scale with ``SWOOLISH_TIMEOUT_FACTOR``
for slow machines.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import re
import select
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
FACTOR = float(os.environ.get("SWOOLISH_TIMEOUT_FACTOR", "1"))


def timeout(seconds: float) -> float:
    return seconds * FACTOR


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(
    predicate: Callable[[], Any], seconds: float = 10.0, interval: float = 0.02, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail at the deadline."""
    deadline = time.monotonic() + timeout(seconds)
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(
                f"timed out after {timeout(seconds):.1f}s waiting for {what or predicate}"
            )
        time.sleep(interval)


def write_app(directory: Path, source: str, name: str = "app.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(source))
    return path


class ServerProcess:
    """A ``swoolish serve`` master started by a test, with everything it forked."""

    def __init__(
        self,
        args: list[str],
        port: int,
        cwd: Path,
        log_path: Path,
        script: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """``swoolish serve`` with ``args``, or ``python script`` when a script is given
        (an app that calls ``server.start()`` at its bottom). ``env`` adds to (or
        overrides) this process's environment."""
        self.port = port
        self.uds: Path | None = None  # set when it listens on a Unix socket (--uds)
        self.log_path = log_path
        self._log = open(log_path, "wb")  # closed in stop()
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1", **(env or {})}
        command = [str(script)] if script else ["-m", "swoolish", *args]
        self.proc = subprocess.Popen(
            [sys.executable, *command],
            cwd=cwd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self.pid = self.proc.pid
        self._known: set[int] = {self.pid}

    # -- observation

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, pattern: str, seconds: float = 10.0, count: int = 1) -> list[str]:
        regex = re.compile(pattern)

        def found() -> list[str] | None:
            hits = regex.findall(self.log())
            return hits if len(hits) >= count else None

        return wait_until(found, seconds, what=f"{count}x /{pattern}/ in the server log")

    def workers(self) -> list[psutil.Process]:
        """Live worker processes (children of the master), remembered for cleanup."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        live = [c for c in children if alive(c)]
        self._known.update(c.pid for c in live)
        return live

    def wait_ready(self, workers: int = 1, seconds: float = 15.0) -> None:
        self.wait_for_log(r"serving", seconds, count=workers)
        wait_until(lambda: self.accepts(), seconds, what=f"port {self.port} accepting")
        self.workers()

    def accepts(self) -> bool:
        try:
            if self.uds is not None:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                    sock.settimeout(1)
                    sock.connect(str(self.uds))
                return True
            socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
            return True
        except OSError:
            return False

    def url(self, path: str = "/") -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def connect(self, path: str = "/", **kwargs: Any) -> ClientConnection:
        kwargs.setdefault("open_timeout", timeout(5))
        kwargs.setdefault("close_timeout", timeout(5))
        return connect(self.url(path), **kwargs)

    # -- control

    def signal(self, sig: int) -> None:
        os.kill(self.pid, sig)

    def wait_exit(self, seconds: float = 10.0) -> int:
        return self.proc.wait(timeout=timeout(seconds))

    def stop(self) -> None:
        """Stop the master and every process it forked, by pid, whatever happened."""
        self.workers()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout(8))
            except subprocess.TimeoutExpired:
                pass
        for pid in self._known:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                if alive(psutil.Process(pid)):
                    os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)
        self._log.close()


@contextlib.contextmanager
def serving(
    target: str,
    tmp_path: Path,
    *extra: str,
    workers: int = 1,
    cwd: Path | None = None,
    wait: bool = True,
    env: dict[str, str] | None = None,
    uds: Path | None = None,
) -> Iterator[ServerProcess]:
    """Run ``swoolish serve TARGET`` on a free loopback port (or the Unix socket ``uds``)
    for the ``with`` block."""
    port = free_port()
    args = ["serve", target, "--port", str(port), "--workers", str(workers), *extra]
    if uds is not None:
        args += ["--uds", str(uds)]
    server = ServerProcess(args, port, cwd or ROOT, tmp_path / f"server-{port}.log", env=env)
    server.uds = uds
    try:
        if wait:
            server.wait_ready(workers)
        yield server
    finally:
        server.stop()


def run_cli(
    *args: str, cwd: Path = ROOT, seconds: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """Run the ``swoolish`` CLI from this checkout and capture what it prints."""
    return subprocess.run(
        [sys.executable, "-m", "swoolish", *args],
        cwd=cwd,
        env=dict(os.environ, PYTHONPATH=str(ROOT), **env),
        capture_output=True,
        text=True,
        timeout=timeout(seconds),
    )


def status_of(pid_file: Path) -> dict[str, Any]:
    """``swoolish status --json`` of the master whose pid file is ``pid_file``."""
    shown = run_cli("status", "--pid-file", str(pid_file), "--json")
    assert shown.returncode == 0, shown.stderr
    return json.loads(shown.stdout)  # type: ignore[no-any-return]


class HttpLoad(threading.Thread):
    """GETs on a fresh TCP connection each time, paced, until ``stop`` is set.

    Counts answers in ``answers`` by ``key(body)`` (the body itself by default) and keeps
    every failure, a non-200 status included, in ``failures``.
    """

    def __init__(
        self,
        port: int,
        stop: threading.Event | None = None,
        path: str = "/who",
        key: Callable[[bytes], Any] = bytes.decode,
        pace: float = 0.01,
    ) -> None:
        super().__init__(daemon=True)
        self.port, self.path, self.key, self.pace = port, path, key, pace
        self.stop = stop or threading.Event()
        self.ok = 0
        self.answers: Counter[Any] = Counter()
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout(10))
            try:
                conn.request("GET", self.path, headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
                if response.status != 200:
                    self.failures.append(f"HTTP {response.status}: {body[:80]!r}")
                else:
                    self.answers[self.key(body)] += 1
                    self.ok += 1
            except (OSError, http.client.HTTPException, ValueError) as exc:
                self.failures.append(repr(exc))
            finally:
                conn.close()
            self.stop.wait(self.pace)  # pacing, so TIME_WAIT sockets stay few


def alive(proc: psutil.Process) -> bool:
    """Running and not a zombie; a process that exits while we look is not alive."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def raw_connect(port: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout(5))
    return sock


def raw_handshake(port: int, path: str = "/") -> tuple[socket.socket, bytes]:
    """Open a WebSocket with exact bytes on the wire; returns the socket and leftover."""
    sock = raw_connect(port)
    return sock, upgrade(sock, path)


def upgrade(sock: socket.socket, path: str = "/") -> bytes:
    """The opening handshake on a connected socket; returns the bytes after the 101."""
    return upgrade_with(sock, path)[1]


def upgrade_with(sock: socket.socket, path: str = "/", headers: str = "") -> tuple[bytes, bytes]:
    """The opening handshake with extra ``headers`` (``Name: value\\r\\n`` lines); returns
    the 101's head and the bytes after it."""
    sock.sendall(
        (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            f"Sec-WebSocket-Version: 13\r\n{headers}\r\n"
        ).encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        assert chunk, f"connection closed during handshake: {data!r}"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return head, rest


def masked_frame(
    opcode: int, payload: bytes, fin: bool = True, mask: bytes = b"\x01\x02\x03\x04"
) -> bytes:
    """A client frame (RFC 6455 §5.2), built by hand so tests control every bit."""
    head = bytes([(0x80 if fin else 0) | opcode])
    n = len(payload)
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head += bytes([0x80 | 127]) + n.to_bytes(8, "big")
    if mask == b"\0\0\0\0":
        return head + mask + payload  # masking with zeros changes nothing (RFC 6455 §5.3)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def read_to_eof(sock: socket.socket, seconds: float = 5.0) -> bytes:
    """Everything the server sends until it closes (or resets) the connection (bounded
    wait)."""
    sock.settimeout(timeout(seconds))
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            data += chunk
    return data


def tcp_rows() -> list[list[str]]:
    """The kernel's IPv4 TCP sockets (/proc/net/tcp), a row of fields each."""
    with open("/proc/net/tcp") as table:
        return [line.split() for line in table.readlines()[1:]]


def tcp_row(local_port: int, remote_port: int) -> list[str] | None:
    """The kernel's row for the IPv4 socket between these two loopback ports."""
    local, remote = f"0100007F:{local_port:04X}", f"0100007F:{remote_port:04X}"
    return next((r for r in tcp_rows() if r[1] == local and r[2] == remote), None)


def server_has_read_everything(port: int, sock: socket.socket) -> bool:
    """Nothing ``sock`` sent is in flight or waiting in the server socket's receive queue:
    the worker has read it all (so what is sent next reaches it in a later read)."""
    mine = sock.getsockname()[1]
    client, served = tcp_row(mine, port), tcp_row(port, mine)
    return (
        client is not None
        and served is not None
        and int(client[4].split(":")[0], 16) == 0  # tx_queue: not yet acknowledged
        and int(served[4].split(":")[1], 16) == 0  # rx_queue: not yet read
    )


def next_frame(data: bytes) -> tuple[int, bytes, bytes] | None:
    """(opcode, payload, rest) of the first whole unmasked server frame in ``data``
    (RFC 6455 §5.2), or None while it is not all there."""
    if len(data) < 2:
        return None
    length, offset = data[1] & 0x7F, 2
    if length == 126:
        length, offset = int.from_bytes(data[2:4], "big"), 4
    elif length == 127:
        length, offset = int.from_bytes(data[2:10], "big"), 10
    if len(data) < offset + length:
        return None
    return data[0] & 0x0F, data[offset : offset + length], data[offset + length :]


def read_close_code(sock: socket.socket, seconds: float = 5.0) -> int | None:
    """Read frames until a close frame; return its code (None if the TCP closed first)."""
    sock.settimeout(timeout(seconds))
    buffer = b""
    while True:
        while len(buffer) >= 2:
            opcode, length = buffer[0] & 0x0F, buffer[1] & 0x7F
            offset = 2
            if length == 126:
                if len(buffer) < 4:
                    break
                length, offset = int.from_bytes(buffer[2:4], "big"), 4
            elif length == 127:
                if len(buffer) < 10:
                    break
                length, offset = int.from_bytes(buffer[2:10], "big"), 10
            if len(buffer) < offset + length:
                break
            payload = buffer[offset : offset + length]
            buffer = buffer[offset + length :]
            if opcode == 8:
                return int.from_bytes(payload[:2], "big") if len(payload) >= 2 else 1005
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        buffer += chunk


class Client:
    """A WebSocket client whose incoming messages a thread collects."""

    def __init__(self, server) -> None:
        self.ws = server.connect()
        hello = json.loads(self.ws.recv(timeout=timeout(5)))
        self.fd, self.worker_id = hello["fd"], hello["worker_id"]
        self.node = hello.get("node", 0)
        self.received: list[str] = []
        self.closed: ConnectionClosed | None = None
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self.ws:
                with self._lock:
                    self.received.append(message)
        except ConnectionClosed as exc:
            self.closed = exc
        else:
            self.closed = self.ws.protocol.close_exc  # type: ignore[assignment]

    def send(self, text: str) -> None:
        self.ws.send(text)

    def take(self, count: int = 1, seconds: float = 10) -> list[str]:
        """The next ``count`` messages (waiting for them), removed from the list."""
        wait_until(lambda: len(self.received) >= count, seconds, what=f"{count} messages")
        with self._lock:
            taken, self.received[:] = self.received[:count], self.received[count:]
        return taken

    def ask(self, text: str) -> object:
        self.send(text)
        return json.loads(self.take()[0])

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        self._thread.join(timeout(5))


# -- cluster mode: several nodes sharing one Redis (docs/cluster.md) ------------------

CLUSTER_APP = "tests/apps/global_app.py:server"


def start_node(tmp_path: Path, redis_url: str, workers: int = 2, *extra: str) -> ServerProcess:
    """One node of a cluster serving ``CLUSTER_APP`` (not waited for)."""
    port = free_port()
    args = [
        "serve",
        CLUSTER_APP,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--redis-url",
        redis_url,
        *extra,
    ]
    return ServerProcess(args, port, ROOT, tmp_path / f"node-{port}.log")


def wait_linked(node: ServerProcess, workers: int) -> None:
    """Until ``node`` serves and each of its ``workers`` is linked to the bus."""
    node.wait_ready(workers)
    node.wait_for_log(r"cluster bus connected", 10, count=workers)


@contextlib.contextmanager
def nodes(
    tmp_path: Path, redis_url: str, count: int = 2, workers: int = 2
) -> Iterator[list[ServerProcess]]:
    """``count`` nodes of one cluster, each serving and linked to Redis."""
    started: list[ServerProcess] = []
    try:
        for _ in range(count):
            started.append(start_node(tmp_path, redis_url, workers))
        for node in started:
            wait_linked(node, workers)
        yield started
    finally:
        for node in started:
            node.stop()


def client_on(node: ServerProcess, worker_id: int | None = None) -> Client:
    """A client of ``node`` (of its worker ``worker_id``, if given)."""
    spare = []
    try:
        for _ in range(200):
            client = Client(node)
            if worker_id is None or client.worker_id == worker_id:
                return client
            spare.append(client)
        raise AssertionError(f"no client landed on worker {worker_id}")
    finally:
        for client in spare:
            client.close()


def wait_visible(asker: Client, fds: list[int], seconds: float = 10.0) -> None:
    """Until ``asker``'s worker sees every one of ``fds`` as existing."""
    ids = ",".join(str(fd) for fd in fds)
    wait_until(
        lambda: all(v[0] for v in asker.ask(f"exists:{ids}").values()),
        seconds,
        what=f"{fds} visible from worker {asker.worker_id} of node {asker.node}",
    )


REDIS_SERVER = "/usr/bin/redis-server"


class RedisServer:
    """A real ``redis-server`` on a free loopback port, with no persistence, started by a
    test and stopped by its pid (also when the test fails)."""

    def __init__(self, directory: Path, port: int | None = None, tls: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.tls_args: list[str] = self._make_certificates() if tls else []
        self.start()

    @property
    def url(self) -> str:
        if self.tls_args:
            return f"rediss://127.0.0.1:{self.port}/0?ssl_ca_certs={self.directory / 'ca.pem'}"
        return f"redis://127.0.0.1:{self.port}/0"

    def _make_certificates(self) -> list[str]:
        """A test CA and a certificate for 127.0.0.1 (trustme); Redis then speaks TLS only."""
        import trustme

        ca = trustme.CA()
        cert = ca.issue_cert("127.0.0.1", "localhost")
        ca.cert_pem.write_to_path(str(self.directory / "ca.pem"))
        cert.private_key_pem.write_to_path(str(self.directory / "redis-key.pem"))
        cert.cert_chain_pems[0].write_to_path(str(self.directory / "redis-cert.pem"))
        return [
            "--tls-cert-file",
            str(self.directory / "redis-cert.pem"),
            "--tls-key-file",
            str(self.directory / "redis-key.pem"),
            "--tls-ca-cert-file",
            str(self.directory / "ca.pem"),
            "--tls-auth-clients",
            "no",
        ]

    @property
    def unix_url(self) -> str:
        """The same server over its Unix socket (mode 0700: this user only)."""
        return f"unix://{self.directory / 'redis.sock'}?db=0"

    def start(self) -> None:
        """Start (again, on the same port: a restart loses every key, as a crash would)."""
        log = open(self.directory / f"redis-{self.port}.log", "ab")
        try:
            self.proc = subprocess.Popen(
                [
                    REDIS_SERVER,
                    *self._ports(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.directory),
                    "--unixsocket",
                    str(self.directory / "redis.sock"),
                    "--unixsocketperm",
                    "700",
                    *self.tls_args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        finally:
            log.close()
        wait_until(self.answers, 10, what=f"redis-server on port {self.port}")

    def _ports(self) -> list[str]:
        if self.tls_args:
            return ["--port", "0", "--tls-port", str(self.port)]
        return ["--port", str(self.port)]

    def answers(self) -> bool:
        try:
            return self.client().ping()
        except Exception:
            return False

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=timeout(2))

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        """Stop by pid (a stopped process is continued first, so it can exit)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=timeout(5))


def over_maxmemory(redis: Any) -> None:
    """Fill ``redis`` as another client would, then set its maxmemory under what it
    uses (noeviction): every command that needs memory is refused with an OOM error
    from now on; PUBLISH, which needs none, is still taken."""
    for i in range(1500):
        redis.set(f"fill:{i}", "x" * 1000)
    used = redis.info("memory")["used_memory"]
    redis.config_set("maxmemory-policy", "noeviction")
    redis.config_set("maxmemory", str(used - 300_000))
    from redis.exceptions import OutOfMemoryError

    with pytest.raises(OutOfMemoryError):
        redis.set("one-more", "x")


# -- another user of the host (tests/adversarial: test_local_users, test_uds_other_user)


def nobody() -> tuple[int, int]:
    """uid and gid of ``nobody``; skips when the test cannot become it."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test drops a forked child to the 'nobody' user")
    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no 'nobody' user on this system")
    return entry.pw_uid, entry.pw_gid


def as_user(uid: int, gid: int, body: Callable[[], Any], seconds: float = 20.0) -> Any:
    """Run ``body`` in a forked child that became ``uid``/``gid``; its JSON result.

    The child never execs (so it needs no access to this interpreter's files) and is
    killed by pid if it overstays ``seconds``.
    """
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(read_end)
            os.setgroups([])
            os.setgid(gid)
            os.setuid(uid)
            result = body()
        except BaseException:
            result = {"child raised": traceback.format_exc()}
        try:
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(json.dumps(result).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    data = b""
    deadline = time.monotonic() + timeout(seconds)
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"the child running as uid {uid} did not finish in {seconds}s"
            if select.select([read_end], [], [], left)[0]:
                chunk = os.read(read_end, 65536)
                if not chunk:
                    break
                data += chunk
    finally:
        os.close(read_end)
        with contextlib.suppress(ProcessLookupError):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
    return json.loads(data)


def read_server_frame(sock: socket.socket) -> bytes:
    """The payload of one unmasked server frame of up to 64-bit length (RFC 6455 §5.2),
    read from a blocking socket (plain or TLS) with its own timeout."""

    def exactly(count: int) -> bytes:
        data = b""
        while len(data) < count:
            chunk = sock.recv(count - len(data))
            assert chunk, "the server closed the connection"
            data += chunk
        return data

    length = exactly(2)[1] & 0x7F
    if length == 126:
        length = int.from_bytes(exactly(2), "big")
    elif length == 127:
        length = int.from_bytes(exactly(8), "big")
    return exactly(length)
