"""Test app for what HTTP requests cost a worker (tests/adversarial/test_http_memory.py).

Tests serve a small wrapper, written with ``write_app``, that calls :func:`build` with
the settings they need, as ``path/to/app.py:server``. The ``request`` handler is a
coroutine, as an app that awaits I/O has, so that pipelined requests wait parsed
behind one that is not answered yet:

- ``/hold``: waits until ``/release`` has been asked for (on another connection), then
  answers ``held``; it reads nothing of the request;
- ``/release``: lets every ``/hold`` go on, answers ``released``;
- ``/body``: the body's type, length and SHA-256, ``bytes:LENGTH:SHA256``;
- ``/query``: ``request.query`` as JSON;
- anything else: ``ok``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from swoolish import WebSocketServer

released = asyncio.Event()


async def on_request(request: Any, response: Any) -> None:
    path = request.path
    if path == "/hold":
        await released.wait()
        response.end("held")
    elif path == "/release":
        released.set()
        response.end("released")
    elif path == "/body":
        body = request.body
        response.end(f"{type(body).__name__}:{len(body)}:{hashlib.sha256(body).hexdigest()}")
    elif path == "/query":
        response.end(json.dumps(request.query))
    else:
        response.end("ok")


def build(**settings: Any) -> WebSocketServer:
    server = WebSocketServer(**settings)
    server.on("request", on_request)
    return server
