"""systemd's readiness protocol (sd_notify(3)) on real processes (docs/deployment.md).

Each test plays systemd: it binds the AF_UNIX datagram socket a ``Type=notify`` service
gets in ``$NOTIFY_SOCKET`` and reads what ``swoolish serve`` sends there. The socket
asks for the sender's credentials (``SO_PASSCRED``, unix(7)), as systemd does for
``NotifyAccess=main``, so every message is also checked to come from the master.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from support import serving, timeout, write_app

APP = """
    import os
    from swoolish import WebSocketServer

    server = WebSocketServer(worker_start_timeout=5.0)
    VERSION = {version!r}

    @server.on("message")
    def on_message(server, frame):
        # what a worker sees of systemd's variable: nothing (only the master notifies)
        server.push(frame.fd, f"{{VERSION}} {{os.environ.get('NOTIFY_SOCKET', 'unset')}}")
"""

BROKEN_APP = """
    from swoolish import WebSocketServer
    server = WebSocketServer(worker_start_timeout=5.0)
    raise RuntimeError("a broken deploy")
"""

_CREDS = array.array("i", [0, 0, 0]).itemsize * 3  # struct ucred: pid, uid, gid


class Systemd:
    """The receiving end of ``$NOTIFY_SOCKET``: each datagram, parsed, with its sender."""

    def __init__(self, address: str | bytes) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.bind(address)
        self.messages: list[tuple[int, dict[str, str]]] = []  # (sender pid, fields)

    def receive(self, seconds: float = 10.0) -> tuple[int, dict[str, str]]:
        """The next datagram; fails the test if none arrives in time."""
        self.sock.settimeout(timeout(seconds))
        data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(_CREDS))
        pid = 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = array.array("i", payload[:_CREDS])[0]
        fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
        self.messages.append((pid, fields))
        return pid, fields

    def wait_for(
        self, check: Callable[[dict[str, str]], bool], seconds: float = 20.0
    ) -> dict[str, str]:
        """Read datagrams until one passes ``check``; return it."""
        deadline = time.monotonic() + timeout(seconds)
        while time.monotonic() < deadline:
            _, fields = self.receive(max(0.1, deadline - time.monotonic()))
            if check(fields):
                return fields
        raise AssertionError(f"no such notification; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def systemd(tmp_path) -> Iterator[tuple[Systemd, str]]:
    """A notify socket at a path in tmp_path, and the NOTIFY_SOCKET value naming it."""
    path = str(tmp_path / "notify.sock")
    receiver = Systemd(path)
    try:
        yield receiver, path
    finally:
        receiver.close()


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in µs, the clock of MONOTONIC_USEC (sd_notify(3))."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def ask(server, text: str = "hi") -> str:
    with server.connect() as client:
        client.send(text)
        return client.recv(timeout=timeout(5))


def test_ready_reloading_ready_stopping_from_the_master_only(tmp_path, systemd):
    """READY=1 (MAINPID = the master) once both workers serve; SIGUSR1: RELOADING=1
    with MONOTONIC_USEC, then READY=1 naming generation 2; SIGTERM: STOPPING=1. Every
    datagram comes from the master's pid, and workers do not see NOTIFY_SOCKET."""
    receiver, path = systemd
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, workers=2, env={"NOTIFY_SOCKET": path}) as server:
        _, ready = receiver.receive()
        assert ready["READY"] == "1"
        assert ready["MAINPID"] == str(server.pid)
        assert ready["STATUS"] == "serving generation 1 (2 workers)"
        assert ask(server) == "v1 unset"

        before = monotonic_usec()
        server.signal(signal.SIGUSR1)
        _, reloading = receiver.receive()
        assert reloading["RELOADING"] == "1"
        assert before <= int(reloading["MONOTONIC_USEC"]) <= monotonic_usec()
        assert "generation 2" in reloading["STATUS"]
        _, reloaded = receiver.receive(20)
        assert reloaded["READY"] == "1"
        assert reloaded["STATUS"].startswith("serving generation 2 (2 workers)")
        assert "complete" in reloaded["STATUS"]

        server.signal(signal.SIGTERM)
        _, stopping = receiver.receive()
        assert stopping["STOPPING"] == "1"
        assert server.wait_exit(15) == 0
    senders = {pid for pid, _ in receiver.messages}
    assert senders == {server.pid}, receiver.messages
    assert [next(iter(fields)) for _, fields in receiver.messages] == [
        "READY",
        "RELOADING",
        "READY",
        "STOPPING",
    ]


def test_a_rolled_back_reload_says_so_and_is_ready_again(tmp_path, systemd):
    """A broken deploy: RELOADING=1, then READY=1 saying the reload was rolled back and
    generation 1 still serves."""
    receiver, path = systemd
    app = write_app(tmp_path, APP.format(version="v1"))
    with serving(f"{app}:server", tmp_path, env={"NOTIFY_SOCKET": path}) as server:
        assert receiver.receive()[1]["READY"] == "1"
        write_app(tmp_path, BROKEN_APP)
        server.signal(signal.SIGUSR1)
        assert receiver.receive()[1]["RELOADING"] == "1"
        _, after = receiver.receive(20)
        assert after["READY"] == "1"
        assert after["STATUS"].startswith("serving generation 1 (1 worker)")
        assert "reload to generation 2 rolled back" in after["STATUS"]
        assert ask(server) == "v1 unset"


def test_abstract_socket_name(tmp_path):
    """NOTIFY_SOCKET=@name is the abstract namespace (unix(7)): a NUL byte, then name."""
    name = f"swoolish-test-{uuid.uuid4().hex}"
    receiver = Systemd(b"\0" + name.encode())
    try:
        with serving(
            "tests/apps/echo_app.py:server", tmp_path, env={"NOTIFY_SOCKET": f"@{name}"}
        ) as server:
            pid, ready = receiver.receive()
            assert (pid, ready["READY"], ready["MAINPID"]) == (server.pid, "1", str(server.pid))
            server.signal(signal.SIGTERM)
            assert receiver.wait_for(lambda fields: "STOPPING" in fields)["STOPPING"] == "1"
            assert server.wait_exit(15) == 0
    finally:
        receiver.close()


def test_no_listener_on_the_socket_is_not_fatal(tmp_path):
    """NOTIFY_SOCKET names a path nobody listens on: one warning, and the server serves."""
    missing = str(tmp_path / "nobody-here.sock")
    with serving(
        "tests/apps/echo_app.py:server", tmp_path, env={"NOTIFY_SOCKET": missing}
    ) as server:
        assert ask(server) == "hi"
        server.wait_for_log(r"could not notify systemd")
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 2 complete")
        assert ask(server) == "hi"
    assert server.log().count("could not notify systemd") == 1
    assert os.path.exists(missing) is False
