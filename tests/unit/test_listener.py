"""swoolish.worker.listener: the accept balance on a real listening socket and a real
shared session table (one region is this worker's, one a neighbour's)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import Callable, Iterator

import pytest
import uvloop

from swoolish.core.stats import Counts
from swoolish.shared.table import OPEN, RegionWriter, SessionTable
from swoolish.worker import listener as listener_module
from swoolish.worker.listener import Listener, over_share, queued_connections


@pytest.mark.parametrize(
    ("mine", "workers", "connections", "paused", "over"),
    [
        (5, 1, 5, False, False),  # alone: nobody to leave connections to
        (2, 4, 2, False, False),  # within the slack of 2
        (3, 4, 3, False, True),  # 3 > 0.75 + 2
        (3, 4, 3, True, True),  # paused: waits until within half the slack
        (3, 4, 5, True, True),  # 3 > 1.25 + 1
        (2, 4, 8, True, False),  # 2 <= 2 + 1: accept again
        (600, 2, 1000, False, True),  # the slack grows with the average: 500 + 31.25
        (530, 2, 1000, False, False),
    ],
)
def test_over_share(mine, workers, connections, paused, over) -> None:
    assert over_share(mine, workers, connections, paused=paused) is over


def test_a_listeners_queue_length_is_read_from_the_kernel() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        assert queued_connections(server) == 0
        clients = [socket.create_connection(server.getsockname()) for _ in range(2)]
        try:
            assert queued_connections(server) == 2
            server.accept()[0].close()
            assert queued_connections(server) == 1
        finally:
            for client in clients:
                client.close()


def test_a_unix_socket_has_no_visible_queue_and_no_balance(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(tmp_path / "s"))
        server.listen(8)
        assert queued_connections(server) is None
        table = SessionTable(2, 16)
        loop = asyncio.new_event_loop()
        listener = Listener(loop, server.dup(), _never, table, RegionWriter(table, 0), Counts())
        assert not listener.balanced
        listener.close()
        loop.close()


async def _never(sock: socket.socket) -> asyncio.AbstractServer:
    raise AssertionError("not started")


class Balanced:
    """A Listener on a real loop and socket, region 0 of a two-region table ours."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = self.sock.getsockname()
        self.table = SessionTable(2, 64)
        for region in (0, 1):
            self.table.claim(region)
        self.mine = RegionWriter(self.table, 0)
        self.neighbour = RegionWriter(self.table, 1)
        self.neighbour.set_serving(True)
        self.stats = Counts()
        self.accepted = 0
        self.listener = Listener(loop, self.sock, self._serve, self.table, self.mine, self.stats)
        self._sid = 0

    def _serve(self, sock: socket.socket) -> asyncio.Future[asyncio.AbstractServer]:
        outer = self

        class Count(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                outer.accepted += 1

        return asyncio.ensure_future(self.loop.create_server(Count, sock=sock))

    def hold(self, writer: RegionWriter, count: int) -> None:
        for _ in range(count):
            self._sid += 1
            writer.insert(self._sid, OPEN)


@pytest.fixture
def balanced() -> Iterator[Balanced]:
    loop = uvloop.new_event_loop()
    setup = Balanced(loop)
    try:
        yield setup
    finally:
        setup.listener.close()
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def run_until(loop: asyncio.AbstractEventLoop, predicate: Callable[[], bool], what: str) -> None:
    """Run the loop until ``predicate`` holds, failing after 5 s."""

    async def wait() -> None:
        deadline = time.monotonic() + 5
        while not predicate():
            assert time.monotonic() < deadline, f"never: {what}"
            await asyncio.sleep(0.005)

    loop.run_until_complete(wait())


def test_a_worker_over_its_share_pauses_and_resumes_when_the_others_catch_up(balanced) -> None:
    loop, listener = balanced.loop, balanced.listener
    loop.run_until_complete(listener.open())
    assert listener.accepting and balanced.table.serving_load() == (2, 0)
    balanced.hold(balanced.mine, 10)
    listener.accepted()
    run_until(loop, lambda: not listener.accepting, "paused at 10 against 0")
    assert balanced.stats["accept_pauses"] == 1
    balanced.hold(balanced.neighbour, 6)  # 10 > 8 + 1: still too many
    loop.run_until_complete(asyncio.sleep(3 * listener_module.RECHECK_INTERVAL))
    assert not listener.accepting
    balanced.hold(balanced.neighbour, 4)  # 10 <= 10 + 1
    run_until(loop, lambda: listener.accepting, "accepting once the neighbour caught up")


def test_a_paused_worker_takes_a_waiting_client_whatever_the_counts(balanced) -> None:
    """The neighbour is stuck (it holds nothing, accepts nothing): a client must not wait."""
    loop, listener = balanced.loop, balanced.listener
    loop.run_until_complete(listener.open())
    balanced.hold(balanced.mine, 20)
    listener.accepted()
    run_until(loop, lambda: not listener.accepting, "paused at 20 against 0")
    with socket.create_connection(balanced.address):
        run_until(loop, lambda: balanced.accepted == 1, "the waiting client accepted")
    assert listener.accepting


def test_no_pause_while_clients_wait_in_the_queue(balanced) -> None:
    """A reconnect storm: connections queue faster than they are taken; nobody pauses.
    (The server here listens elsewhere, so the queue stays as the test made it.)"""
    loop, listener = balanced.loop, balanced.listener
    elsewhere = socket.create_server(("127.0.0.1", 0))

    def serve_elsewhere(sock: socket.socket) -> asyncio.Future[asyncio.AbstractServer]:
        sock.close()
        return asyncio.ensure_future(loop.create_server(asyncio.Protocol, sock=elsewhere))

    listener._serve = serve_elsewhere
    loop.run_until_complete(listener.open())
    balanced.hold(balanced.mine, 20)
    with socket.create_connection(balanced.address):
        assert queued_connections(balanced.sock) == 1
        listener.accepted()
        loop.run_until_complete(asyncio.sleep(3 * listener_module.CHECK_DELAY))
        assert listener.accepting and balanced.stats["accept_pauses"] == 0
        balanced.sock.accept()[0].close()  # taken by a neighbour, say
    assert queued_connections(balanced.sock) == 0
    listener.accepted()
    run_until(loop, lambda: not listener.accepting, "paused once nobody waits")


def test_closed_for_good_never_accepts_again(balanced) -> None:
    loop, listener = balanced.loop, balanced.listener
    loop.run_until_complete(listener.open())
    balanced.hold(balanced.mine, 10)
    listener.accepted()
    run_until(loop, lambda: not listener.accepting, "paused")
    listener.close()
    assert balanced.table.serving_load() == (1, 0)  # only the neighbour takes clients
    loop.run_until_complete(listener.open())
    assert not listener.accepting
    with contextlib.suppress(OSError), socket.create_connection(balanced.address, timeout=0.2):
        pass
    loop.run_until_complete(asyncio.sleep(2 * listener_module.RECHECK_INTERVAL))
    assert balanced.accepted == 0


def test_a_failed_resume_is_logged_once_and_retried(balanced, caplog) -> None:
    """Out of descriptors, say: the paused worker retries, with one line per outage."""
    loop, listener = balanced.loop, balanced.listener
    loop.run_until_complete(listener.open())
    serve, failures = listener._serve, []

    def failing(sock: socket.socket) -> asyncio.Future[asyncio.AbstractServer]:
        sock.close()
        failures.append(1)
        raise OSError(24, "Too many open files")

    balanced.hold(balanced.mine, 10)
    listener.accepted()
    run_until(loop, lambda: not listener.accepting, "paused")
    listener._serve = failing
    balanced.hold(balanced.neighbour, 10)  # caught up: it wants to accept again
    with caplog.at_level("WARNING", logger="swoolish.worker"):
        run_until(loop, lambda: len(failures) >= 3, "three attempts")
        listener._serve = serve
        run_until(loop, lambda: listener.accepting, "accepting once descriptors are back")
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "could not start accepting again ([Errno 24] Too many open files); retrying",
        "accepting again",
    ]
