"""Echo server: every message comes back to its sender (used by tests and Autobahn)."""

from swoolish import WebSocketServer

server = WebSocketServer("127.0.0.1", 9501)


@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, frame.data)


if __name__ == "__main__":
    server.start()
