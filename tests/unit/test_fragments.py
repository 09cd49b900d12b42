"""A fragmented message in progress (swoolish/worker/fragments.py): one buffer however
it is cut, UTF-8 checked as it comes, and the hand-off record it travels in, the same
as the one sessions carried before the buffer (a list of parts), both ways."""

from __future__ import annotations

import codecs

import pytest

from swoolish.core.frames import BINARY, TEXT
from swoolish.core.messages import MovingSession
from swoolish.worker.fragments import Fragments


def record(parts: list, opcode: int, decoder: tuple[bytes, int] | None) -> MovingSession:
    return MovingSession(
        sid=1,
        peer=("127.0.0.1", 1),
        connect_time=0.0,
        messages_in=0,
        messages_out=0,
        extensions=[],
        subprotocol=None,
        current_size=sum(len(p.encode() if isinstance(p, str) else p) for p in parts),
        fragments=parts,
        frag_opcode=opcode,
        decoder=decoder,
        unparsed=b"",
        unsent=b"",
        app=None,
        timers=[],
    )


def test_tiny_fragments_make_one_buffer_of_the_message() -> None:
    message = Fragments(BINARY)
    for _ in range(1000):
        message.add(b"ab", False)
    message.add(b"!", True)
    assert type(message.data) is bytearray and message.data == b"ab" * 1000 + b"!"


def test_text_is_checked_as_it_comes_across_a_cut_character() -> None:
    message = Fragments(TEXT)
    message.add(b"caf\xc3", False)  # é cut after its first byte: not an error yet
    message.add(b"\xa9", True)
    assert message.data.decode() == "café"
    bad = Fragments(TEXT)
    bad.add(b"ok ", False)
    with pytest.raises(UnicodeDecodeError) as caught:
        bad.add(b"x\xff", False)  # fails at this fragment, before the message ends
    assert caught.value.start == 1
    cut = Fragments(TEXT)
    cut.add(b"caf\xc3", False)
    with pytest.raises(UnicodeDecodeError):
        cut.add(b"", True)  # the message ends inside a character


@pytest.mark.parametrize("opcode", [TEXT, BINARY])
def test_a_message_in_progress_survives_its_record(opcode: int) -> None:
    sent = Fragments(opcode)
    sent.add(b"d\xc3\xa9j", False)
    sent.add(b"\xc3", False)  # text: a character cut at the hand-off
    parts, decoder = sent.export()
    if opcode == TEXT:
        assert parts == ["déj"] and decoder is not None and decoder[0] == b"\xc3"
    moved = Fragments.adopted(record(parts, opcode, decoder))
    assert moved is not None
    moved.add(b"\xa0 vu", True)
    assert moved.data == "déjà vu".encode()


def test_a_record_of_the_list_of_parts_sessions_carried_before_is_adopted() -> None:
    """What a worker of the code before this buffer exports: text as the decoded parts,
    one per fragment, and the decoder's state (here a cut character)."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    parts = [decoder.decode(b"d\xc3\xa9"), decoder.decode(b"j\xc3")]
    moved = Fragments.adopted(record(parts, TEXT, decoder.getstate()))
    assert moved is not None
    moved.add(b"\xa0", True)
    assert moved.data.decode() == "déjà"
    binary = Fragments.adopted(record([b"ab", b"cd"], BINARY, None))
    assert binary is not None and binary.data == b"abcd"
    assert Fragments.adopted(record([], 0, None)) is None
