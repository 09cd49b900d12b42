"""Recycling one worker after max_request: the reload plan's single-slot roll.

The plan is driven directly, event by event, with fake pids and a fake clock; what a
recycle must guarantee (docs/reload.md, "Recycling"): the successor is ready and serving
before the old worker pauses and stops, one roll at a time, the generation number
unchanged, a failed successor rolled back with a growing back-off, and a recycle that
a reload makes moot dropped.
"""

from __future__ import annotations

import random

import pytest

from swoolish.core.reload import (
    Finished,
    Kill,
    Pause,
    Phase,
    Recycled,
    ReloadPlan,
    RequestAgain,
    Serve,
    Spawn,
    Stop,
    recycle_point,
)

G = 3
T0 = 50.0
SERVING = {100: 0, 101: 1}  # pid -> slot


def plan(**kwargs: float) -> ReloadPlan:
    return ReloadPlan(G, slots=2, start_timeout=10.0, pause_timeout=1.0, **kwargs)


def of(kind: type, actions: list[object]) -> list[object]:
    return [a for a in actions if isinstance(a, kind)]


def recycle_through(p: ReloadPlan, old: int, new: int, now: float = T0) -> list[object]:
    """A recycle of ``old`` from its request to its end, the successor being ``new``."""
    slot = SERVING.get(old, 0)
    assert p.recycle(old, now, dict(SERVING)) == [Spawn(slot, p.generation)]
    assert p.spawned(slot, new, now) == []
    assert p.ready(new, now + 0.2) == [Serve(new), Pause(old)]
    return p.paused(old, now + 0.3)


# ---------------------------------------------------------------------------- the grace


def test_no_max_request_means_never_and_no_grace_means_exactly_max_request():
    def never_called(a: int, b: int) -> int:
        raise AssertionError("no grace: nothing is drawn")

    assert recycle_point(0, 50, never_called) == 0
    assert recycle_point(200, 0, never_called) == 200


def test_the_grace_is_drawn_once_per_worker_with_both_ends_included():
    draws: list[tuple[int, int]] = []

    def fixed(value: int):
        def randint(a: int, b: int) -> int:
            draws.append((a, b))
            return value

        return randint

    assert recycle_point(200, 50, fixed(0)) == 200
    assert recycle_point(200, 50, fixed(50)) == 250
    assert recycle_point(200, 50, fixed(17)) == 217
    assert draws == [(0, 50)] * 3


def test_with_a_grace_workers_get_different_recycle_points_within_the_bounds():
    rng = random.Random(1234)
    points = [recycle_point(200, 100, rng.randint) for _ in range(8)]
    assert all(200 <= point <= 300 for point in points)
    assert len(set(points)) > 1, points  # not all replaced at the same count


# ---------------------------------------------------------------------------- one recycle


def test_a_recycle_rolls_one_slot_without_a_new_generation():
    p = plan()
    actions = recycle_through(p, 100, 200)
    assert actions == [
        Stop(100, 1012),
        Recycled(
            slot=0,
            ok=True,
            reason="complete",
            old_pid=100,
            new_pid=200,
            started_at=T0,
            ended_at=T0 + 0.3,
        ),
    ]
    assert p.generation == G and p.latest == G and p.reloads == 0
    assert p.recycles == 1
    assert p.phase is Phase.IDLE and p.recycling is None
    assert p.next_deadline() is None


def test_the_successor_is_not_told_to_serve_before_it_is_ready_and_the_old_one_keeps_serving():
    p = plan()
    assert p.recycle(101, T0, dict(SERVING)) == [Spawn(1, G)]
    assert p.active and p.recycling == 1
    assert p.owns(201) is False
    assert p.spawned(1, 201, T0) == []
    assert p.owns(201)
    assert p.next_deadline() == T0 + 10.0
    assert p.tick(T0 + 5) == []  # booting: no pause, no stop yet


