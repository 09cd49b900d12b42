"""The master's part of cluster mode: take this node's number from Redis, once, at start.

A node number is never given twice (docs/cluster.md, "Node numbers"): it comes from
``INCR sw:{c}:epoch``, and is then claimed with ``SET sw:{c}:node:{n} … NX PX 3000``
(the workers keep that key alive). A claim that fails (a Redis that lost its counter
while a node holding that number lives) takes the next number. Every session id of
this node carries the number (swoolish.shared.ids), so a restarted node's ids never
collide with the ids its previous run handed out.

A node is also named by a random *token*, drawn at each start: its node key holds it,
and its workers' heartbeats and leave messages carry it. A Redis that lost its data can
hand a number out again; the token tells the other nodes that a number heard again is a
new node, not the one that left (docs/cluster.md, "Failures").
"""

from __future__ import annotations

import logging
import os
import secrets
import time

from ..core.bus import Channels, claim_value
from ..core.errors import SettingError
from ..shared.ids import MAX_NODE

__all__ = ["claim_node", "new_token"]

log = logging.getLogger("swoolish.cluster")

CLAIM_TIMEOUT = 5.0  # seconds the master tries to reach Redis at start
CLAIM_ATTEMPTS = 16  # numbers tried before giving up (each taken by a live node)


def new_token() -> int:
    """A node start's token: random, never 0 (0 reads as "no token", an older node)."""
    return secrets.randbits(64) or 1


def claim_node(url: str, cluster_name: str, token: int, timeout: float = CLAIM_TIMEOUT) -> int:
    """This node's number, fresh from Redis; a ``SettingError`` (one line, exit 2) when
    Redis cannot be reached within ``timeout`` seconds or refuses."""
    try:
        import redis
    except ImportError:
        raise SettingError(
            "redis_url needs the Redis client: pip install 'swoolish[cluster]'"
        ) from None
    names = Channels(cluster_name)
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                return _claim(client, names, token)
            except redis.ConnectionError as exc:
                if time.monotonic() >= deadline:
                    raise SettingError(f"cannot reach Redis at {url}: {exc}") from None
                time.sleep(0.5)
            except redis.RedisError as exc:
                raise SettingError(f"Redis at {url} refused: {exc}") from None
    finally:
        client.close()


def _claim(client: object, names: Channels, token: int) -> int:
    info = claim_value(token, os.getpid())
    for _ in range(CLAIM_ATTEMPTS):
        node = int(client.incr(names.epoch_key))  # type: ignore[attr-defined]
        if node > MAX_NODE:
            raise SettingError(
                f"cluster {names.name!r} has used all {MAX_NODE} node numbers; "
                f"delete the key {names.epoch_key} once no node of it runs"
            )
        if client.set(names.node_key(node), info, nx=True, px=3000):  # type: ignore[attr-defined]
            log.info("cluster %r: this is node %d", names.name, node)
            return node
    raise SettingError(f"cluster {names.name!r}: no free node number after {CLAIM_ATTEMPTS} tries")
