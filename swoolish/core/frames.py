"""The WebSocket frame rules swoolish applies itself: opcodes, close codes, one header scanner.

websockets' sans-I/O protocol owns the full framing rules (RFC 6455 §5) and
permessage-deflate (RFC 7692); this module holds the few pieces the server writes on its
own, in one place: the message types its API speaks (``TEXT``/``BINARY``), one constant per
close code it sends, the encoder of an unmasked server frame, the check of a close code an
app passes, and the one scanner of frame headers (used by the fast path of small frames
and by the live hand-off, which must know where the frame in progress starts).
"""

from __future__ import annotations

import struct
from typing import Final

__all__ = [
    "BINARY",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "MESSAGE_TOO_BIG",
    "NORMAL_CLOSURE",
    "OP_CLOSE",
    "POLICY_VIOLATION",
    "PROTOCOL_ERROR",
    "SERVICE_RESTART",
    "TEXT",
    "check_close",
    "encode_frame",
    "frame_extent",
    "unparsed_tail",
]

#: Message types of the public API (Swoole's ``WEBSOCKET_OPCODE_TEXT`` / ``_BINARY``),
#: equal to their RFC 6455 §5.2 opcodes.
TEXT: Final = 1
BINARY: Final = 2
OP_CLOSE: Final = 8

# Close codes of RFC 6455 §7.4.1 (and the IANA registry) that swoolish sends on its own.
NORMAL_CLOSURE: Final = 1000
GOING_AWAY: Final = 1001  # the server shuts down (graceful stop)
PROTOCOL_ERROR: Final = 1002
INVALID_DATA: Final = 1007  # invalid UTF-8 in a text message (§8.1)
POLICY_VIOLATION: Final = 1008
MESSAGE_TOO_BIG: Final = 1009
INTERNAL_ERROR: Final = 1011  # a handler raised
SERVICE_RESTART: Final = 1012  # a reload closes what cannot move to the new worker

# Codes an app may send (RFC 6455 §7.4.1-7.4.2): registered ones that are not reserved
# for the local side (1004-1006, 1015), and the private range 3000-4999.
_SENDABLE = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
_MAX_REASON = 123  # a control frame's payload is at most 125 bytes (§5.5), 2 are the code

_HEADER_16 = struct.Struct("!BBH")
_HEADER_64 = struct.Struct("!BBQ")


def encode_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, unfragmented server frame (RFC 6455 §5.2)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _HEADER_16.pack(0x80 | opcode, 126, n) + payload
    return _HEADER_64.pack(0x80 | opcode, 127, n) + payload


def encode_close(code: int, reason: str = "") -> bytes:
    """A close frame with ``code`` and ``reason`` (cut to its 123-byte limit)."""
    return encode_frame(OP_CLOSE, struct.pack("!H", code) + reason.encode()[:_MAX_REASON])


def check_close(code: int, reason: str) -> None:
    """The close-frame rules of RFC 6455 §5.5/§7.4: raise ``ValueError`` at the call."""
    if (
        isinstance(code, bool)
        or not isinstance(code, int)
        or not (code in _SENDABLE or 3000 <= code <= 4999)
        or not isinstance(reason, str)
        or not _encodes(reason, _MAX_REASON)
    ):
        raise ValueError(
            f"cannot close with code {code!r} and reason {reason!r}: codes are 1000-4999 "
            "(not 1004-1006, 1015) and the reason is at most 123 UTF-8 bytes"
        )


def _encodes(text: str, limit: int) -> bool:
    try:
        return len(text.encode()) <= limit
    except UnicodeEncodeError:  # a lone surrogate
        return False


def frame_extent(buffer: bytes, pos: int = 0) -> tuple[int, int] | None:
    """``(payload_start, payload_end)`` of the frame whose header starts at ``pos``, or
    None when the buffer ends before the header does.

    RFC 6455 §5.2: 2 header bytes, a 16- or 64-bit extended length when the 7-bit length
    is 126 or 127, a 4-byte masking key when the mask bit is set, then the payload.
    """
    available = len(buffer) - pos
    if available < 2:
        return None
    second = buffer[pos + 1]
    length = second & 0x7F
    head = 2
    if length == 126:
        if available < 4:
            return None
        length = (buffer[pos + 2] << 8) | buffer[pos + 3]
        head = 4
    elif length == 127:
        if available < 10:
            return None
        length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
        head = 10
    if second & 0x80:
        head += 4
    if available < head:
        return None
    return pos + head, pos + head + length


def unparsed_tail(buffer: bytes) -> bytes:
    """The bytes of ``buffer`` after its last complete frame (what a hand-off carries)."""
    pos, end = 0, len(buffer)
    while True:
        extent = frame_extent(buffer, pos)
        if extent is None or extent[1] > end:
            break
        pos = extent[1]
    return buffer[pos:] if pos else buffer
