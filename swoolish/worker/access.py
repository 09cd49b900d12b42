"""The access log: with ``access_log`` on, one INFO record of the ``swoolish.access``
logger per HTTP request answered and per WebSocket opened and closed
(docs/deployment.md, "Logs")::

    127.0.0.1:54321 - "GET /who HTTP/1.1" 200 12 0.8ms
    127.0.0.1:54321 - "WEBSOCKET /chat" open 101
    127.0.0.1:54321 - "WEBSOCKET /chat" close 1000 12.3s

An HTTP line has the status, the bytes of the body sent and the time from the start of
the answer (the request handler's turn) to the response written. A WebSocket's close
line has the close code (the client's, or ours when the client never answered; 1006
when no close frame was exchanged) and how long the connection lasted. A session
handed to a new worker in a reload is one connection: the old worker logs no close and
the new one no open; its close line comes from the worker that closes it.

Each record also carries its fields (``extra=``), which the JSON format writes as keys
of their own (``shared.logs.EXTRA_FIELDS``). Connections call these functions only
after testing ``settings.access_log``: off, the access log costs one boolean test per
request and nothing is formatted.
"""

from __future__ import annotations

import logging
import time

from ..shared.logs import ACCESS_LOGGER
from .request import Request

__all__ = ["client_address", "log_close", "log_open", "log_request", "request_client"]

log = logging.getLogger(ACCESS_LOGGER)


def client_address(peer: tuple[str, int]) -> str:
    """The client as ``host:port`` (``[v6]:port``); the host alone when its port is
    unknown (0: a client a trusted proxy named); ``-`` when there is no address."""
    host, port = peer
    if not host:
        return "-"
    if not port:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def request_client(peer: tuple[str, int], request: Request) -> str:
    """The client that sent ``request`` on a connection from ``peer``: the one place
    that decides which address an access line shows. The peer (with its port), unless
    a trusted proxy named another client (``proxy_headers``, ``request.remote_addr``)."""
    addr = request.remote_addr
    if addr and addr != peer[0]:
        return addr
    return client_address(peer)


def log_request(
    client: str,
    method: str,
    path: str,
    version: str,
    status: int,
    size: int,
    started: float,
) -> None:
    """One HTTP request answered; ``started`` is its ``time.perf_counter()``."""
    duration_ms = round((time.perf_counter() - started) * 1000, 3)
    log.info(
        '%s - "%s %s HTTP/%s" %d %d %.1fms',
        client,
        method,
        path,
        version,
        status,
        size,
        duration_ms,
        extra={
            "event": "request",
            "client": client,
            "method": method,
            "path": path,
            "http_version": version,
            "status": status,
            "bytes": size,
            "duration_ms": duration_ms,
        },
    )


def log_open(client: str, path: str) -> None:
    """A WebSocket handshake accepted (101)."""
    log.info(
        '%s - "WEBSOCKET %s" open 101',
        client,
        path,
        extra={"event": "open", "client": client, "path": path, "status": 101},
    )


def log_close(client: str, path: str, close_code: int, connect_time: float) -> None:
    """A WebSocket connection gone; ``connect_time`` is its ``time.time()`` at accept."""
    seconds = max(0.0, time.time() - connect_time)
    log.info(
        '%s - "WEBSOCKET %s" close %d %.1fs',
        client,
        path,
        close_code,
        seconds,
        extra={
            "event": "close",
            "client": client,
            "path": path,
            "close_code": close_code,
            "duration_ms": round(seconds * 1000, 1),
        },
    )
