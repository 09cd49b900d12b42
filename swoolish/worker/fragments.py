"""A WebSocket message that arrives in fragments (RFC 6455 §5.4), until its last one.

The fragments' payloads are appended to one ``bytearray``, so a message in progress
costs about its size however the client cuts it. Kept as one object per fragment, as
it was before, a message of two-byte fragments cost some 40 times its size: five
clients sending 21 MB grew a worker by 198 MB (docs/security.md). A text message is
checked as it comes, by an incremental UTF-8 decoder whose text is dropped (RFC 6455
§8.1 asks to fail fast on invalid UTF-8), and decoded once, whole, at its end.

A session on its way to another worker carries its message in progress in the
hand-off record (:class:`~swoolish.core.messages.MovingSession`): the text decoded so
far and the decoder's state (the bytes of a character cut by the fragment), or the
bytes so far; the same record as before this buffer, so workers of either code take
each other's sessions in a reload.
"""

from __future__ import annotations

import codecs
from typing import cast

from ..core.frames import TEXT
from ..core.messages import MovingSession, Payload

__all__ = ["Fragments"]

_utf8_decoder = codecs.getincrementaldecoder("utf-8")


class Fragments:
    """The payloads so far of one fragmented text (``TEXT``) or binary message."""

    __slots__ = ("data", "decoder", "opcode")

    def __init__(
        self, opcode: int, data: bytes = b"", decoder_state: tuple[bytes, int] | None = None
    ) -> None:
        self.opcode = opcode
        self.data = bytearray(data)
        self.decoder: codecs.IncrementalDecoder | None = None
        if opcode == TEXT:
            self.decoder = _utf8_decoder()
            if decoder_state is not None:
                self.decoder.setstate(decoder_state)

    def add(self, payload: bytes, last: bool) -> None:
        """Append one fragment's payload. Raises ``UnicodeDecodeError`` as soon as a
        text message is not UTF-8 (``exc.start``: where, in this fragment, counting a
        character the previous fragment cut), or ends inside a character."""
        if self.decoder is not None:
            self.decoder.decode(payload, last)  # checks; the text is decoded once, at the end
        self.data += payload

    def export(self) -> tuple[list[Payload], tuple[bytes, int] | None]:
        """The record's ``fragments`` and ``decoder``: for text, the text so far and the
        decoder's state, whose bytes (a cut character) are not in that text."""
        decoder = self.decoder
        if decoder is None:
            return [bytes(self.data)], None
        state = decoder.getstate()
        whole = len(self.data) - len(state[0])
        return [self.data[:whole].decode()], state

    @classmethod
    def adopted(cls, record: MovingSession) -> Fragments | None:
        """The message in progress of a session handed over in ``record``, if any."""
        parts = record.fragments
        if not parts:
            return None
        if record.frag_opcode == TEXT:
            cut = record.decoder[0] if record.decoder is not None else b""
            return cls(TEXT, "".join(cast(list[str], parts)).encode() + cut, record.decoder)
        return cls(record.frag_opcode, b"".join(cast(list[bytes], parts)))
