"""swoolish app for the HTTP benchmarks: ``GET /`` (any path) answers ``hello`` as text/plain.

Run with ``swoolish serve benchmarks/servers/http_swoolish_app.py:server --workers 1``. The
peers (``http_uvicorn.py``, ``http_aiohttp.py``) answer the same 5-byte body with the same
Content-Type, so the servers differ only in what they do around the handler.
"""

from swoolish import WebSocketServer

server = WebSocketServer("127.0.0.1", 9501)


@server.on("request")
def on_request(request, response):
    response.header("Content-Type", "text/plain")
    response.end("hello")