def test_a_recycle_after_a_rolled_back_reload_keeps_the_serving_generation():
    p = plan()
    p.request(T0, dict(SERVING))
    p.spawned(0, 300, T0)
    rolled = p.exited(300, T0 + 1)
    assert finished_of(rolled).ok is False
    assert p.latest == G + 1 and p.generation == G
    actions = recycle_through(p, 100, 200, T0 + 2)
    assert of(Recycled, actions)[0].ok is True
    assert p.generation == G, "a recycle does not take the rolled-back reload's number"


def finished_of(actions: list[object]) -> Finished:
    [result] = of(Finished, actions)
    assert isinstance(result, Finished)
    return result


def test_a_worker_that_is_not_serving_is_not_recycled():
    p = plan()
    assert p.recycle(999, T0, dict(SERVING)) == []
    assert not p.active


# ---------------------------------------------------------------------------- one at a time


def test_recycles_asked_for_during_a_recycle_wait_their_turn():
    p = plan()
    assert p.recycle(100, T0, dict(SERVING)) == [Spawn(0, G)]
    assert p.recycle(101, T0, dict(SERVING)) == []
    assert p.recycle(101, T0, dict(SERVING)) == []  # asked twice: queued once
    assert p.recycles_waiting == 1
    p.spawned(0, 200, T0)
    p.ready(200, T0)
    actions = p.paused(100, T0 + 0.1)
    assert actions[-1] == Spawn(1, G), "the next recycle starts once this one ended"
    assert p.recycling == 1 and p.recycles_waiting == 0


def test_a_recycle_asked_for_during_a_reload_is_dropped_when_the_reload_replaces_the_worker():
    p = plan()
    p.request(T0, dict(SERVING))
    assert p.recycle(100, T0, dict(SERVING)) == []
    for slot, pid in ((0, 300), (1, 301)):
        p.spawned(slot, pid, T0)
    p.ready(300, T0)
    p.ready(301, T0)
    p.paused(100, T0)
    actions = p.paused(101, T0)
    assert finished_of(actions).ok
    assert of(Spawn, actions) == [], "the reload replaced the worker already"
    assert p.recycles_waiting == 0 and not p.active


def test_a_recycle_asked_for_during_a_reload_runs_after_the_reload_rolls_back():
    p = plan()
    p.request(T0, dict(SERVING))
    p.recycle(101, T0, dict(SERVING))
    p.spawned(0, 300, T0)
    actions = p.exited(300, T0 + 1)
    assert not finished_of(actions).ok
    assert actions[-1] == Spawn(1, G)
    assert p.recycling == 1


def test_a_reload_asked_for_during_a_recycle_follows_it_and_goes_before_queued_recycles():
    p = plan()
    p.recycle(100, T0, dict(SERVING))
    assert p.request(T0, dict(SERVING)) == []
    assert p.recycle(101, T0, dict(SERVING)) == []
    p.spawned(0, 200, T0)
    p.ready(200, T0)
    actions = p.paused(100, T0)
    assert of(Recycled, actions)[0].ok
    assert actions[-1] == RequestAgain(T0)
    assert of(Spawn, actions) == []


def test_a_queued_worker_that_dies_is_forgotten():
    p = plan()
    p.recycle(100, T0, dict(SERVING))
    p.recycle(101, T0, dict(SERVING))
    p.exited(101, T0)
    p.spawned(0, 200, T0)
    p.ready(200, T0)
    actions = p.paused(100, T0)
    assert of(Spawn, actions) == []
    assert p.recycles_waiting == 0


# ---------------------------------------------------------------------------- failures


