"""The fast path's per-message steps, in Python and compiled, held to the same answers.

``swoolish.core.frames`` has ``next_frame`` (read one client frame the fast path takes) and
``encode_message`` (one server frame for ``push``) in Python, and uses the compiled pair
of ``swoolish/core/_speedups.c`` instead when it was built; the same for ``Frame``, the
message a handler gets. Each case below runs against
both (the compiled one skips, saying why, when it was not built), and a property test
feeds both arbitrary bytes and messages and requires the same result, or the same
exception with the same message.
"""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swoolish.core import frames
from swoolish.core.frames import (
    BINARY,
    COMPRESSED,
    FOUND_PING,
    FOUND_PONG,
    INVALID_TEXT,
    TEXT,
    FrameCursor,
    py_encode_message,
    py_next_frame,
)

try:
    from swoolish.core import _speedups
except ImportError:  # not built: no C compiler or Python headers at install time
    _speedups = None

NOT_BUILT = "the C accelerator was not built (no C compiler or Python headers at install)"
MASK = b"\x11\x22\x33\x44"


def masked(payload: bytes, first: int = 0x81, mask: bytes = MASK) -> bytes:
    """A client frame: ``first`` header byte, a masked ``payload`` (RFC 6455 §5.3)."""
    n = len(payload)
    if n < 126:
        head = bytes((first, 0x80 | n))
    elif n < 65536:
        head = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    body = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + body


IMPLEMENTATIONS = ["python", "compiled"]


@pytest.fixture(params=IMPLEMENTATIONS)
def impl(request: pytest.FixtureRequest) -> Any:
    """``next_frame`` and ``encode_message`` of one implementation."""
    if request.param == "python":
        return frames.py_next_frame, frames.py_encode_message
    if _speedups is None:
        pytest.skip(NOT_BUILT)
    return _speedups.next_frame, _speedups.encode_message


@pytest.fixture
def next_frame(impl: Any) -> Callable[..., Any]:
    return impl[0]


@pytest.fixture
def encode_message(impl: Any) -> Callable[..., Any]:
    return impl[1]


# -- next_frame ----------------------------------------------------------------------------


def test_text_binary_ping_and_pong(next_frame: Callable[..., Any]) -> None:
    stream = (
        masked("héllo".encode())
        + masked(b"\x00\xff", 0x82)
        + masked(b"are you there", 0x89)
        + masked(b"", 0x8A)
    )
    pos, found = 0, []
    while (got := next_frame(stream, pos, 1 << 20, 0)) is not None:
        pos, kind, value = got
        found.append((kind, value))
    assert pos == len(stream)
    assert found == [
        (TEXT, "héllo"),
        (BINARY, b"\x00\xff"),
        (FOUND_PING, b"are you there"),
        (FOUND_PONG, b""),
    ]


def test_a_16_bit_length_and_the_limit(next_frame: Callable[..., Any]) -> None:
    frame = masked(b"a" * 300)
    assert next_frame(frame, 0, 300, 0) == (len(frame), TEXT, "a" * 300)
    assert next_frame(frame, 0, 299, 0) is None  # over max_message_size: the protocol's


@pytest.mark.parametrize("cut", [1, 2, 5, 6, 7, 10])
def test_a_frame_the_read_cut_is_left_alone(next_frame: Callable[..., Any], cut: int) -> None:
    frame = masked(b"b" * 200)
    assert next_frame(frame[:cut], 0, 1 << 20, 0) is None
    assert next_frame(frame[:-1], 0, 1 << 20, 0) is None


