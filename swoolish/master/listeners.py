"""The master's listening sockets: TCP host:port, or a Unix socket for a proxy in front.

Bound in the master before anything is forked, so that a port in use or a bad path is
one line and exit status 2, and every worker accepts on the same socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import socket
import stat
import time
from collections.abc import Callable

from ..core.errors import SettingError

__all__ = [
    "BACKLOG",
    "UDS_MODE",
    "AcceptFailures",
    "ClientFaults",
    "bind",
    "bind_unix",
    "unlink_unix",
]

log = logging.getLogger("swoolish.master")

BACKLOG = 2048  # the kernel caps it at net.core.somaxconn (docs/deployment.md, "Limits")
# TCP keepalive on every accepted socket (RFC 1122 §4.2.3.6): a peer that vanished
# without a FIN or RST (power loss, a dropped NAT entry) is noticed after 30 s of
# silence and 3 unanswered probes 10 s apart, about a minute.
KEEPALIVE_IDLE, KEEPALIVE_INTERVAL, KEEPALIVE_COUNT = 30, 10, 3
ACCEPT_PAUSE = 0.5  # seconds a listening socket is not polled after accept ran dry
# Out of descriptors or memory: waiting (or freeing a descriptor) is the only cure.
RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# This connection failed before we got it; the next one may be fine.
TRANSIENT_ERRORS = frozenset({errno.ECONNABORTED, errno.EPROTO, errno.EPERM, errno.EINTR})
EPISODE_GAP = 10.0  # seconds without an accept error that end an episode (one log line each)


class AcceptFailures:
    """What the master's own listeners (control socket, metrics) do when ``accept``
    fails, so that no client can take the master down: log once per episode, skip a
    connection that died before we got it, free an idle client's descriptor when out of
    descriptors, else stop polling the socket for ``ACCEPT_PAUSE`` seconds instead of
    spinning on it (docs/security.md)."""

    def __init__(self, what: str) -> None:
        self.what = what  # "control socket", "metrics": who logs
        self._last_failure = float("-inf")

    def pause_until(self, exc: OSError, make_room: Callable[[], bool]) -> float | None:
        """When accepts may resume after ``exc``, or None to go on at once (a transient
        error, or ``make_room`` dropped an idle client)."""
        now = time.monotonic()
        if now - self._last_failure > EPISODE_GAP:
            log.warning(
                "%s: accept failed (%s); the master keeps running, hanging up on idle "
                "clients or pausing accepts (logged once per episode)",
                self.what,
                exc,
            )
        self._last_failure = now
        if exc.errno in TRANSIENT_ERRORS:
            return None
        if exc.errno in RESOURCE_ERRORS and make_room():
            return None
        return now + ACCEPT_PAUSE


class ClientFaults:
    """What the master's own listeners do when serving one client raises something
    unexpected (a bug its input reached): that client is hung up on by the caller and
    the master serves on, since the master going down takes every worker with it
    (docs/security.md). The first fault of an episode is logged with its traceback,
    the rest of the episode not at all, so that a client repeating it cannot flood
    the log."""

    def __init__(self, what: str) -> None:
        self.what = what  # "control socket", "metrics": who logs
        self.count = 0  # faults over the master's life
        self._last_fault = float("-inf")

    def failed(self, exc: BaseException) -> None:
        """Count ``exc``; log it when it starts an episode."""
        now = time.monotonic()
        self.count += 1
        if now - self._last_fault > EPISODE_GAP:
            log.error(
                "%s: serving a client failed (%s: %s); hung up on that client, the master "
                "keeps running (logged once per episode)",
                self.what,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        self._last_fault = now


def bind(
    host: str,
    port: int,
    backlog: int = BACKLOG,
    purpose: str = "listen on",
    port_option: str = "--port",
) -> socket.socket:
    """Bind a non-blocking TCP listening socket (SO_REUSEADDR), before anything is
    forked; one line naming ``port_option`` when it cannot be bound."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    _enable_keepalive(sock)
    try:
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as exc:
        sock.close()
        in_use = exc.errno == errno.EADDRINUSE
        hint = f"choose another {port_option}" if in_use else "check --host"
        raise SettingError(f"cannot {purpose} {host}:{port}: {exc.strerror}; {hint}") from None
    sock.setblocking(False)
    return sock


