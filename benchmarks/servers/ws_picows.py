"""Echo server on picows (Cython WebSocket library), running on uvloop."""

import argparse
import asyncio

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server


class Echo(WSListener):
    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            transport.send(frame.msg_type, frame.get_payload_as_memoryview())


def listener_factory(request: WSUpgradeRequest) -> Echo:
    return Echo()


async def main(host: str, port: int) -> None:
    server = await ws_create_server(listener_factory, host, port)
    async with server:
        await server.serve_forever()
    await asyncio.sleep(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    a = p.parse_args()
    uvloop.run(main(a.host, a.port))
