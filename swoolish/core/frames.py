"""The WebSocket frame rules swoolish applies itself: opcodes, close codes, one header scanner.

websockets' sans-I/O protocol owns the full framing rules (RFC 6455 §5) and
permessage-deflate (RFC 7692); this module holds the few pieces the server writes on its
own, in one place: the message types its API speaks (``TEXT``/``BINARY``), one constant per
close code it sends, the encoder of an unmasked server frame, the check of a close code an
app passes, and the one scanner of frame headers (used by the fast path of small frames
and by the live hand-off, which must know where the frame in progress starts).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, Final

try:  # websockets' C speedups: unmasking at C speed
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - a build without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "BINARY",
    "COMPRESSED",
    "FOUND_PING",
    "FOUND_PONG",
    "GOING_AWAY",
    "INTERNAL_ERROR",
    "INVALID_DATA",
    "INVALID_TEXT",
    "MESSAGE_TOO_BIG",
    "NORMAL_CLOSURE",
    "OP_CLOSE",
    "POLICY_VIOLATION",
    "PROTOCOL_ERROR",
    "SERVICE_RESTART",
    "TEXT",
    "Frame",
    "FrameCursor",
    "check_close",
    "check_push",
    "encode_frame",
    "encode_message",
    "frame_extent",
    "next_frame",
    "unparsed_tail",
]


class PyFrame:
    """A complete WebSocket message as ``message`` handlers get it (Swoole's Frame).

    ``Frame`` is this class in C when ``swoolish/core/_speedups.c`` was built (one per
    message: its constructor then costs no Python call); both take the same arguments,
    have the same attributes and unpickle as the ``Frame`` of the process (``frame_of``).
    """

    __slots__ = ("data", "fd", "finish", "opcode")

    def __init__(self, fd: int, data: str | bytes, opcode: int, finish: bool = True) -> None:
        self.fd = fd
        self.data = data
        self.opcode = opcode
        self.finish = finish

    def __repr__(self) -> str:
        return f"<Frame fd={self.fd} opcode={self.opcode} {len(self.data)} bytes>"

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[int, str | bytes, int, bool]]:
        made_by = frame_of if type(self) is PyFrame else type(self)
        return made_by, (self.fd, self.data, self.opcode, self.finish)


def frame_of(fd: int, data: str | bytes, opcode: int, finish: bool = True) -> PyFrame:
    """A frame of the class this process uses (``Frame``): what a pickled frame of
    either class becomes, so a handler may hand its frame to a task worker."""
    return Frame(fd, data, opcode, finish)


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
    """An unmasked, unfragmented server frame (RFC 6455 §5.2); ``opcode`` may carry the
    RSV1 bit of a compressed message (RFC 7692 §6)."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return _HEADER_16.pack(0x80 | opcode, 126, n) + payload
    return _HEADER_64.pack(0x80 | opcode, 127, n) + payload


def encode_message(data: str | bytes, opcode: int | None) -> bytes:
    """The frame of one message as ``push`` sends it uncompressed, once
    :func:`check_push` has passed it (its errors raise here): a ``str`` as UTF-8, TEXT
    unless ``opcode`` says otherwise; bytes-like data BINARY unless it says. (The
    connection's compressed path converts the same way, inline: this is the per-message
    path of the Python fast path, where one more call costs 2% of an echo.)"""
    check_push(data, opcode)
    if isinstance(data, str):
        payload, kind = data.encode(), opcode or TEXT
    else:
        payload, kind = bytes(data), opcode or BINARY
    n = len(payload)
    if n < 126:  # the common case without a second call
        return bytes((0x80 | kind, n)) + payload
    return encode_frame(kind, payload)


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


_BYTES_LIKE = (bytes, bytearray, memoryview)


def check_push(data: object, opcode: object) -> None:
    """What ``push`` may send: raise ``ValueError`` (or ``TypeError``) at the call.

    A message is TEXT or BINARY (None: text for ``str``, binary for bytes). Control
    frames have their own rules (at most 125 bytes, RFC 6455 §5.5) and their own API
    (``disconnect``); the other opcodes are reserved (§5.2). A text message is UTF-8
    (§5.6), so bytes sent as TEXT must be, and a ``str`` must encode (no lone surrogate).
    """
    if opcode is None and (type(data) is bytes or (type(data) is str and data.isascii())):
        return  # the common cases, nothing to check
    if opcode is not None and (type(opcode) is not int or opcode not in (TEXT, BINARY)):
        raise ValueError(
            f"push() sends opcode TEXT (1) or BINARY (2), or None (text for str, binary "
            f"for bytes); got {opcode!r}"
        )
    if isinstance(data, str):
        if not data.isascii() and not _encodes(data, len(data) * 4):
            raise ValueError("push() got a str that is not valid Unicode (a lone surrogate)")
    elif isinstance(data, _BYTES_LIKE):
        if opcode == TEXT:
            try:
                bytes(data).decode()
            except UnicodeDecodeError as exc:
                raise ValueError(
                    f"push() with opcode TEXT needs UTF-8, invalid at byte {exc.start}"
                ) from None
    else:
        raise TypeError(f"push() sends str or bytes, got {type(data).__name__}")


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


class FrameCursor:
    """Where the frame in progress of a byte stream ends, found in time linear in the bytes.

    Fed every chunk a connection reads (starting at a frame boundary), it reads each
    frame header once, with :func:`frame_extent`, and then only counts the payload
    down: a 32 MiB message read in thousands of chunks is never rescanned (rescanning
    the frame in progress on every read made receiving a large message quadratic). It
    keeps the bytes of the frame in progress up to ``keep`` bytes: what a live hand-off
    carries as ``unparsed``; past that it only counts them.
    """

    __slots__ = ("_kept", "_need", "_seen", "keep")

    def __init__(self, keep: int = 0) -> None:
        self.keep = keep
        # the frame in progress while it is at most `keep` bytes, and always its first 14
        # (a header's most), which say how long it is; b"" until there is any, so that a
        # session between frames (nearly all of them) keeps no buffer (see _take)
        self._kept: bytes | bytearray = b""
        self._seen = 0  # bytes of the frame in progress read so far (0: at a boundary)
        self._need = -1  # bytes still to come once its header is complete; -1: not yet

    @property
    def at_boundary(self) -> bool:
        """No frame is in progress: the next byte starts a frame."""
        return not self._seen

    @property
    def unparsed(self) -> bytes | None:
        """The bytes after the last complete frame; None when more than ``keep`` were."""
        if self._seen > self.keep or self._seen > len(self._kept):
            return None
        return bytes(self._kept)

    def frame_end(self, data: bytes, pos: int = 0) -> int:
        """Where, in ``data`` (the next bytes of the stream from ``pos`` on), the frame in
        progress ends (the frame starting at ``pos``, at a boundary); ``len(data)`` when
        it does not end in ``data``. Nothing is accounted for: ``feed`` those bytes next."""
        n = len(data)
        if self._seen:
            need = self._need
            if need < 0:
                extent = frame_extent(bytes(self._kept) + data[pos : pos + 14])
                if extent is None:
                    return n
                need = extent[1] - self._seen
            return min(pos + need, n)
        extent = frame_extent(data, pos)
        return n if extent is None else min(extent[1], n)

    def feed(self, data: bytes) -> None:
        """Account for ``data``, the next bytes of the stream."""
        n = len(data)
        pos = 0
        if self._seen:
            if self._need < 0:
                # The header is cut (at most 14 bytes, RFC 6455 §5.2): what we have of
                # it, and the first bytes of data, tell the frame's length.
                extent = frame_extent(bytes(self._kept) + data[:14])
                if extent is None:
                    self._take(data)
                    return
                self._need = extent[1] - self._seen
            if n < self._need:
                self._take(data)
                self._need -= n
                return
            pos = self._need
            self._kept = b""
            self._seen, self._need = 0, -1
        while pos < n:
            extent = frame_extent(data, pos)
            end = -1 if extent is None else extent[1]
            if end < 0 or end > n:
                self._take(data[pos:])
                if end > n:
                    self._need = end - n
                return
            pos = end

    def _take(self, data: bytes) -> None:
        self._seen += len(data)
        if self._seen <= max(self.keep, 14):
            kept = self._kept
            if type(kept) is bytes:  # the first bytes kept
                self._kept = bytearray(data)
            else:
                kept += data  # in place, into the bytearray
        elif self._kept:
            self._kept = b""  # too large to carry: only counted from here on

    def reset(self) -> None:
        """Forget the frame in progress (the stream is over)."""
        self._kept = b""
        self._seen, self._need = 0, -1


def unparsed_tail(buffer: bytes) -> bytes:
    """The bytes of ``buffer`` after its last complete frame (what a hand-off carries)."""
    pos, end = 0, len(buffer)
    while True:
        extent = frame_extent(buffer, pos)
        if extent is None or extent[1] > end:
            break
        pos = extent[1]
    return buffer[pos:] if pos else buffer


# -- the fast path's reader ------------------------------------------------------------------

#: What :func:`next_frame` found (besides TEXT and BINARY, with their RFC 6455 opcodes).
FOUND_PING: Final = 9
FOUND_PONG: Final = 10
COMPRESSED: Final = 0x40  # RSV1 on TEXT or BINARY: a permessage-deflate message (RFC 7692)
INVALID_TEXT: Final = -1  # a text frame that is not UTF-8 (RFC 6455 §8.1)


def next_frame(
    data: bytes, pos: int, limit: int, compressed_ok: int
) -> tuple[int, int, str | bytes | int] | None:
    """The frame at ``pos`` if it is one the fast path takes: ``(end, kind, value)``.

    It takes final, masked text or binary frames without RSV bits (with RSV1 alone when
    ``compressed_ok`` is not 0: RFC 7692 §6), with a 7- or 16-bit length and at most ``limit``
    payload bytes, and final, masked pings and pongs of at most 125 bytes (RFC 6455 §5.5).
    Anything else, or a frame that ``data`` cuts, is None: the caller hands it to
    websockets' protocol, which owns every rule this does not check.

    ``kind`` is TEXT (``value`` the decoded ``str``), BINARY (the bytes), TEXT or BINARY
    with :data:`COMPRESSED` (the still-deflated bytes), :data:`FOUND_PING` (its
    payload), :data:`FOUND_PONG` (``b""``), or :data:`INVALID_TEXT` (``value`` the
    offset of the first byte that is not UTF-8). The compiled accelerator
    (``swoolish/core/_speedups.c``) does the same; this is the pure-Python one.
    """
    n = len(data)
    if n - pos < 6 or pos < 0:
        return None
    b0 = data[pos]
    b1 = data[pos + 1]
    # FIN, no RSV (or RSV1: compressed), text or binary; masked; a 7- or 16-bit length
    if b0 == 0x81 or b0 == 0x82:
        compressed = False
    elif (b0 == 0xC1 or b0 == 0xC2) and compressed_ok:
        compressed = True
    elif (b0 == 0x89 or b0 == 0x8A) and 0x80 <= b1 <= 0xFD:  # FIN, masked, 0-125 B
        end = pos + 6 + (b1 & 0x7F)
        if end > n:
            return None
        if b0 == 0x8A:
            return end, FOUND_PONG, b""
        return end, FOUND_PING, apply_mask(data[pos + 6 : end], data[pos + 2 : pos + 6])
    else:
        return None
    if b1 < 0x80 or b1 == 0xFF:
        return None
    if b1 < 0xFE:  # a 7-bit length: the 6-byte header of a short frame
        head = pos + 6
        end = head + (b1 & 0x7F)
    else:
        extent = frame_extent(data, pos)
        if extent is None:
            return None
        head, end = extent
    if end > n or end - head > limit:
        return None
    payload = apply_mask(data[head:end], data[head - 4 : head])
    if compressed:
        return end, (b0 & 0x0F) | COMPRESSED, payload
    if b0 == 0x82:
        return end, BINARY, payload
    try:
        return end, TEXT, payload.decode()
    except UnicodeDecodeError as exc:
        return end, INVALID_TEXT, exc.start


#: The pure-Python versions, kept for the tests (and for SWOOLISH_NO_SPEEDUPS=1).
py_next_frame = next_frame
py_encode_message = encode_message
Frame = PyFrame

#: Whether the compiled pair is in use (the tests read it).
SPEEDUPS = False
if not os.environ.get("SWOOLISH_NO_SPEEDUPS"):
    try:
        from ._speedups import (  # type: ignore[no-redef,unused-ignore,assignment]
            Frame,
            encode_message,
            next_frame,
        )

        SPEEDUPS = True
    except ImportError:  # not built: no compiler or headers at install time
        pass