def test_a_successor_that_fails_to_boot_rolls_back_and_is_retried_after_a_growing_back_off():
    p = plan(recycle_backoff=1.0, recycle_backoff_max=3.0)
    assert p.recycle(100, T0, dict(SERVING)) == [Spawn(0, G)]
    p.spawned(0, 200, T0)
    p.boot_failed(200, "ZeroDivisionError: division by zero (app.py:3)")
    actions = p.exited(200, T0 + 0.5)
    [result] = of(Recycled, actions)
    assert result == Recycled(
        slot=0,
        ok=False,
        reason="new worker 0 failed to boot: ZeroDivisionError: division by zero (app.py:3)",
        old_pid=100,
        new_pid=None,
        started_at=T0,
        ended_at=T0 + 0.5,
        retry_at=T0 + 1.5,
    )
    assert of(Stop, actions) == [] and of(Pause, actions) == []
    assert p.generation == G and not p.active
    # The old worker keeps serving; asking again does not bypass the back-off.
    assert p.recycle(100, T0 + 0.6, dict(SERVING)) == []
    assert p.next_deadline() == T0 + 1.5
    assert p.tick(T0 + 1.4) == []
    assert p.tick(T0 + 1.5) == [Spawn(0, G)]
    p.spawned(0, 201, T0 + 1.5)
    [again] = of(Recycled, p.exited(201, T0 + 2))
    assert again.retry_at == T0 + 2 + 2.0  # doubled
    assert p.tick(T0 + 4) == [Spawn(0, G)]
    p.spawned(0, 202, T0 + 4)
    [third] = of(Recycled, p.exited(202, T0 + 4))
    assert third.retry_at == T0 + 4 + 3.0  # capped
    assert p.tick(T0 + 7) == [Spawn(0, G)]
    p.spawned(0, 203, T0 + 7)
    p.ready(203, T0 + 7)
    assert of(Recycled, p.paused(100, T0 + 7))[0].ok
    assert p.recycles_waiting == 0


def test_a_successor_not_ready_in_time_is_killed_and_the_old_worker_keeps_serving():
    p = plan()
    p.recycle(101, T0, dict(SERVING))
    p.spawned(1, 201, T0)
    p.boot_stalled(201, "app.py:9: time.sleep(30)")
    actions = p.tick(T0 + 10)
    assert actions[0] == Kill(201, "recycle rolled back")
    [result] = of(Recycled, actions)
    assert not result.ok
    assert result.reason == (
        "new worker 1 was not ready within 10s (worker_start_timeout), "
        "stuck at app.py:9: time.sleep(30)"
    )


def test_the_old_worker_dying_while_its_successor_boots_ends_the_recycle_at_serve():
    p = plan()
    p.recycle(100, T0, dict(SERVING))
    p.spawned(0, 200, T0)
    assert p.exited(100, T0) == []
    actions = p.ready(200, T0 + 0.2)
    assert actions[0] == Serve(200)
    assert of(Stop, actions) == [] and of(Pause, actions) == []
    [result] = of(Recycled, actions)
    assert result.ok and result.old_pid == 100


def test_a_shutdown_during_a_recycle_kills_the_booting_successor_and_forgets_the_queue():
    p = plan()
    p.recycle(100, T0, dict(SERVING))
    p.recycle(101, T0, dict(SERVING))
    p.spawned(0, 200, T0)
    assert p.abort() == [Kill(200, "shutdown during reload")]
    assert not p.active and p.recycles_waiting == 0
    assert p.tick(T0 + 100) == []


@pytest.mark.parametrize("slot_pid", [100, 101])
def test_a_back_off_is_never_a_deadline_while_a_roll_is_in_progress(slot_pid):
    p = plan()
    p.recycle(slot_pid, T0, dict(SERVING))
    slot = SERVING[slot_pid]
    p.spawned(slot, 200, T0)
    p.exited(200, T0)  # rolled back: retry in 1 s
    for spawn in p.request(T0 + 0.1, dict(SERVING)):  # a reload meanwhile
        assert isinstance(spawn, Spawn)
        p.spawned(spawn.slot, 300 + spawn.slot, T0 + 0.1)
    # The overdue retry must not make the master's loop spin during the reload.
    assert p.next_deadline() == T0 + 0.1 + 10.0
    assert p.tick(T0 + 5) == []
