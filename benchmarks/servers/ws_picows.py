"""Echo server on picows (Cython WebSocket library), running on uvloop.

``--backlog`` is the listen backlog (2048 by default, as swoolish's; ws_create_server passes
it to the create_server it uses, whose default is 100). ``--reply-length`` answers every
message with its length, as text, instead of echoing it, and ``--max-frame-size`` raises
picows's 10 MiB frame limit (both for the ``large32m`` scenario of ``benchmarks/run.py``).
"""

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


class ReplyLength(Echo):
    """Answers a whole (single-frame) message with its length; the client never fragments."""

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
            size = len(frame.get_payload_as_memoryview())
            transport.send(WSMsgType.TEXT, str(size).encode())
        else:
            super().on_ws_frame(transport, frame)


async def main(host: str, port: int, backlog: int, by_length: bool, max_frame: int) -> None:
    listener = ReplyLength if by_length else Echo

    def listener_factory(request: WSUpgradeRequest) -> Echo:
        return listener()

    server = await ws_create_server(
        listener_factory, host, port, backlog=backlog, max_frame_size=max_frame
    )
    async with server:
        await server.serve_forever()
    await asyncio.sleep(0)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--backlog", type=int, default=2048, help="listen backlog (2048, as swoolish)")
    p.add_argument("--reply-length", action="store_true", help="answer with the length")
    p.add_argument("--max-frame-size", type=int, default=10 * 1024 * 1024, help="bytes")
    a = p.parse_args()
    uvloop.run(main(a.host, a.port, a.backlog, a.reply_length, a.max_frame_size))