@pytest.mark.parametrize(
    "frame",
    [
        masked(b"x", 0x01),  # not final: a fragment
        masked(b"x", 0x80),  # a continuation
        masked(b"x", 0x88),  # a close: the protocol's
        masked(b"x", 0x91),  # RSV1 without compression / RSV2
        masked(b"x", 0xA1),  # RSV2
        masked(b"x" * 70_000, 0x82),  # a 64-bit length
        masked(b"x" * 126, 0x89),  # a ping longer than 125 bytes
        b"\x81\x05hello",  # unmasked (RFC 6455 §5.1: a server must fail it)
    ],
)
def test_what_the_fast_path_does_not_take(next_frame: Callable[..., Any], frame: bytes) -> None:
    assert next_frame(frame, 0, 1 << 20, 0) is None


def test_compressed_only_when_negotiated(next_frame: Callable[..., Any]) -> None:
    frame = masked(b"deflated", 0xC1)
    assert next_frame(frame, 0, 1 << 20, 0) is None
    assert next_frame(frame, 0, 1 << 20, 15) == (len(frame), TEXT | COMPRESSED, b"deflated")
    binary = masked(b"deflated", 0xC2)
    assert next_frame(binary, 0, 1 << 20, 15) == (len(binary), BINARY | COMPRESSED, b"deflated")


def test_text_that_is_not_utf8_gives_the_offset(next_frame: Callable[..., Any]) -> None:
    frame = masked(b"ok \xff then")
    assert next_frame(frame, 0, 1 << 20, 0) == (len(frame), INVALID_TEXT, 3)
    long = masked(b"a" * 400 + "é".encode()[:1])  # past the C stack buffer; a cut sequence
    assert next_frame(long, 0, 1 << 20, 0) == (len(long), INVALID_TEXT, 400)


def test_reads_from_an_offset(next_frame: Callable[..., Any]) -> None:
    stream = b"junk" + masked(b"later")
    assert next_frame(stream, 4, 1 << 20, 0) == (len(stream), TEXT, "later")
    assert next_frame(stream, len(stream), 1 << 20, 0) is None
    assert next_frame(stream, -1, 1 << 20, 0) is None


# -- encode_message ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "opcode", "wire"),
    [
        ("hi", None, b"\x81\x02hi"),
        ("hi", BINARY, b"\x82\x02hi"),
        ("é", None, b"\x81\x02" + "é".encode()),
        (b"\x00", None, b"\x82\x01\x00"),
        (b"ok", TEXT, b"\x81\x02ok"),
        (bytearray(b"ba"), None, b"\x82\x02ba"),
        (memoryview(b"mv"), None, b"\x82\x02mv"),
        ("x" * 200, None, b"\x81\x7e\x00\xc8" + b"x" * 200),
        (b"y" * 70_000, None, b"\x82\x7f" + (70_000).to_bytes(8, "big") + b"y" * 70_000),
    ],
)
def test_encodes_what_push_sends(
    encode_message: Callable[..., Any], data: Any, opcode: Any, wire: bytes
) -> None:
    assert encode_message(data, opcode) == wire


@pytest.mark.parametrize(
    ("data", "opcode", "error"),
    [
        ("x", 9, ValueError),  # a control opcode
        ("x", True, ValueError),
        (b"\xff", TEXT, ValueError),  # text must be UTF-8
        ("\ud800", None, ValueError),  # a lone surrogate
        (5, None, TypeError),
        (None, None, TypeError),
    ],
)
def test_refuses_what_push_may_not_send(
    encode_message: Callable[..., Any], data: Any, opcode: Any, error: type[Exception]
) -> None:
    with pytest.raises(error):
        encode_message(data, opcode)


# -- both alike, on anything ---------------------------------------------------------------


def _outcome(fn: Callable[..., Any], *args: Any) -> Any:
    try:
        return ("ok", fn(*args))
    except Exception as exc:
        return (type(exc), str(exc))


