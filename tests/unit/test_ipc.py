"""Channels between processes (swoolish.shared.ipc) on real SEQPACKET socketpairs, in one
process, with the socket buffers forced to a default Linux's (212992 bytes, however large
this machine's ``net.core.wmem_max`` is)."""

from __future__ import annotations

import os
import socket
import time

import pytest

from swoolish.core.messages import (
    HandoffAck,
    Pipe,
    Push,
    Ready,
    Route,
    Routed,
    StatsPoll,
    ToRegion,
    encode,
)
from swoolish.shared import ipc

DEFAULT_LINUX_BUFFER = 212992  # net.core.wmem_max / rmem_max of a default Linux


@pytest.fixture
def pair(monkeypatch):
    """A channel pair with both socket buffers forced to DEFAULT_LINUX_BUFFER."""
    monkeypatch.setenv(ipc.BUFFER_ENV, str(DEFAULT_LINUX_BUFFER))
    a, b = ipc.channel_pair(8 * 1024 * 1024)  # what the master asks for; capped
    assert a.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) <= 2 * DEFAULT_LINUX_BUFFER
    sender, receiver = ipc.Channel(a), ipc.Channel(b)
    yield sender, receiver
    sender.close()
    receiver.close()


def pump(sender: ipc.Channel, receiver: ipc.Channel, count: int, seconds: float = 10.0):
    """Flush the sender and read the receiver until ``count`` messages arrived."""
    got: list = []
    deadline = time.monotonic() + seconds
    while len(got) < count:
        assert time.monotonic() < deadline, f"only {len(got)} of {count} messages arrived"
        sender.flush()
        got.extend(receiver.receive())
    return got


def big_route(size: int, tag: int) -> Route:
    return Route(ToRegion(tag), [Push(tag, bytes([tag % 256]) * size, 2)])


def test_a_message_larger_than_the_socket_buffer_arrives_whole_with_its_descriptors(pair):
    sender, receiver = pair
    r, w = os.pipe()
    message = Routed([Push(7, os.urandom(2 * 1024 * 1024), 2)])  # 2 MiB > 416 KiB
    assert sender.send(message, [r])
    os.close(r)  # ours: the channel keeps its own copy until the descriptor is sent
    [(got, fds)] = pump(sender, receiver, 1)
    assert got == message
    assert len(fds) == 1
    os.write(w, b"x")
    assert os.read(fds[0], 1) == b"x"  # the very pipe we sent
    ipc.close_fds(fds)
    os.close(w)
    assert sender.queued == 0 and receiver.dropped == 0


def test_large_and_small_messages_interleaved_keep_their_order_and_descriptors(pair):
    sender, receiver = pair
    sizes = [10, 300_000, 5, 1_048_576, 0, 700_000, 64 * 1024, 64 * 1024 - 1, 1, 2_000_000]
    pipes = []
    for tag, size in enumerate(sizes):
        r, w = os.pipe()
        pipes.append((r, w))
        assert sender.send(big_route(size, tag), [r] if tag % 3 == 0 else [])
        sender.send(StatsPoll())  # a small message between every large one
    got = pump(sender, receiver, 2 * len(sizes))
    routes = [(m, fds) for m, fds in got[0::2]]
    assert [m for m, _ in got[1::2]] == [StatsPoll()] * len(sizes)
    for tag, (message, fds) in enumerate(routes):
        assert message == big_route(sizes[tag], tag)
        assert len(fds) == (1 if tag % 3 == 0 else 0)
        ipc.close_fds(fds)
    for r, w in pipes:
        ipc.close_fds([r, w])


def test_a_full_queue_refuses_instead_of_blocking_and_takes_again_once_drained(pair):
    sender, receiver = pair
    sender.limit = 1024 * 1024
    backlog: list[bool] = []
    sender.on_backlog = backlog.append
    accepted = sum(sender.send(big_route(200_000, i)) for i in range(40))  # nobody reads
    assert 0 < accepted < 40
    assert sender.refused == 40 - accepted
    assert backlog == [True]
    assert sender.send(StatsPoll(), essential=True)  # small bookkeeping still goes
    got = pump(sender, receiver, accepted + 1)
    assert [m.target.region for m, _ in got[:-1]] == list(range(accepted))
    assert got[-1][0] == StatsPoll()
    assert backlog == [True, False]
    assert sender.send(big_route(200_000, 99))


def test_what_was_read_before_a_truncated_packet_is_kept_and_reading_goes_on(pair):
    sender, receiver = pair
    r, w = os.pipe()
    sender.send(Ready(1))
    # A packet over the channel's packet size (a peer that does not follow the protocol):
    # the kernel cuts it for the receiver, who must drop it alone, descriptors closed.
    socket.send_fds(sender.sock, [b"\x00" + b"x" * (ipc.FRAGMENT_BYTES + 10)], [r])
    os.close(r)
    sender.send(Ready(2))
    got = pump(sender, receiver, 2)
    assert [m for m, _ in got] == [Ready(1), Ready(2)]
    assert receiver.dropped == 1
    os.close(w)  # the receiver's copy of r was closed: nothing is left open on the pipe


def test_undecodable_and_disordered_packets_are_dropped_alone(pair):
    sender, receiver = pair
    sock = sender.sock
    sock.send(b"\x00not a pickle")  # whole, undecodable
    sock.send(b"\x02a fragment whose start never came")
    payload = encode(Ready(3))
    sock.send(b"\x01" + payload[:5])  # a start whose end never comes …
    sender.send(Ready(4))  # … cut off by the next message
    got = pump(sender, receiver, 1)
    assert [m for m, _ in got] == [Ready(4)]
    assert receiver.dropped == 3


def test_eof_comes_after_the_messages_already_waiting(pair):
    sender, receiver = pair
    sender.send(Routed([Pipe(0, b"last words")]))
    sender.close()
    assert [m for m, _ in receiver.receive()] == [Routed([Pipe(0, b"last words")])]
    with pytest.raises(EOFError):
        receiver.receive()


def test_last_words_survive_a_peer_that_closed_with_our_messages_unread(pair):
    """A worker that exits with a message of the master's unread makes Linux report
    ECONNRESET once on the master's end, ahead of the worker's last messages, which are
    still there: they must be read, not lost with the error."""
    worker, master = pair
    worker.send(Routed([Pipe(0, b"last words")]))
    master.send(Routed([Pipe(1, b"never read")]))
    worker.close()
    assert [m for m, _ in master.receive()] == [Routed([Pipe(0, b"last words")])]
    with pytest.raises(EOFError):
        master.receive()


def test_a_send_to_a_closed_peer_is_refused_not_raised(pair):
    sender, receiver = pair
    receiver.close()
    assert not sender.send(HandoffAck(1, [], ""))
    assert sender.broken


def test_when_drained_waits_for_the_queue(pair):
    sender, receiver = pair
    sender.send(big_route(1_000_000, 1))
    done: list[bool] = []
    sender.when_drained(lambda: done.append(True))
    assert not done
    pump(sender, receiver, 1)
    assert done == [True]
