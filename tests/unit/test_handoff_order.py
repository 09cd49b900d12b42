"""swoolish.worker.handoff: which sessions move first, and from where on the old worker
steps back (docs/performance.md, "Live hand-off")."""

from __future__ import annotations

import itertools
import time
from types import SimpleNamespace

from swoolish.worker import handoff


def sessions(*ages: float) -> list:
    now = time.time()
    return [SimpleNamespace(last_time=now - age) for age in ages]


def test_the_first_quiet_session_is_where_the_rest_can_move_in_the_background() -> None:
    quiet = 2 * handoff.QUIET_SECONDS
    assert handoff._first_quiet(sessions(0.0, 0.01, quiet, quiet + 1)) == 2
    assert handoff._first_quiet(sessions(quiet, quiet)) == 0  # all quiet
    assert handoff._first_quiet(sessions(0.0, 0.0)) == 2  # none: never steps back
    assert handoff._first_quiet([]) == 0


def test_batches_leave_busiest_first_with_a_small_first_one() -> None:
    slices = handoff._slices(1000)
    assert slices[0] == (0, handoff.FIRST_SLICE)
    assert slices[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(slices))
