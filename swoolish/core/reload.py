"""The rolling reload as a pure state machine: events in, actions out, no I/O, no clock.

The master feeds events (a reload was requested, a worker was spawned, became ready,
paused, exited; time passed) and executes the actions it gets back (spawn, pause,
stop, kill, report). Because nothing here forks, sleeps or reads a clock, every
ordering of events is tested directly (tests/unit/test_reload.py), the way h11 and
websockets test their protocol cores.

A reload of generation ``g`` to ``g + 1`` goes through these phases::

    IDLE --request--> BOOTING --all new ready--> PAUSING --all old paused--> IDLE
                         |                          (or pause deadline)
                         +--new worker exited / start deadline--> IDLE (rolled back)

* BOOTING: new workers are forked, ``batch`` at a time. Old workers keep serving; a
  new worker that is ready does not accept connections yet.
* PAUSING: every new worker is ready and is told to start accepting (``Serve``). Each
  old worker is told to stop accepting and acknowledges. Only when all have (or after
  ``pause_timeout``) are they told to stop: ``worker_stop`` -> ``worker_exit`` ->
  drain with 1012. A client closed by an old worker can therefore only reconnect to a
  new one: nobody is closed twice.
* Rollback: if a new worker exits before it is ready, or is not ready within
  ``start_timeout``, every new worker is killed and the old ones never noticed. No
  new worker accepted a connection by then (it waits for ``Serve``), so a rollback
  closes no client. A reload is all-or-nothing: generations are never mixed. The
  reason names what the worker reported before it went (``boot_failed``: the
  exception and where it was raised; ``boot_stalled``: where it was stuck).

Every reload gets a generation number of its own: a rolled-back generation's number is
never given to a later one, so one number always names one set of processes.

Reload requests that arrive during a reload are coalesced into one more reload after
the current one ends.

A *recycle* (``max_request``, docs/reload.md) is the same roll for one slot: the
worker that asked is replaced by a new worker of the same slot and generation (the
generation counts reloads; the new worker imports the code on disk, like any worker
forked for that slot). It boots, becomes ready, serves; then the old one pauses and
stops, its WebSockets handed to its successor. One recycle or reload runs at a time:
a recycle asked for meanwhile waits in a queue, and one whose worker a reload replaces
is dropped. A recycle whose new worker fails rolls back like a reload (the old worker
keeps serving) and is tried again after a back-off, doubling per failure of that slot.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from .frames import SERVICE_RESTART

__all__ = [
    "Finished",
    "Kill",
    "Pause",
    "Phase",
    "Recycled",
    "ReloadPlan",
    "RequestAgain",
    "Serve",
    "Spawn",
    "Stop",
    "recycle_point",
]


class Phase(enum.Enum):
    IDLE = "idle"
    BOOTING = "booting"
    PAUSING = "pausing"


# ---------------------------------------------------------------------------- actions


@dataclasses.dataclass(frozen=True)
class Spawn:
    """Fork a worker of ``generation`` for ``slot``; report it with ``spawned()``."""

    slot: int
    generation: int


@dataclasses.dataclass(frozen=True)
class Serve:
    """Tell a new worker to start accepting connections: its whole generation is ready."""

    pid: int


@dataclasses.dataclass(frozen=True)
class Pause:
    """Tell an old worker to stop accepting; it answers with ``paused()``."""

    pid: int


@dataclasses.dataclass(frozen=True)
class Stop:
    """Tell an old worker to run worker_stop, worker_exit, then drain with ``code``."""

    pid: int
    code: int = SERVICE_RESTART


@dataclasses.dataclass(frozen=True)
class Kill:
    """SIGKILL a worker (a new worker of a rolled-back reload)."""

    pid: int
    reason: str


@dataclasses.dataclass(frozen=True)
class Finished:
    """A reload ended: ``ok`` (generation is now ``generation``) or rolled back
    (``generation`` still serves; ``attempted`` is the number the reload had)."""

    generation: int
    ok: bool
    reason: str
    started_at: float
    ended_at: float
    new_pids: tuple[int, ...]
    old_pids: tuple[int, ...]
    attempted: int = 0


@dataclasses.dataclass(frozen=True)
class RequestAgain:
    """A coalesced request is due: call ``request()`` again with the serving workers."""

    at: float


@dataclasses.dataclass(frozen=True)
class Recycled:
    """A recycle of ``slot`` ended: ``old_pid`` was replaced by ``new_pid`` (``ok``), or
    its new worker failed (``reason``) and ``old_pid`` keeps serving until the recycle
    is tried again at ``retry_at``."""

    slot: int
    ok: bool
    reason: str
    old_pid: int
    new_pid: int | None
    started_at: float
    ended_at: float
    retry_at: float | None = None


Action = Spawn | Serve | Pause | Stop | Kill | Finished | RequestAgain | Recycled


def recycle_point(max_request: int, grace: int, randint: Callable[[int, int], int]) -> int:
    """How many requests and messages one worker handles before it asks to be recycled:
    ``max_request`` plus up to ``grace`` more, drawn once per worker with ``randint``
    (``random.randint``: both ends included), so workers that started together are not
    all replaced together (gunicorn's max_requests_jitter). 0 means never."""
    if max_request <= 0:
        return 0
    return max_request + (randint(0, grace) if grace > 0 else 0)


# ---------------------------------------------------------------------------- the plan


class _Boot(enum.Enum):
    WAITING = "waiting"  # not forked yet (its batch has not come)
    FORKING = "forking"  # Spawn issued, spawned() not yet seen
    BOOTING = "booting"  # forked, importing the app and running worker_start
    READY = "ready"


@dataclasses.dataclass
class _NewWorker:
    slot: int
    pid: int | None = None
    deadline: float | None = None
    boot: _Boot = _Boot.WAITING
    failure: str = ""  # why it cannot boot, as it said before exiting
    stalled: str = ""  # where it was, still booting, shortly before its deadline

    @property
    def ready(self) -> bool:
        return self.boot is _Boot.READY


class ReloadPlan:
    """Decides what the master does during reloads; holds no process or clock."""

    def __init__(
        self,
        generation: int,
        slots: int,
        batch: int = 0,
        start_timeout: float = 10.0,
        pause_timeout: float = 1.0,
        recycle_backoff: float = 1.0,
        recycle_backoff_max: float = 60.0,
    ) -> None:
        if slots < 1:
            raise ValueError("a reload needs at least one slot")
        self.generation = generation  # the generation that is serving
        self.latest = generation  # the highest generation number ever started
        self.slots = slots
        self.batch = batch if batch > 0 else slots
        self.start_timeout = start_timeout
        self.pause_timeout = pause_timeout
        self.phase = Phase.IDLE
        self.pending = False  # a request arrived during a reload: one more after it
        self.reloads = 0  # reloads started
        self._old: dict[int, int] = {}  # pid -> slot of the serving generation
        self._new: dict[int, _NewWorker] = {}  # slot -> new worker
        self._unpaused: set[int] = set()
        self._pause_deadline: float | None = None
        self._started_at = 0.0
        self.recycle_backoff = recycle_backoff
        self.recycle_backoff_max = recycle_backoff_max
        self.recycling: int | None = None  # the slot being recycled (None: a reload)
        self._recycled_pid = 0  # the worker that recycle replaces
        self.recycles = 0  # recycles started
        self._recycle_queue: dict[int, int] = {}  # pid -> slot, asked during a roll
        self._recycle_retry: dict[int, tuple[int, float]] = {}  # pid -> (slot, when)
        self._recycle_failures: dict[int, int] = {}  # slot -> recycles rolled back in a row

    # -- what the master asks

    @property
    def target(self) -> int:
        """The generation being started (equals ``generation`` when idle)."""
        return self.latest if self.phase is not Phase.IDLE else self.generation

    @property
    def active(self) -> bool:
        return self.phase is not Phase.IDLE

    def owns(self, pid: int) -> bool:
        """True for a new worker this reload has spawned and not yet handed over."""
        return any(w.pid == pid for w in self._new.values())

    def next_deadline(self) -> float | None:
        deadlines = [
            w.deadline for w in self._new.values() if w.deadline is not None and not w.ready
        ]
        if self._pause_deadline is not None:
            deadlines.append(self._pause_deadline)
        if self.phase is Phase.IDLE:
            deadlines += [when for _, when in self._recycle_retry.values()]
        return min(deadlines) if deadlines else None

    @property
    def recycles_waiting(self) -> int:
        """Recycles asked for and not started yet (queued or backing off)."""
        return len(self._recycle_queue) + len(self._recycle_retry)

    # -- events

    def request(self, now: float, serving: dict[int, int]) -> list[Action]:
        """A reload was asked for; ``serving`` maps pid -> slot of the live workers."""
        if self.phase is not Phase.IDLE:
            self.pending = True
            return []
        self.reloads += 1
        self.latest += 1  # never reused, even when this reload is rolled back
        self.phase = Phase.BOOTING
        self._started_at = now
        self._old = dict(serving)
        self._new = {slot: _NewWorker(slot) for slot in range(self.slots)}
        return self._spawn_next_batch()

    def recycle(self, pid: int, now: float, serving: dict[int, int]) -> list[Action]:
        """Worker ``pid`` handled its ``max_request`` and asks to be replaced;
        ``serving`` maps pid -> slot of the live workers. Queued during a roll; ignored
        for a worker that is not serving or whose recycle is backing off."""
        slot = serving.get(pid)
        if slot is None or pid in self._recycle_retry:
            return []
        if self.phase is not Phase.IDLE:
            self._recycle_queue.setdefault(pid, slot)
            return []
        return self._begin_recycle(pid, slot, now)

    def spawned(self, slot: int, pid: int, now: float) -> list[Action]:
        worker = self._new.get(slot)
        if self.phase is not Phase.BOOTING or worker is None or worker.boot is not _Boot.FORKING:
            return [Kill(pid, "spawned for a reload that is no longer booting")]
        worker.pid = pid
        worker.boot = _Boot.BOOTING
        worker.deadline = now + self.start_timeout
        return []

    def ready(self, pid: int, now: float) -> list[Action]:
        worker = self._find_new(pid)
        if self.phase is not Phase.BOOTING or worker is None or worker.ready:
            return []
        worker.boot = _Boot.READY
        worker.deadline = None
        if all(w.ready for w in self._new.values()):
            return self._begin_pausing(now)
        return self._spawn_next_batch()

    def paused(self, pid: int, now: float) -> list[Action]:
        if self.phase is not Phase.PAUSING:
            return []
        self._unpaused.discard(pid)
        return self._finish_if_paused(now)

    def exited(self, pid: int, now: float, reason: str = "exited") -> list[Action]:
        """A worker process ended (for any reason)."""
        self._recycle_queue.pop(pid, None)
        self._recycle_retry.pop(pid, None)
        if self._old.pop(pid, None) is not None:
            # An old worker died mid-reload: nothing to pause or stop any more.
            self._unpaused.discard(pid)
            return self._finish_if_paused(now) if self.phase is Phase.PAUSING else []
        worker = self._find_new(pid)
        if worker is None:
            return []
        if self.phase is Phase.BOOTING:
            worker.pid = None  # gone: not to be killed again
            if worker.failure:
                return self._roll_back(
                    now, f"new worker {worker.slot} failed to boot: {worker.failure}"
                )
            return self._roll_back(now, f"new worker {worker.slot} {reason} before it was ready")
        return []  # after PAUSING began it is an ordinary worker: the supervisor's business

    def boot_failed(self, pid: int, cause: str) -> None:
        """A new worker said why it cannot boot ("ZeroDivisionError: division by zero
        (app.py:7)"); the rollback its exit brings gives that as the reason."""
        worker = self._find_new(pid)
        if self.phase is Phase.BOOTING and worker is not None and not worker.ready:
            worker.failure = cause
            worker.stalled = ""

    def boot_stalled(self, pid: int, where: str) -> None:
        """A new worker is still booting near its deadline, at ``where``; a rollback
        for its start deadline says so."""
        worker = self._find_new(pid)
        if self.phase is Phase.BOOTING and worker is not None and not worker.ready:
            worker.stalled = where

    def tick(self, now: float) -> list[Action]:
        """Time passed: enforce the start and pause deadlines; idle, start a recycle
        whose back-off is over."""
        if self.phase is Phase.BOOTING:
            for worker in self._new.values():
                if worker.deadline is not None and now >= worker.deadline and not worker.ready:
                    stuck = f", stuck at {worker.stalled}" if worker.stalled else ""
                    return self._roll_back(
                        now,
                        f"new worker {worker.slot} was not ready within "
                        f"{self.start_timeout:g}s (worker_start_timeout){stuck}",
                    )
        elif self.phase is Phase.PAUSING and self._pause_deadline is not None:
            if now >= self._pause_deadline:
                self._unpaused.clear()
                return self._finish_if_paused(now)
        elif self.phase is Phase.IDLE:
            return self._retry_due_recycle(now)
        return []

    def abort(self) -> list[Action]:
        """The master is shutting down: forget the reload, kill unfinished new workers."""
        actions: list[Action] = []
        if self.phase is Phase.BOOTING:
            actions = [
                Kill(w.pid, "shutdown during reload")
                for w in self._new.values()
                if w.pid is not None and not w.ready
            ]
        self._reset()
        self.pending = False
        self._recycle_queue.clear()
        self._recycle_retry.clear()
        return actions

    # -- internals

    def _find_new(self, pid: int) -> _NewWorker | None:
        return next((w for w in self._new.values() if w.pid == pid), None)

    def _spawn_next_batch(self) -> list[Action]:
        in_progress = sum(1 for w in self._new.values() if w.boot in (_Boot.FORKING, _Boot.BOOTING))
        room = self.batch - in_progress
        actions: list[Action] = []
        for worker in self._new.values():
            if room <= 0:
                break
            if worker.boot is _Boot.WAITING:
                worker.boot = _Boot.FORKING
                generation = self.generation if self.recycling is not None else self.latest
                actions.append(Spawn(worker.slot, generation))
                room -= 1
        return actions

    def _begin_pausing(self, now: float) -> list[Action]:
        self.phase = Phase.PAUSING
        self._unpaused = set(self._old)
        self._pause_deadline = now + self.pause_timeout
        actions: list[Action] = [Serve(w.pid) for w in self._new.values() if w.pid is not None]
        actions += [Pause(pid) for pid in sorted(self._old)]
        return actions + self._finish_if_paused(now)

    def _finish_if_paused(self, now: float) -> list[Action]:
        if self._unpaused:
            return []
        actions: list[Action] = [Stop(pid) for pid in sorted(self._old)]
        for pid in self._old:  # replaced: a recycle it asked for is done
            self._recycle_queue.pop(pid, None)
            self._recycle_retry.pop(pid, None)
        finished: Finished | Recycled
        if self.recycling is not None:
            self._recycle_failures.pop(self.recycling, None)
            finished = self._recycled(now, ok=True, reason="complete")
        else:
            finished = self._finished(now, ok=True, reason="complete")
            self.generation = self.latest
        self._reset()
        return [*actions, finished, *self._start_pending(now)]

    def _roll_back(self, now: float, reason: str) -> list[Action]:
        what = "recycle" if self.recycling is not None else "reload"
        actions: list[Action] = [
            Kill(w.pid, f"{what} rolled back") for w in self._new.values() if w.pid is not None
        ]
        finished = (
            self._recycle_failed(now, reason)
            if self.recycling is not None
            else self._finished(now, ok=False, reason=reason)
        )
        self._reset()
        return [*actions, finished, *self._start_pending(now)]

    def _begin_recycle(self, pid: int, slot: int, now: float) -> list[Action]:
        self.recycles += 1
        self.phase = Phase.BOOTING
        self.recycling = slot
        self._recycled_pid = pid
        self._started_at = now
        self._old = {pid: slot}
        self._new = {slot: _NewWorker(slot)}
        return self._spawn_next_batch()

    def _recycled(
        self, now: float, ok: bool, reason: str, retry_at: float | None = None
    ) -> Recycled:
        assert self.recycling is not None
        worker = self._new[self.recycling]
        return Recycled(
            slot=self.recycling,
            ok=ok,
            reason=reason,
            old_pid=self._recycled_pid,
            new_pid=worker.pid,
            started_at=self._started_at,
            ended_at=now,
            retry_at=retry_at,
        )

    def _recycle_failed(self, now: float, reason: str) -> Recycled:
        """The old worker keeps serving; its recycle is tried again after a back-off
        that doubles with each failure of the slot, so a broken app on disk is not
        forked in a hot loop."""
        assert self.recycling is not None
        slot = self.recycling
        failures = self._recycle_failures.get(slot, 0) + 1
        self._recycle_failures[slot] = failures
        delay = min(self.recycle_backoff_max, self.recycle_backoff * 2 ** (failures - 1))
        retry_at = now + delay
        for pid in self._old:  # empty if the old worker died meanwhile
            self._recycle_retry[pid] = (slot, retry_at)
        return self._recycled(
            now, ok=False, reason=reason, retry_at=retry_at if self._old else None
        )

    def _retry_due_recycle(self, now: float) -> list[Action]:
        """Idle: start the first recycle whose back-off is over."""
        for pid, (slot, when) in list(self._recycle_retry.items()):
            if now >= when:
                del self._recycle_retry[pid]
                return self._begin_recycle(pid, slot, now)
        return []

    def _finished(self, now: float, ok: bool, reason: str) -> Finished:
        return Finished(
            generation=self.latest if ok else self.generation,
            ok=ok,
            reason=reason,
            started_at=self._started_at,
            ended_at=now,
            new_pids=tuple(w.pid for w in self._new.values() if w.pid is not None),
            old_pids=tuple(sorted(self._old)),
            attempted=self.latest,
        )

    def _start_pending(self, now: float) -> list[Action]:
        """A coalesced request is due. The serving set after a reload is the master's
        to give (it knows which processes are alive), so it is asked for it. A reload
        goes first (it replaces every worker anyway); else the next queued recycle."""
        if self.pending:
            self.pending = False
            return [RequestAgain(now)]
        if self._recycle_queue:
            pid = next(iter(self._recycle_queue))
            return self._begin_recycle(pid, self._recycle_queue.pop(pid), now)
        return self._retry_due_recycle(now)

    def _reset(self) -> None:
        self.phase = Phase.IDLE
        self.recycling = None
        self._old = {}
        self._new = {}
        self._unpaused = set()
        self._pause_deadline = None
