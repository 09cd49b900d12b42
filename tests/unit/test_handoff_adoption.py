"""A batch of handed-over sessions is adopted side by side, on a real uvloop loop and
real sockets: in a few turns of the loop whatever its size, not two turns per session.

Each turn of a worker's loop also gives every busy client its share (up to
SHARE_SECONDS): with one client flooding the new worker, adopting the first batch of
16 one session at a time took 160 ms, and those clients' answers waited for it (with
the held answers of the flood applied at once, up to 3 s; docs/reload.md).
"""

from __future__ import annotations

import asyncio
import socket
from collections import Counter
from typing import Any

import pytest
import uvloop

from swoolish.core.messages import MovingSession
from swoolish.shared import ipc
from swoolish.worker import handoff
from swoolish.worker.handoff import ADOPT_SLICE, Adopter


class Session(asyncio.Protocol):
    """Stands for WsConnection.adopting's session: what it is made with, and when."""

    made: list[int] = []
    turn_of: dict[int, int] = {}  # sid -> the turn of the loop it was made in
    turn = 0

    def __init__(self, sid: int) -> None:
        self.sid = sid

    @classmethod
    def adopting(cls, worker: Any, record: MovingSession) -> Session:
        return cls(record.sid)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        Session.made.append(self.sid)
        Session.turn_of[self.sid] = Session.turn
        self.transport = transport


class Router:
    def __init__(self) -> None:
        self.announced = 0
        self.lost_sids: list[int] = []

    def announce(self) -> None:
        self.announced += 1

    def lost(self, sid: int) -> None:
        self.lost_sids.append(sid)


class Host:
    """The little of a worker an Adopter uses to adopt a batch."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.router = Router()

    def bus_adopting(self, sid: int, marks: Any) -> None:
        pass


def session(sid: int) -> MovingSession:
    return MovingSession(
        sid, ("127.0.0.1", 1), 0.0, 0, 0, [], None, None, [], 0, None, b"", b"", None, []
    )


@pytest.fixture
def adopter(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(handoff, "WsConnection", Session)
    Session.made, Session.turn_of, Session.turn = [], {}, 0
    loop = uvloop.new_event_loop()
    ours, theirs = ipc.channel_pair()
    adopter = Adopter(Host(loop), theirs)
    yield adopter
    adopter.close()
    adopter.inbox.close()
    ours.close()
    loop.close()


@pytest.mark.parametrize("size", [16, 200])
def test_a_batch_is_adopted_in_a_few_turns_of_the_loop_in_its_order(adopter, size) -> None:
    """1. a batch of 16 (then 200) sessions on real sockets  2. adopting it takes a
    handful of turns of the loop per ADOPT_SLICE sessions, 7 for 16 here (before: two
    per session, 34 for 16), and no turn makes more than ADOPT_SLICE of them, so that
    the clients adopted before get theirs in between  3. every session is made in the
    batch's order, and the batch is announced once."""
    loop = adopter.worker.loop
    pairs = [socket.socketpair() for _ in range(size)]

    def count_turn() -> None:
        Session.turn += 1
        loop.call_soon(count_turn)

    async def adopt() -> None:
        loop.call_soon(count_turn)
        taken = [(session(sid), theirs.detach()) for sid, (_ours, theirs) in enumerate(pairs, 1)]
        await adopter._adopt(taken, None, None)

    try:
        loop.run_until_complete(adopt())
        assert Session.made == list(range(1, size + 1))
        assert adopter.adopted == size and adopter.worker.router.announced == 1
        slices = -(-size // ADOPT_SLICE)
        assert Session.turn <= 8 * slices, f"{Session.turn} turns for a batch of {size}"
        per_turn = Counter(Session.turn_of.values())
        assert max(per_turn.values()) <= ADOPT_SLICE
    finally:
        for ours, _theirs in pairs:
            ours.close()
        loop.run_until_complete(asyncio.sleep(0))