@pytest.mark.skipif(_speedups is None, reason=NOT_BUILT)
@settings(max_examples=500, deadline=None)
@given(
    head=st.sampled_from([0x81, 0x82, 0x89, 0x8A, 0xC1, 0xC2, 0x01, 0x88]),
    payload=st.one_of(st.binary(max_size=300), st.text(max_size=100).map(str.encode)),
    mask=st.binary(min_size=4, max_size=4),
    junk=st.binary(max_size=20),
    cut=st.integers(0, 400),
    limit=st.integers(0, 400),
    bits=st.sampled_from([0, 9, 15]),
)
def test_both_read_every_frame_alike(
    head: int, payload: bytes, mask: bytes, junk: bytes, cut: int, limit: int, bits: int
) -> None:
    stream = (masked(payload, head, mask) + junk)[:cut] if cut else masked(payload, head, mask)
    for pos in (0, 1, 2):
        assert _outcome(py_next_frame, stream, pos, limit, bits) == _outcome(
            _speedups.next_frame, stream, pos, limit, bits
        )


@pytest.mark.skipif(_speedups is None, reason=NOT_BUILT)
@settings(max_examples=500, deadline=None)
@given(
    data=st.one_of(
        st.text(max_size=200),
        st.binary(max_size=200),
        st.binary(max_size=50).map(bytearray),
        st.integers(),
        st.none(),
    ),
    opcode=st.one_of(st.none(), st.integers(-1, 11), st.booleans()),
)
def test_both_encode_every_message_alike(data: Any, opcode: Any) -> None:
    assert _outcome(py_encode_message, data, opcode) == _outcome(
        _speedups.encode_message, data, opcode
    )


# -- which one runs ------------------------------------------------------------------------


def test_the_compiled_pair_is_used_when_built() -> None:
    if _speedups is None:
        pytest.skip(NOT_BUILT)
    if os.environ.get("SWOOLISH_NO_SPEEDUPS"):
        pytest.skip("SWOOLISH_NO_SPEEDUPS is set for this run")
    assert frames.SPEEDUPS
    assert frames.next_frame is _speedups.next_frame
    assert frames.encode_message is _speedups.encode_message
    assert frames.Frame is _speedups.Frame


def test_swoolish_no_speedups_selects_the_python_pair() -> None:
    """SWOOLISH_NO_SPEEDUPS=1, read at import, in a fresh interpreter."""
    code = (
        "from swoolish.core import frames as f;"
        "assert not f.SPEEDUPS;"
        "assert f.next_frame is f.py_next_frame and f.encode_message is f.py_encode_message;"
        "assert f.Frame is f.PyFrame"
    )
    env = {**os.environ, "SWOOLISH_NO_SPEEDUPS": "1"}
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
    importlib.import_module("swoolish.core.frames")  # this process's choice is unchanged


# -- Frame ------------------------------------------------------------------------------


@pytest.fixture(params=IMPLEMENTATIONS)
def frame_class(request: pytest.FixtureRequest) -> Any:
    """``Frame`` of one implementation."""
    if request.param == "python":
        return frames.PyFrame
    if _speedups is None:
        pytest.skip(NOT_BUILT)
    return _speedups.Frame


def test_a_frame_holds_what_it_was_given(frame_class: Any) -> None:
    frame = frame_class(7, "héllo", TEXT)
    assert (frame.fd, frame.data, frame.opcode, frame.finish) == (7, "héllo", TEXT, True)
    assert repr(frame) == "<Frame fd=7 opcode=1 5 bytes>"
    by_name = frame_class(fd=8, data=b"\x00", opcode=BINARY, finish=False)
    assert (by_name.fd, by_name.data, by_name.opcode, by_name.finish) == (8, b"\x00", 2, False)
    frame.data = "changed"  # a handler may rewrite what it passes on
    assert frame.data == "changed"


def test_a_frame_refuses_what_the_class_refuses(frame_class: Any) -> None:
    with pytest.raises(TypeError):
        frame_class(7, "x")
    with pytest.raises(TypeError):
        frame_class(7, "x", TEXT, True, "extra")
    with pytest.raises(AttributeError):
        frame_class(7, "x", TEXT).other = 1  # fixed attributes: no per-message __dict__


