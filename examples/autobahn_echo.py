"""Echo server for the Autobahn|Testsuite fuzzing cases (``scripts/autobahn.sh``).

Like ``examples/echo.py``, but accepts the 16 MiB messages of the 9.* limits cases.
"""

from swoolish import WebSocketServer

server = WebSocketServer("127.0.0.1", 9501, max_message_size=64 * 1024 * 1024)


@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, frame.data, frame.opcode)


if __name__ == "__main__":
    server.start()
