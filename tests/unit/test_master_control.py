"""The master's side of one control client (master/control.py): a reply never makes
the master wait, and a client is out of the selector before its socket closes. The
served control socket is tested in tests/adversarial/test_local_users.py."""

from __future__ import annotations

import json
import socket

from swoolish.master.control import ControlClient


def test_replies_wait_in_the_socket_buffer_for_a_client_that_reads():
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    client = ControlClient(ours, lambda sock: None)
    try:
        for number in range(3):
            client.send({"event": "waiting", "number": number})
        theirs.shutdown(socket.SHUT_WR)
        client.close()
        lines = theirs.makefile("rb").read().splitlines()
        assert [json.loads(line)["number"] for line in lines] == [0, 1, 2]
    finally:
        theirs.close()


def test_a_client_that_does_not_read_is_hung_up_on_and_the_socket_never_blocks():
    """Before, each reply switched the socket to blocking with a 1 s timeout: the
    master waited up to a second per reply on a client that did not read."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    unregistered: list[int] = []
    client = ControlClient(ours, lambda sock: unregistered.append(sock.fileno()))
    try:
        replies = 0
        while not client.closed:
            assert replies < 100_000, "never hung up on"
            client.send({"event": "waiting", "padding": "x" * 1000})
            replies += 1
            assert ours.gettimeout() == 0.0  # still non-blocking
        assert len(unregistered) == 1 and unregistered[0] >= 0  # before the close
        assert ours.fileno() == -1
        client.send({"event": "after"})  # a closed client: nothing happens
    finally:
        theirs.close()
