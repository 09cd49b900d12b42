"""The cluster bus's wire format: what nodes publish to each other over Redis pub/sub.

Pure (docs/cluster.md, "On the wire"): every message is one Redis pub/sub payload,
binary, versioned, with no JSON or base64 around the application's data::

    kind:u8  version:u8  origin_node:u32  publisher:u32  seq:u64  body…

``publisher`` is the sending worker's pid and ``seq`` counts that worker's messages
from 1: Redis delivers one publisher connection's messages to a subscriber in publish
order, so ``(origin_node, publisher, seq)`` names a message and orders it among its
sender's. A live hand-off uses that order to move a session between two subscribers
without losing or repeating a message (see ``Marks``).

Channels (``{c}`` is the ``cluster_name``): ``sw:{c}:all`` carries broadcasts,
``sw:{c}:node:{n}`` what is addressed to node ``n``, ``sw:{c}:ctl`` liveness and the
replicated session lists; ``sw:{c}:epoch`` is the node-number counter and
``sw:{c}:node:{n}`` (a key) node ``n``'s claim, refreshed while it lives.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

__all__ = [
    "BROADCAST",
    "CLOSED",
    "CLOSE_CODE",
    "DISCONNECT",
    "EXISTS_ANSWER",
    "EXISTS_QUESTION",
    "HEARTBEAT",
    "LEAVING",
    "MULTI_PUSH",
    "OPENED",
    "PIPE",
    "PUSH",
    "SNAPSHOT",
    "SNAPSHOT_REQUEST",
    "VERSION",
    "BusError",
    "Channels",
    "Header",
    "Marks",
    "decode_header",
    "encode",
]

VERSION = 1

# kinds (one ASCII letter each, so a captured payload reads in a hex dump)
BROADCAST = ord("B")  # opcode:u8 payload
PUSH = ord("P")  # fd:u64 opcode:u8 payload
MULTI_PUSH = ord("M")  # count:u32 fd:u64[count] opcode:u8 payload
DISCONNECT = ord("D")  # fd:u64 code:u16 reason (code CLOSE_CODE: server.close())
OPENED = ord("O")  # fd:u64[] established on the publisher since its last event
CLOSED = ord("C")  # fd:u64[] ended on the publisher
HEARTBEAT = ord("H")  # worker_id:u16 sessions:u32 token:u64 (the node's, see claim_value)
LEAVING = ord("X")  # node_leaving:u8 (0: only this worker, a reload replaces it) token:u64
SNAPSHOT_REQUEST = ord("S")  # (empty): every worker answers with SNAPSHOT to the origin
SNAPSHOT = ord("R")  # worker_id:u16 fd:u64[] the publisher's sessions now
EXISTS_QUESTION = ord("Q")  # fd:u64 request:u32 (answered on the origin's node channel)
EXISTS_ANSWER = ord("A")  # asker:u32 request:u32 alive:u8
PIPE = ord("W")  # target_worker:u16 source_worker:u16 payload (pickled)

CLOSE_CODE = 0  # a DISCONNECT with this code is server.close(): 1000 for a WebSocket

_HEADER = struct.Struct("!BBIIQ")
_FD = struct.Struct("!QB")  # PUSH: fd, opcode
_DISCONNECT = struct.Struct("!QH")
_COUNT = struct.Struct("!I")
_HEARTBEAT = struct.Struct("!HI")
_TOKEN = struct.Struct("!Q")  # the node's token, after a heartbeat's or a leave's fields
_WORKER = struct.Struct("!H")
_QUESTION = struct.Struct("!QI")
_ANSWER = struct.Struct("!IIB")
_PIPE = struct.Struct("!HH")
HEADER_SIZE = _HEADER.size


class BusError(ValueError):
    """A payload on the bus that is not a message of this version (counted, dropped)."""


def _unpack(layout: struct.Struct, data: bytes, offset: int = HEADER_SIZE) -> tuple[int, ...]:
    """``layout`` read at ``offset``; a body cut short is a :class:`BusError`."""
    try:
        return layout.unpack_from(data, offset)
    except struct.error:
        raise BusError(f"a bus message body shorter than its {layout.format!r} part") from None


@dataclass(frozen=True, slots=True)
class Header:
    kind: int
    node: int  # the origin node
    publisher: int  # the sending worker's pid
    seq: int


@dataclass(frozen=True, slots=True)
class Channels:
    """The pub/sub channel and key names of one cluster (``cluster_name``)."""

    name: str

    @property
    def all(self) -> bytes:
        return f"sw:{self.name}:all".encode()

    @property
    def ctl(self) -> bytes:
        return f"sw:{self.name}:ctl".encode()

    @property
    def epoch_key(self) -> str:
        return f"sw:{self.name}:epoch"

    def node(self, node: int) -> bytes:
        """Node ``node``'s channel (pushes, disconnects, answers addressed to it)."""
        return f"sw:{self.name}:node:{node}".encode()

    def node_key(self, node: int) -> str:
        """Node ``node``'s claim: set once with NX (no two nodes share a number)."""
        return f"sw:{self.name}:node:{node}"


