"""One client's burst of messages cannot keep a worker's other clients waiting: the
frames of a read are handled a share at a time (``SHARE_SECONDS``), then the rest waits
for the next loop iteration (swoolish.worker.websocket, ``data_received``). On a real
``swoolish serve`` process with a synchronous ``message`` handler that takes 2 ms.

Before, the 5,000 tiny messages of one read went through the handler in one go: another
client of the worker waited 10 s for its answer (a relay app on 4 workers, or a cluster
node whose bus link then timed out, saw the same).
"""

from __future__ import annotations

import socket

import pytest
from support import (
    masked_frame,
    raw_handshake,
    serving,
    tcp_row,
    timeout,
    wait_until,
    write_app,
)

APP = """
    import time
    from swoolish import WebSocketServer

    server = WebSocketServer()
    state = {"handled": 0}

    @server.on("message")
    def on_message(server, frame):
        if frame.data == "probe":
            server.push(frame.fd, str(state["handled"]))
        else:
            time.sleep(0.002)  # the app's work for one message
            state["handled"] += 1
"""


def burst(count: int, fragmented: bool) -> bytes:
    """``count`` one-byte text messages, each whole (the fast path) or in two fragments
    (websockets' protocol object)."""
    if not fragmented:
        return masked_frame(0x1, b"x") * count
    return (masked_frame(0x1, b"x", fin=False) + masked_frame(0x0, b"y")) * count


def worker_has_read_some(port: int, sock: socket.socket, sent: int) -> bool:
    """All ``sent`` bytes reached the server's socket and the worker has read some."""
    mine = sock.getsockname()[1]
    client, served = tcp_row(mine, port), tcp_row(port, mine)
    return (
        client is not None
        and served is not None
        and int(client[4].split(":")[0], 16) == 0  # tx_queue: all acknowledged
        and int(served[4].split(":")[1], 16) < sent  # rx_queue: not all waiting
    )


@pytest.mark.parametrize("fragmented", [False, True], ids=["whole", "fragmented"])
def test_another_client_is_answered_in_the_middle_of_a_burst(tmp_path, fragmented):
    """1. a client sends 5,000 messages in one write (10 s of the handler's work)
    2. once the worker has read some of them, another client asks how many were handled: it is
    answered at once, while the burst is still being handled (before: after all of it)
    3. the burst's client goes; the worker serves on."""
    count = 5_000
    target = f"{write_app(tmp_path, APP)}:server"
    with serving(target, tmp_path) as server:
        flooder, rest = raw_handshake(server.port)
        with flooder:
            assert rest == b""
            sent = burst(count, fragmented)
            flooder.sendall(sent)
            wait_until(lambda: worker_has_read_some(server.port, flooder, len(sent)))
            with server.connect() as other:
                other.send("probe")
                handled = int(other.recv(timeout=timeout(5)))
        assert handled < count
        with server.connect() as other:
            other.send("probe")
            assert int(other.recv(timeout=timeout(5))) >= handled