def test_a_frame_subclass_is_built_as_the_class(frame_class: Any) -> None:
    class Tagged(frame_class):  # type: ignore[misc,valid-type]
        pass

    frame = Tagged(1, b"ab", BINARY)
    assert type(frame) is Tagged
    assert (frame.fd, frame.data, frame.opcode, frame.finish) == (1, b"ab", BINARY, True)


def test_a_frame_pickles_as_the_public_name(frame_class: Any) -> None:
    """A handler may pass its frame to a task worker: it arrives as ``swoolish.Frame``,
    whichever class that is there."""
    import pickle

    import swoolish

    back = pickle.loads(pickle.dumps(frame_class(3, "hi", TEXT, False)))
    assert type(back) is swoolish.Frame
    assert (back.fd, back.data, back.opcode, back.finish) == (3, "hi", TEXT, False)


def _client_frame(payload: bytes, masked: bool) -> bytes:
    n = len(payload)
    if n < 126:
        head = bytes([0x82, (0x80 if masked else 0) | n])
    elif n < 65536:
        head = bytes([0x82, (0x80 if masked else 0) | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x82, (0x80 if masked else 0) | 127]) + n.to_bytes(8, "big")
    return head + (b"\0\0\0\0" if masked else b"") + payload


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 300, 65536]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=8),
    masked=st.booleans(),
)
def test_frame_end_names_each_frame_boundary_of_a_stream_fed_in_any_cuts(
    sizes: list[int], cuts: list[int], masked: bool
) -> None:
    """Fed one frame at a time through ``frame_end`` (from any position of a read, a
    header cut between reads included), the cursor stops at exactly the stream's frame
    boundaries: what websockets' protocol object is given one frame at a time."""
    frames_ = [_client_frame(bytes(size), masked) for size in sizes]
    stream = b"".join(frames_)
    boundaries, at = set(), 0
    for frame in frames_:
        at += len(frame)
        boundaries.add(at)
    cursor, offset, reached = FrameCursor(0), 0, set()
    reads = [stream[i : i + c] for i, c in _reads(len(stream), cuts)]
    for read in reads:
        pos = 0
        while pos < len(read):
            end = cursor.frame_end(read, pos)
            assert pos < end <= len(read)
            cursor.feed(read[pos:end])
            pos = end
            if cursor.at_boundary:
                reached.add(offset + end)
        offset += len(read)
    assert reached == boundaries


def _reads(total: int, cuts: list[int]) -> list[tuple[int, int]]:
    """(start, size) of reads of a ``total``-byte stream, sized by ``cuts`` in turn."""
    out, i, k = [], 0, 0
    while i < total:
        size = cuts[k % len(cuts)]
        out.append((i, size))
        i, k = i + size, k + 1
    return out


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.sampled_from([0, 1, 125, 126, 300, 65536]), min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=1, max_value=70000), min_size=1, max_size=8),
    keep=st.sampled_from([0, 14, 200, 1000, 70000]),
)
def test_unparsed_is_what_follows_the_last_whole_frame_while_it_fits_the_keep(
    sizes: list[int], cuts: list[int], keep: int
) -> None:
    """After every read, ``unparsed`` (a live hand-off's record of the frame in
    progress) is the stream's bytes after its last whole frame if at most ``keep`` of
    them came (b"" at a boundary), else None; the cursor starts with no buffer of its
    own and makes one only for such bytes."""
    frames_ = [_client_frame(bytes(size), True) for size in sizes]
    stream = b"".join(frames_)
    boundaries, at = [0], 0
    for frame in frames_:
        at += len(frame)
        boundaries.append(at)
    cursor, offset = FrameCursor(keep), 0
    assert cursor.unparsed == b""
    for start, size in _reads(len(stream), cuts):
        cursor.feed(stream[start : start + size])
        offset = start + len(stream[start : start + size])
        last = max(b for b in boundaries if b <= offset)
        expected = stream[last:offset] if offset - last <= keep else None
        assert cursor.unparsed == expected
    assert cursor.unparsed == b""