def encode(kind: int, node: int, publisher: int, seq: int, body: bytes = b"") -> bytes:
    return _HEADER.pack(kind, VERSION, node, publisher, seq) + body


_ORIGIN = struct.Struct("!IIQ")  # the header past kind and version


def read_origin(data: bytes) -> tuple[int, int, int]:
    """``(node, publisher, seq)`` of a message at least HEADER_SIZE long, unchecked: what
    a subscriber needs to tell its own node's messages from the others'."""
    node, publisher, seq = _ORIGIN.unpack_from(data, 2)
    return node, publisher, seq


def decode_header(data: bytes) -> Header:
    if len(data) < HEADER_SIZE:
        raise BusError(f"a bus message of {len(data)} bytes is shorter than its header")
    kind, version, node, publisher, seq = _HEADER.unpack_from(data)
    if version != VERSION:
        raise BusError(f"bus message version {version}, this node speaks {VERSION}")
    return Header(kind, node, publisher, seq)


# -- bodies: one encoder and one decoder per kind ------------------------------------------


def push_body(fd: int, opcode: int, payload: bytes) -> bytes:
    return _FD.pack(fd, opcode) + payload


def read_push(data: bytes) -> tuple[int, int, bytes]:
    fd, opcode = _unpack(_FD, data)
    return fd, opcode, data[HEADER_SIZE + _FD.size :]


def broadcast_body(opcode: int, payload: bytes) -> bytes:
    return bytes((opcode,)) + payload


def read_broadcast(data: bytes) -> tuple[int, bytes]:
    if len(data) <= HEADER_SIZE:
        raise BusError("a broadcast without its opcode")
    return data[HEADER_SIZE], data[HEADER_SIZE + 1 :]


def multi_push_body(fds: list[int], opcode: int, payload: bytes) -> bytes:
    return _COUNT.pack(len(fds)) + struct.pack(f"!{len(fds)}Q", *fds) + bytes((opcode,)) + payload


def read_multi_push(data: bytes) -> tuple[list[int], int, bytes]:
    (count,) = _unpack(_COUNT, data)
    start = HEADER_SIZE + _COUNT.size
    end = start + 8 * count
    if len(data) <= end:
        raise BusError("a multi-push shorter than its session list")
    return list(_unpack(struct.Struct(f"!{count}Q"), data, start)), data[end], data[end + 1 :]


def disconnect_body(fd: int, code: int, reason: str) -> bytes:
    return _DISCONNECT.pack(fd, code) + reason.encode()


def read_disconnect(data: bytes) -> tuple[int, int, str]:
    fd, code = _unpack(_DISCONNECT, data)
    return fd, code, data[HEADER_SIZE + _DISCONNECT.size :].decode(errors="replace")


