"""Echo server on aiohttp's WebSocket support, running on uvloop.

``--backlog`` is the listen backlog (2048 by default, as swoolish's; aiohttp's own default is
128). ``--reply-length`` answers every message with its length, as text, instead of echoing
it (the ``large32m`` scenario of ``benchmarks/run.py``).
"""

import argparse
import asyncio

import uvloop
from aiohttp import WSMsgType, web


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == WSMsgType.TEXT:
            await ws.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await ws.send_bytes(msg.data)
    return ws


async def reply_length(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(max_msg_size=0)
    await ws.prepare(request)
    async for msg in ws:
        if msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
            await ws.send_str(str(len(msg.data)))
    return ws


async def main(host: str, port: int, backlog: int, by_length: bool) -> None:
    app = web.Application()
    app.router.add_get("/", reply_length if by_length else echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port, backlog=backlog).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (2048, as swoolish)")
    p.add_argument("--reply-length", action="store_true", help="answer with the length")
    a = p.parse_args()
    uvloop.run(main(a.host, a.port, a.backlog, a.reply_length))
