"""A TLS transport that takes large writes in slices.

uvloop encrypts what one ``write`` hands its TLS transport whole into the connection's
TLS output buffer (an OpenSSL memory BIO), and that buffer keeps its size once drained:
a connection that was once sent 1 MiB held about 1.3 MiB for as long as it stayed open.
Each ``write`` is encrypted and passed on to the socket's transport before the call
returns, so the same bytes handed over in writes of 64 KiB never grow the buffer past
one slice: 74 KiB per idle connection instead of 1,331 KiB on bare uvloop, for 50
connections sent 1 MiB each (docs/deployment.md, "TLS"). Only connections of a TLS
listener are wrapped; everything but ``write`` is the transport's own.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

__all__ = ["TLS_SLICE", "sliced_writes"]

TLS_SLICE = 64 * 1024  # bytes per write handed to the TLS transport


class _SlicedWrites:
    """The TLS transport ``transport``, with writes over TLS_SLICE cut into slices."""

    __slots__ = ("_transport",)

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport

    def write(self, data: bytes | bytearray | memoryview) -> None:
        write = self._transport.write
        size = len(data)
        if size <= TLS_SLICE:
            write(data)
            return
        for start in range(0, size, TLS_SLICE):
            write(data[start : start + TLS_SLICE])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


def sliced_writes(transport: asyncio.Transport) -> asyncio.Transport:
    """``transport`` (uvloop's TLS transport), taking large writes in slices."""
    return cast(asyncio.Transport, _SlicedWrites(transport))