def ids_body(fds: list[int]) -> bytes:
    return struct.pack(f"!{len(fds)}Q", *fds)


def read_ids(data: bytes, offset: int = 0) -> list[int]:
    start = HEADER_SIZE + offset
    count, extra = divmod(len(data) - start, 8)
    if extra or count < 0:
        raise BusError("a session list whose length is not a multiple of 8")
    return list(struct.unpack_from(f"!{count}Q", data, start))


def heartbeat_body(worker_id: int, sessions: int, token: int = 0) -> bytes:
    return _HEARTBEAT.pack(worker_id, min(sessions, 0xFFFFFFFF)) + _TOKEN.pack(token)


def read_heartbeat(data: bytes) -> tuple[int, int, int]:
    """worker id, sessions, and the node's token (0 from a node that sends none)."""
    worker_id, sessions = _unpack(_HEARTBEAT, data)
    return worker_id, sessions, _read_token(data, HEADER_SIZE + _HEARTBEAT.size)


def _read_token(data: bytes, offset: int) -> int:
    """The token at ``offset``, 0 when the body ends before it (an older node); a token
    cut short is a :class:`BusError`."""
    if len(data) <= offset:
        return 0
    (token,) = _unpack(_TOKEN, data, offset)
    return int(token)


def claim_value(token: int, master_pid: int) -> str:
    """What a node's key holds: its token first (docs/cluster.md, "Liveness"), then
    where it runs, for whoever reads Redis."""
    return f"token={token:016x};pid={master_pid};host={os.uname().nodename}"


def snapshot_body(worker_id: int, fds: list[int]) -> bytes:
    return _WORKER.pack(worker_id) + ids_body(fds)


def read_snapshot(data: bytes) -> tuple[int, list[int]]:
    (worker_id,) = _unpack(_WORKER, data)
    return worker_id, read_ids(data, _WORKER.size)


def question_body(fd: int, request: int) -> bytes:
    return _QUESTION.pack(fd, request)


def read_question(data: bytes) -> tuple[int, int]:
    fd, request = _unpack(_QUESTION, data)
    return fd, request


def answer_body(asker: int, request: int, alive: bool) -> bytes:
    return _ANSWER.pack(asker, request, alive)


def read_answer(data: bytes) -> tuple[int, int, bool]:
    asker, request, alive = _unpack(_ANSWER, data)
    return asker, request, bool(alive)


def pipe_body(target: int, source: int, payload: bytes) -> bytes:
    return _PIPE.pack(target, source) + payload


def read_pipe(data: bytes) -> tuple[int, int, bytes]:
    target, source = _unpack(_PIPE, data)
    return target, source, data[HEADER_SIZE + _PIPE.size :]


def leaving_body(node_leaving: bool, token: int = 0) -> bytes:
    return bytes((1 if node_leaving else 0,)) + _TOKEN.pack(token)


def read_leaving(data: bytes) -> tuple[bool, int]:
    """Whether the whole node leaves, and its token (0 from a node that sends none)."""
    node_leaving = len(data) > HEADER_SIZE and data[HEADER_SIZE] == 1
    return node_leaving, _read_token(data, HEADER_SIZE + 1)


class Marks(dict[tuple[int, int], int]):
    """How far one subscriber has read each publisher: ``(node, pid) -> last seq``.

    A stopping worker hands its marks to its successor with the sessions it moves;
    the successor applies to them exactly the messages past those marks: the ones it
    read already (kept in its recent history) and the ones still to come. Neither of
    two subscribers reading the same publishers at their own pace then misses or
    repeats a message for a moved session (docs/cluster.md, "Reloads").
    """

    def seen(self, header: Header) -> None:
        self[header.node, header.publisher] = header.seq

    def covers(self, header: Header) -> bool:
        """Whether the holder of these marks had read the message of ``header``."""
        return self.get((header.node, header.publisher), 0) >= header.seq
