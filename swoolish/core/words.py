"""Counted nouns for what people read: log lines and the command line's output.

"1 workers" reads as a slip, and a line that is wrong in its grammar makes the reader
doubt its figures too; every count shown next to a noun goes through :func:`plural`.
"""

from __future__ import annotations

__all__ = ["plural"]


def plural(count: int, noun: str, many: str | None = None) -> str:
    """``count`` and ``noun``, the noun singular for exactly 1 and plural otherwise
    (``many``, or ``noun`` + "s"): ``plural(1, "worker")`` is "1 worker",
    ``plural(0, "worker")`` is "0 workers", ``plural(2, "batch", "batches")`` is
    "2 batches"."""
    return f"{count} {noun if count == 1 else many or noun + 's'}"
