"""permessage-deflate (RFC 7692) for messages that are each a stream of their own.

When the client agreed not to keep its compression context between messages
(``client_no_context_takeover``), and the server told it that it keeps none either
(``server_no_context_takeover``), a compressed message never refers to an earlier one
(RFC 7692 §7.1.1). Then no zlib state has to live with a connection between messages:

- incoming, a message is inflated by a decompressor created for it (cheap: zlib sets up
  its 32 KiB window only when output is produced), dropped right after;
- outgoing, one compressor per process serves every connection: each message ends with
  a full flush, which empties the compressor's dictionary, so the next message, on any
  connection, refers to nothing before it. A fresh zlib compressor would cost tens of
  microseconds per message to set up (its ~256 KiB of tables are zeroed); the full flush
  costs a few (docs/performance.md, "Compressed connections").

A message sent uncompressed (RSV1 clear) is always allowed (RFC 7692 §6), which is what
a connection does for messages under ``websocket_compression_threshold``.
"""

from __future__ import annotations

import zlib
from typing import Final

__all__ = ["RSV1", "compress_message", "inflate_message"]

#: The first header byte's RSV1 bit: "this message is compressed" (RFC 7692 §6).
RSV1: Final = 0x40

#: What a sender removes from the end of a compressed message and a receiver appends
#: back before inflating it (RFC 7692 §7.2.1, §7.2.2).
_TAIL: Final = b"\x00\x00\xff\xff"

#: This process's compressors, one per window size a client asked for (server_max_window_bits,
#: RFC 7692 §7.1.2.1: 9 to 15), each made on first use.
_shared: dict[int, zlib._Compress] = {}


def compress_message(payload: bytes, window_bits: int = 15) -> bytes:
    """``payload`` deflated as a stream of its own, ready for a frame with RSV1 set.

    The output never refers to data of an earlier message (the full flush of the
    previous call reset the dictionary), so a client that resets its decompressor per
    message (server_no_context_takeover) and one that keeps it can both inflate it; nor
    further back than ``window_bits`` allows, the window the client agreed to.
    """
    comp = _shared.get(window_bits)
    if comp is None:
        comp = _shared[window_bits] = zlib.compressobj(wbits=-window_bits)
    try:
        data = comp.compress(payload) + comp.flush(zlib.Z_FULL_FLUSH)
    except BaseException:
        del _shared[window_bits]  # a half-fed compressor must not serve the next message
        raise
    return data[:-4] if data.endswith(_TAIL) else data + b"\x00"


def inflate_message(data: bytes, window_bits: int, limit: int) -> bytes | None:
    """The compressed message ``data`` inflated, or None when it does not inflate to at
    most ``limit`` bytes (corrupt, too large): the caller then leaves the message to the
    code that fails the connection with the right close code."""
    decompressor = zlib.decompressobj(wbits=-window_bits)
    try:
        out = decompressor.decompress(data + _TAIL, limit)
    except zlib.error:
        return None
    if decompressor.unconsumed_tail:
        return None
    return out
