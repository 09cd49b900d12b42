"""The master's control socket, for ``swoolish reload --wait`` and ``swoolish status``.

Any local user can try to connect, so the socket has three walls (docs/security.md):

* it lives in a directory only the master's user may enter: ``$XDG_RUNTIME_DIR/swoolish/``
  when that runtime directory exists and belongs to the user, else
  ``/tmp/swoolish-<uid>/``; the directory is created mode 0700, and one that exists
  must be a real directory (not a symlink) owned by the user with no group or other
  access, or the master refuses to start with one line saying why;
* the socket, ``master-<pid>.sock``, is mode 0600 and removed when the master exits (a
  stale file of a dead master with the same pid is replaced);
* every accepted connection's peer is checked with ``SO_PEERCRED``: only the master's
  own uid and root may use it; anyone else gets one ``{"error": ...}`` line and a
  hang-up.

The master never lets the socket take it down: at most ``MAX_CLIENTS`` clients are held
(the oldest one that has not sent its request yet is dropped for a newcomer, so idle
connections cannot lock the operator out), and ``accept`` errors are survived: out of
descriptors, an idle client is dropped to free one, or, with none to drop, the master
stops polling the socket for ``ACCEPT_PAUSE`` seconds instead of spinning on it. Each
episode of failures is logged once. A client socket leaves the master's selector
whenever it is closed (ControlClient.close), so its descriptor number can be reused
safely; a request line that does not parse, nested too deep included, gets an error
line; anything else one client's request raises is logged (listeners.ClientFaults) and
that client hung up on.

Requests and replies are JSON, one object per line, one request per connection (what
follows it is ignored, and past ``MAX_REQUEST`` bytes no longer read); a reply stream
ends when the master closes the connection. A client that half-closes after its
request still gets every reply.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import stat
import struct
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from ..core.errors import SettingError
from .listeners import AcceptFailures, ClientFaults

__all__ = [
    "ControlClient",
    "ControlRefused",
    "ControlServer",
    "locate",
    "request",
    "runtime_dir",
    "socket_path",
]

log = logging.getLogger("swoolish.master")

MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 16  # control clients held at once
BACKLOG = 64
REFUSAL_LOG_INTERVAL = 60.0  # seconds between two log lines about one refused uid
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid (unix(7), SO_PEERCRED)
_SOCKET_NAME = re.compile(r"master-(\d+)\.sock")


class ControlRefused(ConnectionError):
    """The master answered a request with an error line (refused, or a bad request)."""


# ---------------------------------------------------------------------- where it lives


def runtime_dir(uid: int, environ: Mapping[str, str]) -> str:
    """The directory of ``uid``'s control sockets, given the environment a master had.

    ``$XDG_RUNTIME_DIR/swoolish`` when that variable names an existing directory owned
    by ``uid`` (systemd's ``/run/user/<uid>``), else ``/tmp/swoolish-<uid>``.
    """
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    if os.path.isabs(xdg):
        try:
            st = os.lstat(xdg)
        except OSError:
            pass
        else:
            if stat.S_ISDIR(st.st_mode) and st.st_uid == uid:
                return os.path.join(xdg, "swoolish")
    return f"/tmp/swoolish-{uid}"


def socket_path(directory: str, master_pid: int) -> str:
    return os.path.join(directory, f"master-{master_pid}.sock")


def prepare_directory(path: str, uid: int) -> None:
    """Create ``path`` mode 0700, or check that the one there is private to ``uid``.

    Raises ``SettingError`` (one line, the CLI exits 2) when the path is a symlink, not a
    directory, owned by someone else, or open to the group or others.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise SettingError(
            f"cannot create the control socket directory {path}: {exc.strerror}; "
            "set XDG_RUNTIME_DIR to a directory of yours"
        ) from None
    st = os.lstat(path)
    problem = _unsafe(st, uid)
    if problem:
        raise SettingError(
            f"control socket directory {path} {problem}; remove it, or set "
            "XDG_RUNTIME_DIR to a directory of yours"
        )


def _unsafe(st: os.stat_result, uid: int) -> str:
    """Why a directory with this ``lstat`` is no private directory of ``uid`` ("" if it is)."""
    if not stat.S_ISDIR(st.st_mode):
        return "is not a directory (a symlink or a file is in the way)"
    if st.st_uid != uid:
        return f"belongs to uid {st.st_uid}, not to uid {uid}"
    if st.st_mode & 0o077:
        return f"is open to other users (mode {stat.S_IMODE(st.st_mode):04o}, expected 0700)"
    return ""


def _remove_stale_sockets(directory: str, own_pid: int) -> None:
    """Remove the sockets of masters that are gone (a SIGKILL leaves its file behind),
    and a file of our own pid, which can only be a dead master's."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            match = _SOCKET_NAME.fullmatch(name)
            if match is None:
                continue
            pid = int(match.group(1))
            if pid == own_pid or not _running(pid):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, name))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def locate(master_pid: int, uid: int, environs: Iterable[Mapping[str, str]]) -> str:
    """The control socket of master ``master_pid`` running as ``uid`` (for the CLI).

    ``environs`` are the environments the master may have chosen its directory from (its
    own, read with psutil, and the caller's). Only a socket owned by ``uid`` in a
    directory private to ``uid`` counts, so nobody else can plant an impostor.
    Raises ``ConnectionError`` when there is none.
    """
    directories: list[str] = []
    for environ in [*environs, {}]:
        directory = runtime_dir(uid, environ)
        if directory not in directories:
            directories.append(directory)
    for directory in directories:
        path = socket_path(directory, master_pid)
        try:
            if _unsafe(os.lstat(directory), uid):
                continue
            st = os.lstat(path)
        except FileNotFoundError:
            continue
        except PermissionError:
            raise ConnectionError(f"no permission to reach {path}") from None
        if stat.S_ISSOCK(st.st_mode) and st.st_uid == uid:
            return path
    raise ConnectionError(
        f"master {master_pid} has no control socket (looked in {', '.join(directories)})"
    )


# ---------------------------------------------------------------------- the master's side


class ControlClient:
    """One connected CLI, as the master sees it.

    ``unregister`` takes its socket out of the master's selector. It is called before
    every close: a closed socket left registered keeps its descriptor number in the
    selector, and the next socket the kernel gives that number could not be
    registered (a ``KeyError`` that ended the master).
    """

    def __init__(self, sock: socket.socket, unregister: Callable[[socket.socket], object]) -> None:
        self.sock = sock
        self.unregister = unregister
        self.buffer = b""
        self.closed = False
        self.requested = False  # sent a request; only clients that have not may be dropped
        self.ignored = 0  # bytes it sent after its request

    def send(self, message: dict[str, Any]) -> None:
        """Send one JSON line without ever waiting for the client: the master serves
        everything from one loop (docs/security.md). What the client has not read yet
        waits in its socket's buffer; a client that lets that fill up, or that went
        away, is hung up on."""
        if self.closed:
            return
        line = json.dumps(message).encode() + b"\n"
        try:
            sent = self.sock.send(line)
        except OSError:  # BlockingIOError (the buffer is full) included
            sent = 0
        if sent < len(line):
            self.close()

    def stop_reading(self) -> None:
        """The client half-closed after its request, or sends on after it: it still
        gets its replies, but its socket, readable for good, leaves the selector."""
        with contextlib.suppress(KeyError, ValueError, OSError):
            self.unregister(self.sock)

    def close(self) -> None:
        """Take the socket out of the master's selector, then close it."""
        if not self.closed:
            self.closed = True
            with contextlib.suppress(KeyError, ValueError, OSError):
                self.unregister(self.sock)
            with contextlib.suppress(OSError):
                self.sock.close()


class ControlServer:
    """Accepts CLI connections; hands each complete request to ``on_request``.

    ``unregister`` takes a client's socket out of the master's selector (ControlClient).
    """

    def __init__(
        self,
        on_request: Callable[[ControlClient, dict[str, Any]], None],
        unregister: Callable[[socket.socket], object],
        directory: str | None = None,
    ) -> None:
        self.on_request = on_request
        self.unregister = unregister
        self.faults = ClientFaults("control socket")
        self.pid = os.getpid()
        self.uid = os.geteuid()
        self.directory = directory or runtime_dir(self.uid, os.environ)
        self.path = socket_path(self.directory, self.pid)
        self.clients: list[ControlClient] = []  # oldest first
        self.paused_until: float | None = None  # not polled until then (see accept)
        self._failures = AcceptFailures("control socket")
        self._refusals_logged: dict[int, float] = {}  # uid -> when last logged
        prepare_directory(self.directory, self.uid)
        _remove_stale_sockets(self.directory, self.pid)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.bind(self.path)
            os.chmod(self.path, 0o600)  # the directory already keeps others out
            self._identity = _identity(os.lstat(self.path))
            self.sock.listen(BACKLOG)
        except OSError as exc:
            self.sock.close()
            raise SettingError(
                f"cannot create the control socket {self.path}: {exc.strerror}; "
                "set XDG_RUNTIME_DIR to a short directory of yours"
            ) from None
        self.sock.setblocking(False)

    def accept(self) -> ControlClient | None:
        """One new client, or None (nothing pending, a refused peer, an accept error).

        After an error that waiting alone cures, ``paused_until`` is set: the master stops
        polling the listening socket until then.
        """
        try:
            conn, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as exc:
            self._accept_failed(exc)
            return None
        conn.setblocking(False)
        uid = _peer_uid(conn)
        if uid not in (self.uid, 0):
            self._refuse(conn, uid)
            return None
        self.clients = [c for c in self.clients if not c.closed]
        if len(self.clients) >= MAX_CLIENTS:
            idle = self._oldest_idle()
            if idle is None:
                _reject(conn, f"busy: {MAX_CLIENTS} control clients connected; try again")
                return None
            idle.close()
            self.clients.remove(idle)
        client = ControlClient(conn, self.unregister)
        self.clients.append(client)
        return client

    def _oldest_idle(self) -> ControlClient | None:
        return next((c for c in self.clients if not c.closed and not c.requested), None)

    def _accept_failed(self, exc: OSError) -> None:
        """Keep the master alive whatever ``accept`` raised (listeners.AcceptFailures)."""
        self.paused_until = self._failures.pause_until(exc, self._drop_oldest_idle)

    def _drop_oldest_idle(self) -> bool:
        """Free an idle client's descriptor, so that the next accept can work."""
        idle = self._oldest_idle()
        if idle is None:
            return False
        idle.close()
        self.clients.remove(idle)
        return True

    def _refuse(self, conn: socket.socket, uid: int | None) -> None:
        now = time.monotonic()
        key = -1 if uid is None else uid
        if now - self._refusals_logged.get(key, float("-inf")) >= REFUSAL_LOG_INTERVAL:
            self._refusals_logged[key] = now
            log.warning(
                "control socket: refused a client of uid %s: only uid %d and root may "
                "control this master",
                "unknown" if uid is None else uid,
                self.uid,
            )
        _reject(
            conn,
            f"permission denied: uid {'unknown' if uid is None else uid} may not control "
            f"this master (it runs as uid {self.uid}; only that user and root may)",
        )

    def readable(self, client: ControlClient) -> bool:
        """Read from a client; returns False when it should be hung up on."""
        try:
            chunk = client.sock.recv(4096)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            chunk = b""
        if not chunk:
            return self._ended(client)
        if client.requested:
            return self._ignore(client, len(chunk))
        client.buffer += chunk
        if b"\n" not in client.buffer:
            if len(client.buffer) > MAX_REQUEST:
                client.send({"error": "request too large"})
                return False
            return True
        line = client.buffer.partition(b"\n")[0]
        client.buffer = b""
        client.requested = True
        message = _parse(line)
        if message is None:
            client.send({"error": "a request is one JSON object per line"})
            return False
        self.on_request(client, message)
        return not client.closed

    @staticmethod
    def _ignore(client: ControlClient, size: int) -> bool:
        """One request per connection: what follows it is read and ignored, up to
        ``MAX_REQUEST`` bytes; past that the client is no longer read, so a stream of
        them costs the master nothing."""
        client.ignored += size
        if client.ignored > MAX_REQUEST:
            client.stop_reading()
        return True

    @staticmethod
    def _ended(client: ControlClient) -> bool:
        """EOF: a client that made its request only half-closed (``nc -N``, socat) and
        is answered, then hung up on, like any other; one that made none is done."""
        if not client.requested or client.closed:
            return False
        client.stop_reading()
        return True

    def forget(self) -> None:
        """Close every socket without touching the selector, in a forked worker: a CLI
        must see EOF when the master hangs up, and a client that half-closed is held
        out of the selector (ControlClient.stop_reading), so the selector does not list
        every client."""
        for client in self.clients:
            with contextlib.suppress(OSError):
                client.sock.close()
        self.clients = []
        self.sock.close()

    def close(self) -> None:
        """Close the socket; the master (not a forked worker) also removes its file, if
        the file there is still this socket's."""
        self.sock.close()
        if os.getpid() != self.pid:
            return
        with contextlib.suppress(OSError):
            if _identity(os.lstat(self.path)) == self._identity:
                os.unlink(self.path)


def _parse(line: bytes) -> dict[str, Any] | None:
    """The request object of one line, or None. A line is at most ``MAX_REQUEST`` plus
    one read long, but its nesting is not bounded: json raises RecursionError, no
    ValueError, on a deep one (1,000 ``[`` are enough)."""
    try:
        message = json.loads(line)
    except (ValueError, RecursionError):
        return None
    return message if isinstance(message, dict) else None


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _peer_uid(conn: socket.socket) -> int | None:
    """The uid of the process that connected (unix(7), SO_PEERCRED); None if unknown."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    except OSError:
        return None
    return _UCRED.unpack(creds)[1]


def _reject(conn: socket.socket, reason: str) -> None:
    """One error line, without waiting for the peer, and a hang-up."""
    with contextlib.suppress(OSError):
        conn.send(json.dumps({"error": reason}).encode() + b"\n", socket.MSG_DONTWAIT)
    conn.close()


# ---------------------------------------------------------------------- the CLI's side


def request(
    master_pid: int, message: dict[str, Any], timeout: float, path: str
) -> Iterator[dict[str, Any]]:
    """Send one request to a master's control socket at ``path`` and yield its reply
    lines until it hangs up.

    Raises ``TimeoutError`` when no complete reply arrives within ``timeout`` seconds,
    ``ControlRefused`` when the master answers with an error line, and
    ``ConnectionError`` when the socket cannot be reached.
    """
    deadline = time.monotonic() + timeout
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(path)
        except OSError as exc:
            raise ConnectionError(f"master {master_pid} is not answering ({exc})") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        buffer = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no reply from master {master_pid} within {timeout:g}s")
            sock.settimeout(remaining)
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(
                    f"no reply from master {master_pid} within {timeout:g}s"
                ) from None
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                return
            buffer += chunk
            while b"\n" in buffer:
                line, _, buffer = buffer.partition(b"\n")
                reply = json.loads(line)
                if isinstance(reply, dict) and set(reply) == {"error"}:
                    raise ControlRefused(f"master {master_pid} refused: {reply['error']}")
                yield reply
