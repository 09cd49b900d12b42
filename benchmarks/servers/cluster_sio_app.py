"""python-socketio node for the cluster benchmark: an ASGI app whose nodes share one Redis.

Every node started with the same ``SIO_REDIS_URL`` and ``SIO_CHANNEL`` forms one cluster
(``AsyncRedisManager``), so an emit on one node reaches the clients of all of them. Run::

    SIO_REDIS_URL=redis://127.0.0.1:6379/0 uvicorn benchmarks.servers.cluster_sio_app:app \\
        --port 9601 --loop uvloop --http httptools --ws websockets-sansio

Events (the client sends ``{"t": monotonic_ns, "k": seq}``, passed on untouched):

* ``bcast``: emit ``b`` to every client of every node.
* ``push`` (with ``"to": sid``): emit ``p`` to that one client, wherever it is connected.

A client that asks for an acknowledgement is answered ``{"raised": null}``, or the ``repr``
of what ``emit`` raised (then also logged), so the failure benchmark sees what the
application saw while Redis was down.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import socketio

REDIS_URL = os.environ.get("SIO_REDIS_URL", "redis://127.0.0.1:6379/0")
CHANNEL = os.environ.get("SIO_CHANNEL", "socketio")

sio = socketio.AsyncServer(
    async_mode="asgi",
    client_manager=socketio.AsyncRedisManager(REDIS_URL, channel=CHANNEL),
    cors_allowed_origins="*",
    transports=["websocket"],
    logger=False,
    engineio_logger=False,
)
app = socketio.ASGIApp(sio)
log = logging.getLogger(__name__)


async def emit(event: str, data: dict[str, Any], to: str | None = None) -> dict[str, Any]:
    """``sio.emit``, reporting instead of raising: the sender's ack says what happened."""
    try:
        await sio.emit(event, data, to=to)
    except Exception as exc:
        log.warning("emit raised: %r", exc)
        return {"raised": repr(exc)}
    return {"raised": None}


@sio.on("bcast")
async def bcast(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    """One message to every session of the cluster (local ones first, then via Redis)."""
    return await emit("b", data)


@sio.on("push")
async def push(sid: str, data: dict[str, Any]) -> dict[str, Any]:
    """One message to one session, which may live on another node."""
    return await emit("p", {"t": data["t"], "k": data["k"]}, to=data["to"])
