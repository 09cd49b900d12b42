"""systemd's readiness protocol (sd_notify(3)), spoken by the master alone.

Under ``Type=notify`` systemd passes ``$NOTIFY_SOCKET``: a path, or a Linux abstract
socket name written with a leading ``@``. The master sends it newline-separated
``VARIABLE=value`` datagrams (AF_UNIX, SOCK_DGRAM): ``READY=1`` once the first generation
serves, ``RELOADING=1`` (with ``MONOTONIC_USEC``) when a reload starts and ``READY=1``
again when it ends, ``STOPPING=1`` when shutdown begins, and a ``STATUS=`` line with
each, which ``systemctl status`` shows.

Only the main process may notify by default (``NotifyAccess=main``, systemd.exec(5)), so
the variable is taken out of the master's environment before anything is forked, as
``sd_notify(unset_environment=1)`` does: workers never see it.

Notifying never blocks and never stops the master: the socket is non-blocking, and a
failed send is logged once (then at debug level) and otherwise ignored.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import MutableMapping

__all__ = ["ENV_NAME", "Notifier", "address_of"]

log = logging.getLogger("swoolish.master")

ENV_NAME = "NOTIFY_SOCKET"


def address_of(value: str) -> str | bytes | None:
    """The socket address ``$NOTIFY_SOCKET`` names, or None if it names none we reach.

    A leading ``@`` is the abstract namespace (unix(7)): the name with a NUL byte first.
    Other address kinds (``vsock:`` …) are not spoken here.
    """
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    return None


class Notifier:
    """Sends sd_notify datagrams; every method is a no-op without ``$NOTIFY_SOCKET``."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address
        self.ready_sent = False  # READY=1 for the first generation went out
        self.stopping_sent = False
        self._failed = False  # a send failed already (logged once)
        self._sock: socket.socket | None = None
        if address is not None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            self._sock.setblocking(False)

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str]) -> Notifier:
        """Take ``$NOTIFY_SOCKET`` out of ``environ`` (workers must not inherit it)."""
        value = environ.pop(ENV_NAME, "")
        address = address_of(value) if value else None
        if value and address is None:
            log.warning(
                "%s=%r is no socket path or @name; systemd is not notified", ENV_NAME, value
            )
        return cls(address)

    @property
    def active(self) -> bool:
        return self._sock is not None

    def ready(self, status: str) -> None:
        """The service serves: start-up or a reload is over (``READY=1``)."""
        self.ready_sent = True
        self._send(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")

    def reloading(self, status: str) -> None:
        """A reload began. ``MONOTONIC_USEC`` lets ``Type=notify-reload`` match this
        message to the reload it asked for (systemd.service(5))."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send(f"RELOADING=1\nMONOTONIC_USEC={usec}\nSTATUS={status}")

    def stopping(self, status: str) -> None:
        """Shutdown began (``STOPPING=1``); sent once."""
        if not self.stopping_sent:
            self.stopping_sent = True
            self._send(f"STOPPING=1\nSTATUS={status}")

    def close(self) -> None:
        """Close the socket (also in a forked worker, which must not notify)."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def _send(self, state: str) -> None:
        if self._sock is None or self.address is None:
            return
        try:
            self._sock.sendto(state.encode(), self.address)
        except OSError as exc:
            level = logging.DEBUG if self._failed else logging.WARNING
            self._failed = True
            log.log(
                level,
                "could not notify systemd through %s (%s); the server goes on (logged once)",
                ENV_NAME,
                exc,
            )
