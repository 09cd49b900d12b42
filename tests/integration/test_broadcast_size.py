"""``broadcast`` measures text in the bytes it goes out as (UTF-8), not in characters:
past 1 MiB of them it raises ValueError on every path (docs/quickstart.md). Counted in
characters, a chat line of 349,523 "€" and its prefix (1,048,581 bytes) passed the
check, reached this node's sessions, and the cluster bus then refused it for the other
nodes without a word."""

from __future__ import annotations

from support import serving, timeout, write_app

APP = """
    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("message")
    def on_message(server, frame):
        try:
            handed = server.broadcast(frame.data * int(frame.data == "ok" or 349_526))
        except ValueError as exc:
            server.push(frame.fd, f"refused: {exc}")
        else:
            server.push(frame.fd, f"handed to {handed}")
"""


def test_a_text_over_1_mib_in_utf8_is_refused_however_few_its_characters(tmp_path):
    target = f"{write_app(tmp_path, APP)}:server"
    with serving(target, tmp_path) as server, server.connect() as ws:
        ws.send("€")  # 3 bytes each: 1,048,578 bytes in 349,526 characters
        assert ws.recv(timeout=timeout(10)) == "refused: broadcast data over 1048576 bytes"
        ws.send("ok")
        assert ws.recv(timeout=timeout(10)) == "ok"  # the broadcast itself, to this session
        assert ws.recv(timeout=timeout(10)) == "handed to 1"
