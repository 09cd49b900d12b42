"""swoolish app for the reload benchmark: WebSocket echo plus a tiny plain-HTTP answer.

Run with ``swoolish serve benchmarks/servers/swoolish_reload_app.py:server --workers 4``.
"""

from swoolish import WebSocketServer

server = WebSocketServer("127.0.0.1", 9501)


@server.on("message")
def on_message(server, frame):
    server.push(frame.fd, frame.data)


@server.on("request")
def on_request(request, response):
    response.header("Content-Type", "text/plain")
    response.end("ok\n")
