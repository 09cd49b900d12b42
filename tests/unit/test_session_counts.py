"""A worker's messages in and out: its sessions' own counts, summed (SessionMap.messages).

The worker keeps no counter of its own per message; these check that the sum stays the
messages this worker handled as sessions close, leave in a hand-off, arrive already
counted by another worker, or come back after a failed hand-off.
"""

from __future__ import annotations

from dataclasses import dataclass

from swoolish.worker.sessions import SessionMap


@dataclass
class Peer:
    messages_in: int = 0
    messages_out: int = 0
    peer: tuple[str, int] = ("127.0.0.1", 1)
    established: bool = True


def test_live_and_closed_sessions_both_count() -> None:
    sessions = SessionMap()
    a, b = Peer(), Peer()
    sessions.accepted(1, a)
    sessions.accepted(2, b)
    a.messages_in, a.messages_out = 3, 2
    b.messages_in = 1
    assert sessions.messages() == (4, 2)
    sessions.closing(1)
    a.messages_in += 5  # nothing it counts once gone is this worker's
    assert sessions.messages() == (4, 2)
    sessions.closing(1)  # twice: still counted once
    assert sessions.messages() == (4, 2)


def test_a_session_handed_on_stays_counted_here_for_what_it_did_here() -> None:
    old, new = SessionMap(), SessionMap()
    moving = Peer()
    old.accepted(7, moving)
    moving.messages_in, moving.messages_out = 10, 9
    old.moving(7)
    assert old.messages() == (10, 9)
    arrived = Peer(messages_in=10, messages_out=9)  # rebuilt from the record, counts kept
    new.adopted(7, arrived)
    assert new.messages() == (0, 0)
    arrived.messages_in += 1
    arrived.messages_out += 1
    assert new.messages() == (1, 1)
    new.closing(7)
    assert new.messages() == (1, 1)
    assert old.messages() == (10, 9)


def test_a_session_taken_back_is_not_counted_twice() -> None:
    sessions = SessionMap()
    conn = Peer()
    sessions.accepted(7, conn)
    conn.messages_in = 4
    sessions.moving(7)
    back = Peer(messages_in=4)  # the hand-off failed: ours again, as it left
    sessions.taken_back(7, back)
    assert sessions.messages() == (4, 0)
    back.messages_in += 1
    assert sessions.messages() == (5, 0)
