"""The rolling reload state machine, driven event by event.

``Master`` below plays the master process: it executes the actions the plan returns
(forking fake pids, keeping a fake process table, asking again for coalesced
requests) and checks the plan's safety rules on every action it executes, so every
scenario in this file is also checked against them.
"""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from swoolish.core.reload import (
    Finished,
    Kill,
    Pause,
    Phase,
    ReloadPlan,
    RequestAgain,
    Serve,
    Spawn,
    Stop,
)

G = 7  # the generation serving when a test starts
T0 = 100.0  # the master's clock when a test starts
START_TIMEOUT = 10.0
PAUSE_TIMEOUT = 1.0
UNKNOWN_PID = 99_999
ROLLED_BACK = "reload rolled back"


# ---------------------------------------------------------------------------- the driver


@dataclasses.dataclass
class Reload:
    """What the driver knows about one reload, to check the plan's actions against."""

    generation: int
    slots: int
    old: frozenset[int]
    number: int = 0  # the generation number this reload starts (set by its first Spawn)
    new: dict[int, int] = dataclasses.field(default_factory=dict)  # slot -> pid
    ready: set[int] = dataclasses.field(default_factory=set)
    served: set[int] = dataclasses.field(default_factory=set)  # Serve issued
    paused: list[int] = dataclasses.field(default_factory=list)  # Pause issued, in order
    stopped: list[int] = dataclasses.field(default_factory=list)  # Stop issued, in order
    killed: list[int] = dataclasses.field(default_factory=list)

    @property
    def all_ready(self) -> bool:
        return all(self.new.get(slot) in self.ready for slot in range(self.slots))


