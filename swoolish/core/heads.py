"""The compiled reader of plain WebSocket handshake request heads, when it was built.

``upgrade_head(data, max_fields, max_bytes)`` (swoolish/core/_speedups.c says what it
takes) lets a worker answer the handshake every client sends without making an HTTP
parser for the connection; it is None without the compiled module or with
``SWOOLISH_NO_SPEEDUPS=1``, and then httptools reads every request, as it reads every
head this function declines.
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = ["UpgradeHead", "upgrade_head"]

#: (target, HTTP version, [(name, value)], {lower-case name: [value]}, offset after the
#: head, keep-alive)
UpgradeHead = tuple[str, str, list[tuple[str, str]], dict[str, list[str]], int, bool]

upgrade_head: Callable[[bytes, int, int], UpgradeHead | None] | None = None
if not os.environ.get("SWOOLISH_NO_SPEEDUPS"):
    try:
        from ._speedups import upgrade_head
    except ImportError:  # not built, or built before it had this function
        pass
