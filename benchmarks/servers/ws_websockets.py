"""Echo server on the ``websockets`` package's asyncio implementation, running on uvloop."""

import argparse

import uvloop
from websockets.asyncio.server import serve


async def echo(ws):
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    # Keepalive pings off, as in the other servers; compression on (the default) when offered.
    async with serve(echo, host, port, ping_interval=None, max_size=None) as server:
        await server.serve_forever()


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvloop.run(main(a.host, a.port))
