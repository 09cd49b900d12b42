"""Echo server on the ``websockets`` package's asyncio implementation, running on uvloop.

``--backlog`` is the listen backlog (2048 by default, as swoolish's; websockets' own default
is asyncio's 100). ``--reply-length`` answers every message with its length, as text, instead
of echoing it (the ``large32m`` scenario of ``benchmarks/run.py``).
"""

import argparse

import uvloop
from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def reply_length(ws):
    async for message in ws:
        await ws.send(str(len(message)))


async def main(host: str, port: int, backlog: int, by_length: bool) -> None:
    # Keepalive pings off, as in the other servers; compression on (the default) when offered.
    # backlog= goes through to loop.create_server.
    handler = reply_length if by_length else echo
    async with serve(
        handler, host, port, ping_interval=None, max_size=None, backlog=backlog
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (2048, as swoolish)")
    p.add_argument("--reply-length", action="store_true", help="answer with the length")
    a = p.parse_args()
    uvloop.run(main(a.host, a.port, a.backlog, a.reply_length))
