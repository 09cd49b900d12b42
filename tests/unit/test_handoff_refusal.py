"""A refused hand-off batch leaves no descriptor open in the new worker."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from swoolish.core.messages import HANDOFF_VERSION, HandoffAck, HandoffBatch, MovingSession
from swoolish.core.settings import Settings
from swoolish.shared import ipc
from swoolish.worker.handoff import Adopter
from swoolish.worker.sessions import SessionMap


class Host:
    """The little of a worker an Adopter uses when it refuses a batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.settings = Settings({})
        self.connections = SessionMap()
        self.draining = False

    def track(self, coro):
        coro.close()
        raise AssertionError("a refused batch adopts nothing")


def session(sid: int) -> MovingSession:
    return MovingSession(
        sid, ("127.0.0.1", 1), 0.0, 0, 0, [], None, None, [], 0, None, b"", b"", None, []
    )


@pytest.fixture
def inbox():
    loop = asyncio.new_event_loop()
    ours, theirs = ipc.channel_pair()
    sender = ipc.Channel(ours)
    adopter = Adopter(Host(loop), theirs)
    yield sender, adopter
    adopter.close()
    adopter.inbox.close()
    sender.close()
    loop.close()


def test_a_batch_whose_descriptor_count_does_not_match_is_refused_and_its_sockets_closed(inbox):
    """Two sessions, one socket: refused as a whole, and the socket that did arrive is
    closed in the new worker (its client end sees EOF once the sender closes its copy)."""
    sender, adopter = inbox
    client, moving = socket.socketpair()
    batch = HandoffBatch(HANDOFF_VERSION, 1, 0, time.monotonic() + 30, [session(1), session(2)])
    assert sender.send(batch, [moving.fileno()])
    moving.close()  # the old worker's copy; only the new worker's copy is left
    adopter._readable()
    [(ack, _)] = sender.receive()
    assert ack == HandoffAck(1, [], "descriptor count does not match the batch")
    client.settimeout(5)
    assert client.recv(1) == b"", "the refused socket is still open in the new worker"
    client.close()