class Master:
    """Executes the plan's actions against a fake process table."""

    def __init__(
        self,
        slots: int = 2,
        batch: int = 0,
        generation: int = G,
        now: float = T0,
        start_timeout: float = START_TIMEOUT,
        pause_timeout: float = PAUSE_TIMEOUT,
    ) -> None:
        self.plan = ReloadPlan(generation, slots, batch, start_timeout, pause_timeout)
        self.now = now
        self._next_pid = 100
        self.serving: dict[int, int] = {self._fork(): slot for slot in range(slots)}
        self.alive: set[int] = set(self.serving)
        self.exited_pids: set[int] = set()
        self.new: dict[int, int] = {}  # slot -> pid, for the reload in progress
        self.reload: Reload | None = None
        self.reloads: list[Reload] = []
        self.log: list[object] = []  # every action executed, in order
        self.finished: list[Finished] = []
        self.numbers_used = generation  # the highest generation number seen so far

    @property
    def old_pids(self) -> list[int]:
        return sorted(self.serving)

    @property
    def known_pids(self) -> list[int]:
        return list(range(100, self._next_pid))

    def _fork(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def at(self, now: float) -> Master:
        assert now >= self.now, "the clock is monotonic"
        self.now = now
        return self

    # -- events: each returns every action executed because of it, in order

    def request(self) -> list[object]:
        if not self.plan.active:
            self._begin()
        return self._run(self.plan.request(self.now, dict(self.serving)))

    def ready(self, pid: int) -> list[object]:
        if self.reload is not None and pid in self.reload.new.values():
            self.reload.ready.add(pid)
        return self._run(self.plan.ready(pid, self.now))

    def paused(self, pid: int) -> list[object]:
        return self._run(self.plan.paused(pid, self.now))

    def exited(self, pid: int) -> list[object]:
        self.alive.discard(pid)
        self.serving.pop(pid, None)
        self.exited_pids.add(pid)
        return self._run(self.plan.exited(pid, self.now))

    def tick(self, now: float | None = None) -> list[object]:
        if now is not None:
            self.at(now)
        return self._run(self.plan.tick(self.now))

    def abort(self) -> list[object]:
        actions = self._run(self.plan.abort())
        self.reload = None
        self.new = {}
        return actions

    # -- executing actions

    def _begin(self) -> None:
        self.reload = Reload(self.plan.generation, self.plan.slots, frozenset(self.serving))
        self.reloads.append(self.reload)
        self.new = {}

    def _run(self, actions: list[object]) -> list[object]:
        done: list[object] = []
        for action in actions:
            done.append(action)
            self.log.append(action)
            self._check(action)
            done.extend(self._run(self._execute(action)))
        return done

    def _execute(self, action: object) -> list[object]:
        match action:
            case Spawn(slot=slot):
                pid = self._fork()
                self.new[slot] = pid
                self.alive.add(pid)
                assert self.reload is not None
                self.reload.new[slot] = pid
                return self.plan.spawned(slot, pid, self.now)
            case Pause() | Serve():
                return []
            case Stop(pid=pid) | Kill(pid=pid):
                self.alive.discard(pid)
                self.serving.pop(pid, None)
                return []
            case Finished(ok=ok):
                self.finished.append(action)
                if ok:
                    self.serving = {pid: s for s, pid in self.new.items() if pid in self.alive}
                self.new = {}
                self.reload = None
                return []
            case RequestAgain():
                # Ask again at once, with the workers serving now.
                self._begin()
                return self.plan.request(self.now, dict(self.serving))
        raise AssertionError(f"unknown action {action!r}")

    def _check(self, action: object) -> None:
        """The safety rules of a rolling reload, checked on every action."""
        reload = self.reload
        if isinstance(action, RequestAgain):
            assert reload is None, "a coalesced request is due only after a reload ended"
            return
        assert reload is not None, f"{action!r} issued while no reload was in progress"
        match action:
            case Spawn(generation=generation):
                if not reload.number:
                    assert generation > self.numbers_used, "a generation number was reused"
                    reload.number = self.numbers_used = generation
                assert generation == reload.number, "two numbers in one reload"
            case Serve(pid=pid):
                assert pid in reload.new.values(), "only a new worker is told to serve"
                assert reload.all_ready, "a new worker served before its generation was ready"
                assert not reload.paused, "a Serve after a Pause"
                assert pid not in reload.served, "a new worker told to serve twice"
                reload.served.add(pid)
            case Pause(pid=pid):
                assert pid in reload.old, "only an old worker is paused"
                assert reload.all_ready, "an old worker paused before every new one was ready"
                assert reload.served == set(reload.new.values()), "paused before new ones serve"
                assert not reload.stopped, "a Pause after a Stop"
                assert pid not in reload.paused, "an old worker paused twice"
                reload.paused.append(pid)
            case Stop(pid=pid, code=code):
                assert code == 1012
                assert pid in reload.old, "only an old worker is stopped"
                assert pid not in reload.new.values(), "a new worker was stopped"
                assert reload.all_ready, "an old worker stopped before every new one was ready"
                assert pid in reload.paused, "an old worker stopped without a Pause"
                assert pid not in reload.stopped, "an old worker stopped twice"
                assert pid not in self.exited_pids, "a dead old worker was stopped"
                reload.stopped.append(pid)
            case Kill(pid=pid):
                assert pid in reload.new.values(), "only a new worker is killed"
                assert pid not in reload.old, "an old worker was killed"
                assert pid not in self.exited_pids, "a dead worker was killed"
                assert pid not in reload.killed, "a worker killed twice"
                reload.killed.append(pid)
            case Finished(ok=True, generation=generation, attempted=attempted):
                assert generation == attempted == reload.number
                assert reload.all_ready
                assert not reload.killed
            case Finished(ok=False, generation=generation, attempted=attempted):
                assert generation == reload.generation
                assert attempted == reload.number or not reload.number
                assert not reload.paused and not reload.stopped
                assert not reload.served, "a rolled-back worker had been told to serve"


def serve_new(m: Master) -> list[object]:
    """The Serve actions a reload gives its new workers once all are ready, in slot order."""
    return [Serve(pid) for _, pid in sorted(m.new.items())]


def of(kind: type, actions: list[object]) -> list[object]:
    return [a for a in actions if isinstance(a, kind)]


def finished(actions: list[object]) -> Finished:
    [result] = of(Finished, actions)
    assert isinstance(result, Finished)
    return result


def boot_all(m: Master) -> list[object]:
    """Ready new workers in slot order until the plan stops booting."""
    actions: list[object] = []
    while m.plan.phase is Phase.BOOTING:
        pid = next(p for s, p in sorted(m.new.items()) if p not in m.reload.ready)
        actions += m.ready(pid)
    return actions


def pause_all(m: Master, old: list[int]) -> list[object]:
    actions: list[object] = []
    for pid in old:
        actions += m.paused(pid)
    return actions


# ---------------------------------------------------------------------------- happy path


@pytest.mark.parametrize("slots", [1, 2, 4])
@pytest.mark.parametrize("batch", [1, 2, 0])
def test_a_reload_boots_new_workers_batch_by_batch_then_pauses_and_stops_the_old(slots, batch):
    m = Master(slots=slots, batch=batch)
    old = m.old_pids
    window = min(batch or slots, slots)

    assert m.request() == [Spawn(slot, G + 1) for slot in range(window)]
    assert m.plan.phase is Phase.BOOTING
    assert m.plan.target == G + 1
    assert m.plan.generation == G

    for slot in range(slots):
        m.at(m.now + 1)
        actions = m.ready(m.new[slot])
        if slot < slots - 1:
            # A ready worker frees one place in the window: the next one is forked.
            following = slot + window
            assert actions == ([Spawn(following, G + 1)] if following < slots else [])
        else:
            assert actions == serve_new(m) + [Pause(pid) for pid in old]
    assert m.plan.phase is Phase.PAUSING
    new = [m.new[slot] for slot in range(slots)]

    for pid in old[:-1]:
        assert m.paused(pid) == []
    m.at(m.now + 0.5)
    actions = m.paused(old[-1])

    assert actions[:-1] == [Stop(pid, 1012) for pid in old]
    assert actions[-1] == Finished(
        generation=G + 1,
        ok=True,
        reason="complete",
        started_at=T0,
        ended_at=m.now,
        new_pids=tuple(new),
        old_pids=tuple(old),
        attempted=G + 1,
    )
    assert m.plan.generation == G + 1
    assert m.plan.target == G + 1
    assert m.plan.phase is Phase.IDLE
    assert not m.plan.active
    assert m.plan.reloads == 1
    assert m.plan.next_deadline() is None
    assert m.serving == dict(zip(new, range(slots), strict=True))


@pytest.mark.parametrize("batch", [1, 2, 0])
def test_old_workers_stop_only_after_every_new_worker_is_ready(batch):
    m = Master(slots=4, batch=batch)
    m.request()
    before_last_ready: list[object] = []
    while len(m.reload.ready) < 3:
        pid = next(p for p in m.new.values() if p not in m.reload.ready)
        before_last_ready += m.ready(pid)
    assert of(Pause, before_last_ready) == []
    assert of(Stop, before_last_ready) == []
    assert m.plan.phase is Phase.BOOTING

    last = m.ready(m.new[3])
    assert last == serve_new(m) + [Pause(pid) for pid in m.old_pids]


def test_new_workers_may_become_ready_in_any_order():
    m = Master(slots=3, batch=0)
    old = m.old_pids
    m.request()
    assert m.ready(m.new[2]) == []
    assert m.ready(m.new[0]) == []
    assert m.ready(m.new[1]) == serve_new(m) + [Pause(pid) for pid in old]


def test_a_batch_refills_only_as_workers_become_ready():
    m = Master(slots=4, batch=2)
    assert m.request() == [Spawn(0, G + 1), Spawn(1, G + 1)]
    assert m.ready(m.new[1]) == [Spawn(2, G + 1)]
    assert m.ready(m.new[2]) == [Spawn(3, G + 1)]
    assert m.ready(m.new[0]) == []
    assert m.ready(m.new[3]) == serve_new(m) + [Pause(pid) for pid in m.old_pids]


def test_a_batch_larger_than_the_slots_forks_every_slot_at_once():
    m = Master(slots=2, batch=5)
    assert m.request() == [Spawn(0, G + 1), Spawn(1, G + 1)]


def test_old_workers_are_paused_and_stopped_in_pid_order():
    m = Master(slots=3)
    serving = {905: 0, 901: 1, 903: 2}
    m.serving = dict(serving)
    m.alive = set(serving)
    m.request()
    assert boot_all(m) == [*serve_new(m), Pause(901), Pause(903), Pause(905)]
    assert m.paused(905) == []
    assert m.paused(901) == []
    assert m.paused(903)[:3] == [Stop(901), Stop(903), Stop(905)]


def test_a_reload_with_no_serving_workers_finishes_when_the_new_ones_are_ready():
    m = Master(slots=2)
    m.serving = {}
    m.request()
    m.ready(m.new[0])
    new = (m.reloads[0].new[0], m.reloads[0].new[1])
    actions = m.ready(m.new[1])
    assert actions == [
        *(Serve(pid) for pid in new),
        Finished(G + 1, True, "complete", T0, T0, new, (), attempted=G + 1),
    ]
    assert m.plan.generation == G + 1


def test_the_constructor_rejects_zero_slots_and_treats_batch_zero_as_all():
    with pytest.raises(ValueError, match="at least one slot"):
        ReloadPlan(G, 0)
    assert ReloadPlan(G, 3, batch=0).batch == 3
    assert ReloadPlan(G, 3, batch=-1).batch == 3
    assert ReloadPlan(G, 3, batch=2).batch == 2


def test_a_second_reload_replaces_the_workers_of_the_first():
    m = Master(slots=2)
    first_old = m.old_pids
    m.request()
    boot_all(m)
    pause_all(m, first_old)
    second_old = m.old_pids
    assert set(second_old).isdisjoint(first_old)

    assert m.request() == [Spawn(0, G + 2), Spawn(1, G + 2)]
    assert boot_all(m) == serve_new(m) + [Pause(pid) for pid in second_old]
    assert finished(pause_all(m, second_old)).generation == G + 2
    assert m.plan.generation == G + 2
    assert m.plan.reloads == 2


# ---------------------------------------------------------------------------- pause deadline


def test_old_workers_that_never_acknowledge_the_pause_are_stopped_at_the_pause_deadline():
    m = Master(slots=2)
    old = m.old_pids
    m.request()
    m.at(T0 + 3)
    boot_all(m)
    deadline = T0 + 3 + PAUSE_TIMEOUT
    assert m.plan.next_deadline() == deadline
    assert m.paused(old[0]) == []

    assert m.tick(deadline - 0.001) == []
    assert m.plan.phase is Phase.PAUSING
    actions = m.tick(deadline)

    assert actions[:-1] == [Stop(old[0]), Stop(old[1])]
    result = finished(actions)
    assert result.ok
    assert result.generation == G + 1
    assert result.ended_at == deadline
    assert m.plan.generation == G + 1
    assert m.plan.phase is Phase.IDLE


def test_no_old_worker_acknowledging_still_finishes_at_the_pause_deadline():
    m = Master(slots=3)
    old = m.old_pids
    m.request()
    boot_all(m)
    actions = m.tick(T0 + PAUSE_TIMEOUT + 50)
    assert actions[:-1] == [Stop(pid) for pid in old]
    assert finished(actions).ok


def test_a_pause_acknowledged_after_the_deadline_is_ignored():
    m = Master(slots=2)
    old = m.old_pids
    m.request()
    boot_all(m)
    m.tick(T0 + PAUSE_TIMEOUT)
    assert m.paused(old[0]) == []
    assert m.paused(old[1]) == []
    assert m.plan.generation == G + 1


# ---------------------------------------------------------------------------- rollback


def assert_rolled_back(m: Master, actions: list[object], killed: list[int], slot: int) -> None:
    assert actions[:-1] == [Kill(pid, ROLLED_BACK) for pid in killed]
    result = finished(actions)
    assert actions[-1] == result
    assert not result.ok
    assert result.generation == G
    assert f"new worker {slot}" in result.reason
    assert result.old_pids == tuple(sorted(m.reloads[-1].old))
    assert of(Pause, m.log) == []
    assert of(Stop, m.log) == []
    assert m.plan.generation == G
    assert m.plan.phase is Phase.IDLE
    assert m.plan.next_deadline() is None
    assert not any(m.plan.owns(pid) for pid in killed)
    assert sorted(m.serving) == sorted(m.reloads[-1].old), "the old workers never noticed"


@pytest.mark.parametrize("batch", [1, 0])
@pytest.mark.parametrize("position", [0, 1, 2], ids=["first", "middle", "last"])
def test_a_new_worker_exiting_before_it_is_ready_rolls_the_reload_back(batch, position):
    m = Master(slots=3, batch=batch)
    m.request()
    for slot in range(position):
        m.ready(m.new[slot])
    spawned = dict(m.new)
    crashed = spawned[position]

    actions = m.exited(crashed)

    others = [pid for slot, pid in sorted(spawned.items()) if pid != crashed]
    assert_rolled_back(m, actions, others, position)
    assert crashed not in of(Kill, actions)
    assert finished(actions).reason == f"new worker {position} exited before it was ready"
    assert finished(actions).new_pids == tuple(others)


def test_the_exit_reason_given_by_the_master_is_in_the_rollback_reason():
    plan = ReloadPlan(G, 1)
    plan.request(T0, {1: 0})
    plan.spawned(0, 2, T0)
    [result] = plan.exited(2, T0 + 1, reason="was killed by SIGSEGV")
    assert isinstance(result, Finished)
    assert result.reason == "new worker 0 was killed by SIGSEGV before it was ready"


def test_the_cause_a_new_worker_reported_is_the_rollback_reason():
    plan = ReloadPlan(G, 2)
    plan.request(T0, {1: 0, 2: 1})
    plan.spawned(0, 3, T0)
    plan.spawned(1, 4, T0)
    plan.boot_stalled(4, "app.py:3: import time")  # superseded by what it says next
    plan.boot_failed(4, "ZeroDivisionError: division by zero (app.py:7)")
    actions = plan.exited(4, T0 + 1, reason="exit status 3")
    assert finished(actions).reason == (
        "new worker 1 failed to boot: ZeroDivisionError: division by zero (app.py:7)"
    )
    assert of(Kill, actions) == [Kill(3, "reload rolled back")]


def test_where_a_new_worker_was_stuck_is_in_the_timeout_reason():
    plan = ReloadPlan(G, 1, start_timeout=START_TIMEOUT)
    plan.request(T0, {1: 0})
    plan.spawned(0, 2, T0)
    plan.boot_stalled(2, "app.py:8: time.sleep(30)")
    actions = plan.tick(T0 + START_TIMEOUT)
    assert finished(actions).reason == (
        "new worker 0 was not ready within 10s (worker_start_timeout), "
        "stuck at app.py:8: time.sleep(30)"
    )


def test_causes_reported_by_unknown_ready_or_idle_workers_change_nothing():
    plan = ReloadPlan(G, 1)
    plan.boot_failed(2, "ignored while idle")
    plan.request(T0, {1: 0})
    plan.spawned(0, 2, T0)
    plan.boot_failed(UNKNOWN_PID, "not a new worker")
    plan.ready(2, T0 + 1)
    plan.paused(1, T0 + 1)  # the reload finished: the worker is an ordinary one now
    plan.boot_failed(2, "too late")
    plan.request(T0 + 3, {2: 0})
    plan.spawned(0, 5, T0 + 3)
    actions = plan.exited(5, T0 + 4, reason="exit status 3")
    assert finished(actions).reason == "new worker 0 exit status 3 before it was ready"


@pytest.mark.parametrize("batch", [1, 0])
def test_a_new_worker_not_ready_by_the_start_deadline_rolls_the_reload_back(batch):
    m = Master(slots=2, batch=batch)
    m.request()
    deadline = T0 + START_TIMEOUT
    assert m.plan.next_deadline() == deadline

    assert m.tick(deadline - 0.001) == []
    assert m.plan.phase is Phase.BOOTING
    spawned = sorted(m.new.values())
    actions = m.tick(deadline)

    assert_rolled_back(m, actions, spawned, 0)
    assert "within 10s (worker_start_timeout)" in finished(actions).reason


def test_the_start_deadline_counts_from_each_workers_own_spawn():
    m = Master(slots=2, batch=1)
    m.request()
    m.at(T0 + 6)
    assert m.ready(m.new[0]) == [Spawn(1, G + 1)]
    late_deadline = T0 + 6 + START_TIMEOUT

    assert m.tick(T0 + START_TIMEOUT) == [], "the first worker is ready: its deadline is gone"
    assert m.tick(late_deadline - 0.001) == []
    actions = m.tick(late_deadline)

    # The ready worker is a new worker too: a reload is all-or-nothing.
    assert_rolled_back(m, actions, [m.reloads[0].new[0], m.reloads[0].new[1]], 1)


def test_a_rolled_back_reload_leaves_the_plan_ready_for_the_next_one():
    m = Master(slots=2)
    old = m.old_pids
    m.request()
    m.exited(m.new[1])
    assert m.plan.reloads == 1
    [rolled_back] = m.finished
    assert (rolled_back.generation, rolled_back.attempted) == (G, G + 1)

    # The rolled-back generation's number is never given to another set of processes.
    assert m.request() == [Spawn(0, G + 2), Spawn(1, G + 2)]
    assert boot_all(m) == serve_new(m) + [Pause(pid) for pid in old]
    assert finished(pause_all(m, old)).generation == G + 2
    assert m.plan.generation == m.plan.latest == G + 2


def test_events_about_workers_of_a_rolled_back_reload_are_ignored():
    m = Master(slots=2)
    m.request()
    survivor = m.new[0]
    m.exited(m.new[1])
    log = len(m.log)

    assert m.ready(survivor) == []
    assert m.exited(survivor) == []
    assert m.tick(T0 + 100) == []
    assert m.log[log:] == []


def test_a_worker_forked_after_the_rollback_is_killed_when_it_reports():
    plan = ReloadPlan(G, 2)
    assert plan.request(T0, {1: 0, 2: 1}) == [Spawn(0, G + 1), Spawn(1, G + 1)]
    assert plan.spawned(0, 10, T0) == []
    [result] = plan.exited(10, T0)  # slot 1 was not forked yet: nothing to kill
    assert isinstance(result, Finished) and not result.ok

    assert plan.spawned(1, 11, T0) == [
        Kill(11, "spawned for a reload that is no longer booting"),
    ]


# ---------------------------------------------------------------------------- coalescing


def end_in(m: Master, how: str) -> list[object]:
    """End the reload in progress: ``ok`` or ``rollback``."""
    if how == "rollback":
        pid = next(p for p in m.new.values() if p not in m.reload.ready)
        return m.exited(pid)
    return pause_all(m, sorted(m.reload.old))


@pytest.mark.parametrize("requests", [1, 3, 20])
@pytest.mark.parametrize(
    ("phase", "how"),
    [("booting", "ok"), ("booting", "rollback"), ("pausing", "ok")],
)
def test_requests_during_a_reload_coalesce_into_one_more_reload(requests, phase, how):
    m = Master(slots=2, batch=1)
    m.request()
    if phase == "pausing":
        boot_all(m)
        assert m.plan.phase is Phase.PAUSING
    first = m.reloads[0]

    for _ in range(requests):
        assert m.request() == []
    assert m.plan.pending
    assert m.plan.reloads == 1

    if how == "ok" and phase == "booting":
        boot_all(m)
    m.at(m.now + 2)
    actions = end_in(m, how)

    result = finished(actions)
    assert result.ok is (how == "ok")
    i = actions.index(result)
    assert actions[i + 1] == RequestAgain(m.now)
    # The master calls request() again at once, with the workers serving now.
    assert actions[i + 2 :] == [Spawn(0, result.attempted + 1)]
    assert of(RequestAgain, m.log) == [RequestAgain(m.now)]
    assert not m.plan.pending
    assert m.plan.reloads == 2
    second = m.reloads[1]
    serving = set(first.new.values()) if how == "ok" else set(first.old)
    assert second.old == serving

    boot_all(m)
    actions = pause_all(m, sorted(second.old))
    assert of(RequestAgain, actions) == []
    assert m.plan.reloads == 2
    assert m.plan.generation == G + 2  # a rolled-back first reload took number G + 1


def test_twenty_requests_during_a_reload_make_exactly_two_reloads():
    m = Master(slots=4, batch=2)
    m.request()
    for i in range(20):
        m.at(T0 + i * 0.01)
        assert m.request() == []
        if i == 5:
            boot_all(m)
    pause_all(m, sorted(m.reloads[0].old))
    boot_all(m)
    pause_all(m, sorted(m.reloads[1].old))

    assert m.plan.reloads == 2
    assert len(of(RequestAgain, m.log)) == 1
    assert [f.ok for f in m.finished] == [True, True]
    assert m.plan.generation == G + 2
    assert not m.plan.active


def test_a_request_after_a_reload_ended_starts_a_reload_without_request_again():
    m = Master(slots=1)
    m.request()
    boot_all(m)
    pause_all(m, sorted(m.reloads[0].old))
    assert m.request() == [Spawn(0, G + 2)]
    assert of(RequestAgain, m.log) == []


# ---------------------------------------------------------------------------- old workers crashing


def test_an_old_worker_exiting_while_booting_is_neither_paused_nor_stopped():
    m = Master(slots=2)
    crashed, survivor = m.old_pids
    m.request()
    assert m.exited(crashed) == []
    assert m.plan.phase is Phase.BOOTING

    assert boot_all(m) == [*serve_new(m), Pause(survivor)]
    actions = m.paused(survivor)
    assert actions[:-1] == [Stop(survivor)]
    result = finished(actions)
    assert result.ok
    assert result.old_pids == (survivor,)


def test_every_old_worker_exiting_while_booting_makes_the_reload_finish_when_ready():
    m = Master(slots=2)
    m.request()
    for pid in m.old_pids:
        assert m.exited(pid) == []
    actions = boot_all(m)
    assert of(Pause, actions) == []
    assert of(Stop, actions) == []
    assert finished(actions).ok
    assert finished(actions).old_pids == ()


def test_an_old_worker_exiting_while_pausing_is_not_stopped():
    m = Master(slots=3)
    a, b, c = m.old_pids
    m.request()
    boot_all(m)
    assert m.exited(b) == []
    assert m.paused(a) == []
    actions = m.paused(c)
    assert actions[:-1] == [Stop(a), Stop(c)]
    assert finished(actions).old_pids == (a, c)


def test_the_last_unpaused_old_worker_exiting_finishes_the_reload():
    m = Master(slots=2)
    a, b = m.old_pids
    m.request()
    boot_all(m)
    assert m.paused(a) == []
    actions = m.exited(b)
    assert actions[:-1] == [Stop(a)]
    result = finished(actions)
    assert result.ok
    assert result.generation == G + 1
    assert m.plan.phase is Phase.IDLE


def test_a_paused_old_worker_exiting_is_not_stopped():
    m = Master(slots=2)
    a, b = m.old_pids
    m.request()
    boot_all(m)
    assert m.paused(a) == []
    assert m.exited(a) == []
    actions = m.paused(b)
    assert actions[:-1] == [Stop(b)]


# ---------------------------------------------------------------------------- odd events


def test_ready_twice_does_not_fork_twice_or_pause_early():
    m = Master(slots=3, batch=1)
    m.request()
    first = m.new[0]
    assert m.ready(first) == [Spawn(1, G + 1)]
    assert m.ready(first) == []
    assert m.ready(m.new[1]) == [Spawn(2, G + 1)]
    assert m.ready(m.new[1]) == []
    assert m.ready(m.new[2]) == serve_new(m) + [Pause(pid) for pid in m.old_pids]
    assert m.ready(m.new[2]) == []
    assert m.plan.phase is Phase.PAUSING


def test_ready_from_an_unknown_or_old_pid_is_ignored():
    m = Master(slots=2)
    m.request()
    assert m.ready(UNKNOWN_PID) == []
    assert m.ready(m.old_pids[0]) == []
    assert m.plan.phase is Phase.BOOTING
    assert m.ready(m.new[0]) == []
    assert m.ready(UNKNOWN_PID) == []
    assert m.plan.phase is Phase.BOOTING


def test_ready_when_idle_is_ignored():
    m = Master(slots=1)
    assert m.ready(m.old_pids[0]) == []
    assert m.ready(UNKNOWN_PID) == []
    assert m.log == []


def test_paused_when_idle_or_booting_is_ignored():
    m = Master(slots=2)
    old = m.old_pids
    assert m.paused(old[0]) == []
    m.request()
    assert m.paused(old[0]) == []
    assert m.paused(old[1]) == []
    # The early acknowledgements do not count: both are still asked to pause.
    assert boot_all(m) == [*serve_new(m), Pause(old[0]), Pause(old[1])]
    assert m.paused(old[0]) == []


def test_paused_twice_or_from_a_new_or_unknown_pid_does_not_finish_early():
    m = Master(slots=2)
    a, b = m.old_pids
    m.request()
    boot_all(m)
    assert m.paused(a) == []
    assert m.paused(a) == []
    assert m.paused(m.new[0]) == []
    assert m.paused(UNKNOWN_PID) == []
    assert m.plan.phase is Phase.PAUSING
    assert m.paused(b)[:-1] == [Stop(a), Stop(b)]


def test_exited_of_an_unknown_pid_changes_nothing():
    m = Master(slots=2)
    assert m.exited(UNKNOWN_PID) == []
    m.request()
    assert m.exited(UNKNOWN_PID) == []
    assert m.plan.phase is Phase.BOOTING
    boot_all(m)
    assert m.exited(UNKNOWN_PID) == []
    assert m.plan.phase is Phase.PAUSING


def test_a_new_worker_exiting_while_pausing_is_left_to_the_supervisor():
    m = Master(slots=2)
    old = m.old_pids
    m.request()
    boot_all(m)
    assert m.exited(m.new[1]) == []
    assert m.plan.phase is Phase.PAUSING
    actions = pause_all(m, old)
    assert actions[:-1] == [Stop(pid) for pid in old]
    assert finished(actions).ok


def test_tick_when_idle_does_nothing():
    m = Master()
    assert m.tick(T0 + 1e6) == []


@pytest.mark.parametrize("when", ["idle", "pausing"])
def test_spawned_when_not_booting_kills_the_process(when):
    m = Master(slots=1)
    if when == "pausing":
        m.request()
        boot_all(m)
        assert m.plan.phase is Phase.PAUSING
    assert m.plan.spawned(0, 555, m.now) == [
        Kill(555, "spawned for a reload that is no longer booting")
    ]
    assert m.plan.phase is (Phase.PAUSING if when == "pausing" else Phase.IDLE)


def test_spawned_for_a_slot_already_forked_or_not_yet_due_kills_the_process():
    m = Master(slots=3, batch=1)
    m.request()
    already = m.plan.spawned(0, 555, m.now)  # slot 0 was reported already
    not_due = m.plan.spawned(2, 556, m.now)  # slot 2 waits for its batch
    out_of_range = m.plan.spawned(9, 557, m.now)
    assert [a.pid for a in already + not_due + out_of_range] == [555, 556, 557]
    assert all(isinstance(a, Kill) for a in already + not_due + out_of_range)
    assert not m.plan.owns(555)
    assert m.plan.owns(m.new[0])
    assert m.ready(m.new[0]) == [Spawn(1, G + 1)]


# ---------------------------------------------------------------------------- abort


def test_abort_while_booting_kills_the_new_workers_that_are_not_ready():
    m = Master(slots=3, batch=2)
    m.request()
    assert m.ready(m.new[0]) == [Spawn(2, G + 1)]
    m.request()
    assert m.plan.pending

    actions = m.abort()

    assert actions == [
        Kill(m.reloads[0].new[1], "shutdown during reload"),
        Kill(m.reloads[0].new[2], "shutdown during reload"),
    ]
    assert not m.plan.pending
    assert not m.plan.active
    assert m.plan.generation == G
    assert m.plan.next_deadline() is None
    assert of(RequestAgain, m.log) == []


def test_abort_while_idle_does_nothing():
    m = Master()
    assert m.abort() == []
    assert m.plan.phase is Phase.IDLE
    assert m.plan.generation == G


def test_abort_while_pausing_forgets_the_reload_without_actions():
    m = Master(slots=2)
    m.request()
    boot_all(m)
    assert m.abort() == []
    assert m.plan.phase is Phase.IDLE
    assert m.plan.generation == G
    assert m.tick(T0 + 100) == []


# ---------------------------------------------------------------------------- deadlines


def test_next_deadline_is_the_earliest_start_deadline_then_the_pause_deadline():
    m = Master(slots=3, batch=2)
    assert m.plan.next_deadline() is None

    m.request()  # slots 0 and 1 forked at T0
    assert m.plan.next_deadline() == T0 + START_TIMEOUT
    m.at(T0 + 4).ready(m.new[0])  # slot 2 forked at T0 + 4
    assert m.plan.next_deadline() == T0 + START_TIMEOUT
    m.at(T0 + 5).ready(m.new[1])
    assert m.plan.next_deadline() == T0 + 4 + START_TIMEOUT
    m.at(T0 + 6).ready(m.new[2])
    assert m.plan.phase is Phase.PAUSING
    assert m.plan.next_deadline() == T0 + 6 + PAUSE_TIMEOUT

    pause_all(m, sorted(m.reloads[0].old))
    assert m.plan.next_deadline() is None


def test_next_deadline_is_none_after_a_rollback():
    m = Master(slots=2)
    m.request()
    m.exited(m.new[0])
    assert m.plan.next_deadline() is None


def test_next_deadline_reports_a_start_deadline_at_time_zero():
    plan = ReloadPlan(G, 1, start_timeout=10.0)
    plan.request(-10.0, {1: 0})
    plan.spawned(0, 2, -10.0)  # deadline: -10.0 + 10.0 == 0.0
    assert plan.next_deadline() == 0.0


def test_tick_enforces_a_start_deadline_at_time_zero():
    plan = ReloadPlan(G, 1, start_timeout=10.0)
    plan.request(-10.0, {1: 0})
    plan.spawned(0, 2, -10.0)
    assert plan.tick(-0.5) == []
    assert [type(a) for a in plan.tick(0.0)] == [Kill, Finished]


# ---------------------------------------------------------------------------- every ordering

EVENTS = ("ready0", "ready1", "paused0", "paused1", "request")


def meaningful(order: tuple[str, ...]) -> bool:
    """An old worker acknowledges only a Pause it was sent (after both readies), and
    the extra request arrives while the reload is still in progress."""
    pos = {event: i for i, event in enumerate(order)}
    last_ready = max(pos["ready0"], pos["ready1"])
    return (
        pos["paused0"] > last_ready
        and pos["paused1"] > last_ready
        and pos["request"] < max(pos["paused0"], pos["paused1"])
    )


def deliver(m: Master, new: dict[int, int], old: list[int], event: str) -> list[object]:
    if event == "request":
        return m.request()
    kind, index = event[:-1], int(event[-1])
    m.at(m.now + 0.1)
    return m.ready(new[index]) if kind == "ready" else m.paused(old[index])


def assert_first_reload_invariants(m: Master, log: list[object], old: list[int]) -> None:
    end = next(i for i, a in enumerate(log) if isinstance(a, Finished))
    first = log[: end + 1]
    pause_at = {a.pid: i for i, a in enumerate(first) if isinstance(a, Pause)}
    stop_at = {a.pid: i for i, a in enumerate(first) if isinstance(a, Stop)}
    assert len(of(Pause, first)) == len(old) and sorted(pause_at) == old
    assert len(of(Stop, first)) == len(old) and sorted(stop_at) == old
    assert min(stop_at.values()) > max(pause_at.values()), "a Stop before every Pause"
    assert of(Kill, first) == []
    assert [(f.ok, f.generation) for f in of(Finished, first)] == [(True, G + 1)]
    assert of(Finished, log) == of(Finished, first), "the second reload is still booting"


@pytest.mark.parametrize(
    "order",
    [order for order in itertools.permutations(EVENTS) if meaningful(order)],
    ids="-".join,
)
def test_every_meaningful_ordering_of_a_two_slot_reload_keeps_its_invariants(order):
    m = Master(slots=2, batch=0)
    old = m.old_pids
    m.request()
    new = dict(m.new)
    log_start = len(m.log)
    readies = 0
    for event in order:
        actions = deliver(m, new, old, event)
        readies += event.startswith("ready")
        if readies < 2:
            assert of(Pause, actions) == [] and of(Stop, actions) == []
        if event == "request":
            assert actions == []

    log = m.log[log_start:]
    assert_first_reload_invariants(m, m.log, old)
    assert len(of(RequestAgain, log)) == 1
    assert log.index(of(RequestAgain, log)[0]) > log.index(of(Finished, log)[0])
    assert m.plan.reloads == 2
    assert m.plan.phase is Phase.BOOTING
    assert m.reloads[1].old == frozenset(new.values())


def test_the_meaningful_orderings_are_all_enumerated():
    orders = [order for order in itertools.permutations(EVENTS) if meaningful(order)]
    # 2 orders of the readies x 2 of the pauses x 4 places for the request.
    assert len(orders) == 16


@pytest.mark.parametrize("order", list(itertools.permutations(EVENTS)), ids="-".join)
def test_every_ordering_even_with_early_acknowledgements_keeps_the_invariants(order):
    """Events delivered verbatim: an early ``paused`` is ignored (the pause deadline
    then ends the reload), a request after the end starts the next reload directly."""
    m = Master(slots=2, batch=0)
    old = m.old_pids
    m.request()
    new = dict(m.new)
    request_again = 0
    for event in order:
        coalesced = event == "request" and m.plan.active
        actions = deliver(m, new, old, event)
        request_again += coalesced
        if event == "request" and coalesced:
            assert actions == []
    if not m.finished:
        assert m.plan.phase is Phase.PAUSING
        m.tick(m.plan.next_deadline())

    assert_first_reload_invariants(m, m.log, old)
    assert len(of(RequestAgain, m.log)) == request_again
    assert m.plan.reloads == 2


# ---------------------------------------------------------------------------- random sequences

KINDS = ("ready", "ready", "ready", "paused", "paused", "paused", "exited", "tick", "request")


def targets(m: Master, kind: str) -> list[int]:
    """The pids an event of ``kind`` is most likely about right now."""
    if kind == "ready":
        return sorted(m.new.values())
    if kind == "paused" and m.reload is not None:
        return sorted(m.reload.old)
    return sorted(m.alive)


@settings(max_examples=400, deadline=None)
@given(
    slots=st.integers(1, 4),
    batch=st.integers(0, 4),
    events=st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.booleans(),
            st.integers(0, 63),
            st.sampled_from([0.0, 0.0, 0.0, 0.1, 0.1, 0.5, 1.0, 2.0, 12.0]),
        ),
        max_size=60,
    ),
)
def test_random_event_sequences_never_break_the_reload_rules(slots, batch, events):
    # Every action is checked by Master._check: no Stop of a new worker, no Kill of an
    # old one, no Pause or Stop before every new worker of that reload is ready.
    m = Master(slots=slots, batch=batch)
    m.request()
    for kind, targeted, index, dt in events:
        m.at(m.now + dt)
        pids = [*(targets(m, kind) if targeted else m.known_pids), UNKNOWN_PID]
        pid = pids[index % len(pids)]
        match kind:
            case "ready":
                m.ready(pid)
            case "exited":
                if pid in m.alive or pid == UNKNOWN_PID:
                    m.exited(pid)
            case "paused":
                m.paused(pid)
            case "tick":
                m.tick()
            case "request":
                m.request()
        assert m.plan.active is (m.reload is not None)
        assert m.plan.target == (m.plan.latest if m.plan.active else m.plan.generation)

    # Liveness: the deadlines end every reload, coalesced ones included.
    for _ in range(3):
        if not m.plan.active:
            break
        m.tick(m.now + START_TIMEOUT + PAUSE_TIMEOUT)
    assert not m.plan.active
    assert not m.plan.pending
    assert m.plan.next_deadline() is None
    assert m.plan.latest == G + m.plan.reloads  # every reload took a number of its own
    assert m.plan.generation == max([G] + [f.generation for f in m.finished if f.ok])
    assert len(m.finished) == m.plan.reloads