#: A Unix socket's mode: its owner and group connect, nobody else. A proxy running as
#: another user joins the group; anyone who may connect could send proxy headers that
#: forwarded_allow_ips='unix' trusts (docs/deployment.md, "A proxy in front").
UDS_MODE = 0o660


def bind_unix(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Bind the one listening socket at ``path`` (mode ``UDS_MODE``), before anything is
    forked; also returns the file's identity (device, inode), so that the master removes
    only its own file when it exits.

    A socket file nothing listens on (left by a master that was killed) is replaced;
    one something still listens on, or a file of any other kind, is refused.
    """
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise SettingError(
            f"cannot listen on unix:{path}: the directory {directory} does not exist"
        )
    _remove_stale_socket(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # bind() creates the file with the umask's mode: set it so the file never exists,
    # even for a moment, with wider permissions than UDS_MODE.
    umask = os.umask(0o777 & ~UDS_MODE)
    try:
        sock.bind(path)
    except OSError as exc:
        sock.close()
        raise SettingError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    finally:
        os.umask(umask)
    info = os.stat(path)
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock, (info.st_dev, info.st_ino)


def _enable_keepalive(sock: socket.socket) -> None:
    """TCP keepalive with the timings above, set once on the listening socket: Linux
    copies a listener's SO_KEEPALIVE and TCP_KEEP* options to every socket it accepts
    (tests/adversarial/test_remote_clients.py checks an accepted one), which saves a
    worker four system calls and a socket object per connection (docs/performance.md,
    "Reconnect storm")."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)


def _remove_stale_socket(path: str) -> None:
    """Remove a socket file at ``path`` that nothing listens on; refuse anything else."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise SettingError(
            f"cannot listen on unix:{path}: a file that is not a socket is there; "
            "remove it or choose another --uds"
        )
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except ConnectionRefusedError:
        _unlink_stale(path, info.st_uid)  # stale: its server is gone
        return
    except FileNotFoundError:
        return
    except BlockingIOError:
        pass  # its backlog is full: something listens on it
    except PermissionError as exc:
        raise SettingError(
            f"cannot listen on unix:{path}: {exc.strerror} (the socket file there belongs "
            f"to uid {info.st_uid}); choose another --uds, in a directory of your own"
        ) from None
    except OSError as exc:
        raise SettingError(f"cannot listen on unix:{path}: {exc.strerror or exc}") from None
    finally:
        probe.close()
    raise SettingError(
        f"cannot listen on unix:{path}: something listens on it already; stop it or "
        "choose another --uds"
    )


def _unlink_stale(path: str, owner: int) -> None:
    """Remove a socket file nothing listens on. Where we may not (a directory we cannot
    write, or a sticky one such as /tmp and the file is another user's), one line
    naming the file's owner: in a directory anyone may write, another user can plant
    a socket file at the path first (docs/deployment.md, "A proxy in front")."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return  # gone already
    except OSError as exc:
        raise SettingError(
            f"cannot listen on unix:{path}: a socket file nothing listens on is there, "
            f"belonging to uid {owner}, and it cannot be removed ({exc.strerror}); remove "
            "it as that user or root, or choose another --uds, in a directory of your own"
        ) from None


def unlink_unix(path: str, identity: tuple[int, int]) -> None:
    """Remove the socket file at ``path`` if it is still the one we bound (a successor
    that replaced it keeps its own)."""
    with contextlib.suppress(OSError):
        info = os.lstat(path)
        if (info.st_dev, info.st_ino) == identity:
            os.unlink(path)
