"""Whether this process is importing the app now, and which servers that import built.

A script that ends with ``server.start()`` is imported again by every worker; while it
is, ``start()`` must do nothing, and a server built by the import but kept in no
module-level name must still be found. Both facts are process state kept here, below the
loader that sets them and the server that reads them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

__all__ = ["created_during_load", "loading", "loading_in_worker", "note_server_created"]

_loading_depth = 0
_created: list[Any] = []


def loading_in_worker() -> bool:
    """True while a worker imports the app; ``server.start()`` is then a no-op."""
    return _loading_depth > 0


@contextlib.contextmanager
def loading() -> Iterator[None]:
    """Mark the import of the app, forgetting servers an earlier import built."""
    global _loading_depth
    if not _loading_depth:
        _created.clear()
    _loading_depth += 1
    try:
        yield
    finally:
        _loading_depth -= 1


def note_server_created(server: Any) -> None:
    """Remember servers built while loading: a script's server may have no known name."""
    if _loading_depth:
        _created.append(server)


def created_during_load() -> list[Any]:
    """The servers the last import of the app built, oldest first."""
    return list(_created)
