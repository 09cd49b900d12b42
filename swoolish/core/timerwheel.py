"""The timer wheel behind Swoole's Timer API: pure scheduling, with an injected clock.

Each worker process owns exactly one :class:`TimerWheel`. The wheel is pure scheduling logic:
it never touches the event loop itself but asks its host, through ``wakeup``, to call
:meth:`TimerWheel.run_due` at a given deadline. Keeping the loop out of the wheel is what lets
the tests drive it with a fake clock instead of sleeping, and it means the production loop
carries a single ``call_at`` handle however many timers exist, instead of one handle per timer.

Each timer is one list, ``[deadline, id, callback, args, repeat, interval, bind, exec_count,
active]``, that is at once its heap entry and its record in the id index: arming a timer builds
a single object (half the garbage collector's work of a record plus a heap tuple), and a tick is
rescheduled by rewriting its deadline in place and sifting it down (``heapreplace``), without
allocating. Lists compare element by element and ``(deadline, id)`` is unique, so the heap
never compares beyond the id. Cancelling a timer only flags it (lazy deletion) because removing
an arbitrary heap element is O(n); the stale entries are skipped when they surface and the heap
is rebuilt once they make up more than half of it.

The ``Timer`` facade (:mod:`swoolish.worker.timers`) mirrors Swoole's static API and delegates
to the wheel installed in the current worker process.
"""

from __future__ import annotations

import functools
import inspect
import logging
import math
from collections.abc import Callable, Coroutine
from heapq import heapify, heappop, heappush, heapreplace
from typing import Any

__all__ = [
    "TimerWheel",
    "callback_reference",
    "is_plain_data",
    "resolve_callback",
]

_log = logging.getLogger(__name__)
#: Seconds during which a timer callback's further errors are counted, not logged.
ERROR_LOG_WINDOW = 10.0
#: Callback names whose logging is remembered (the oldest is forgotten past it).
MAX_ERROR_NAMES = 1024

#: Upper bound of callbacks run by one ``run_due`` pass. If a large batch falls due at once the
#: wheel hands control back to the loop after this many so that socket I/O is not starved; the
#: rest runs on the next pass, which the wheel requests immediately.
DEFAULT_MAX_PER_PASS = 10_000

#: Below this heap size compaction is not worth its cost; stale entries drain on their own.
_COMPACT_MIN = 64

_INF = math.inf

Clock = Callable[[], float]
Wakeup = Callable[[float | None], None]
Spawn = Callable[[Coroutine[Any, Any, Any]], Any]
SessionAlive = Callable[[int], bool]


# Fields of a timer entry (a list, see the module docstring). The hot paths index with the
# literal numbers for speed; the comments there name the field.
_DEADLINE, _ID, _CALLBACK, _ARGS, _REPEAT, _INTERVAL, _BIND, _EXEC, _ACTIVE = range(9)

#: A timer: ``[deadline, id, callback, args, repeat, interval_ms, bind, exec_count, active]``.
_Entry = list[Any]


def _callback_name(callback: Callable[..., Any]) -> str:
    """Readable name for logs and ``info()``; partials and callable objects have no qualname."""
    name = getattr(callback, "__qualname__", None)
    return name if isinstance(name, str) else repr(callback)


def callback_reference(callback: Callable[..., Any]) -> str | None:
    """``module:qualname`` for a module-level function, the only kind new code can
    provide again under the same name; None for lambdas, closures and methods."""
    module = getattr(callback, "__module__", None)
    qualname = getattr(callback, "__qualname__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    return f"{module}:{qualname}"


def resolve_callback(reference: str) -> Callable[..., Any] | None:
    """The function the code loaded *now* defines under ``reference``, or None."""
    import sys

    module_name, _, qualname = reference.partition(":")
    target: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return target if callable(target) else None


_PLAIN = (str, int, float, bool, bytes, type(None))


def is_plain_data(value: Any, depth: int = 0) -> bool:
    """True for plain data (what survives new code): no instances of the app's classes."""
    if depth > 20:
        return False
    if isinstance(value, _PLAIN):
        return True
    if isinstance(value, list | tuple):
        return all(is_plain_data(v, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, _PLAIN) and is_plain_data(v, depth + 1) for k, v in value.items())
    return False


def _check_interval(ms: object) -> None:
    """Reject bad intervals at the call site, where the mistake is, not when the timer fires."""
    if type(ms) is int:  # fast path: by far the common case
        if ms >= 1:
            return
    elif isinstance(ms, bool) or not isinstance(ms, int | float):
        raise TypeError(
            f"Timer interval must be an int or float number of milliseconds, "
            f"got {type(ms).__name__}"
        )
    elif ms >= 1 and math.isfinite(ms):
        return
    raise ValueError(f"Timer interval must be a finite number of ms >= 1, got {ms!r}")


def _check_callback(callback: object) -> None:
    if not callable(callback):
        raise TypeError(f"Timer callback must be callable, got {type(callback).__name__}")


def _check_bind(bind: object) -> None:
    if isinstance(bind, bool) or not isinstance(bind, int):
        raise TypeError(f"Timer bind must be None or a session id (int), got {type(bind).__name__}")
    if bind < 1:
        raise ValueError(f"Timer bind must be a positive session id, got {bind!r}")


class TimerWheel:
    """Per-worker timer scheduler with an injectable clock.

    ``clock`` returns monotonic seconds (``loop.time`` in production). ``wakeup(deadline)`` asks
    the host to call :meth:`run_due` at that absolute clock value, ``None`` meaning nothing is
    pending; the wheel calls it only when the earliest deadline changes and after every
    :meth:`run_due`. ``spawn`` turns a coroutine returned by a callback into a task.
    ``session_alive(sid)`` lets ``bind=sid`` refuse to arm timers for sessions already closed.
    ``resolution`` is the clock's step in seconds (0 for an exact clock): a deadline counts as
    due once the clock is within half a step of it, which rounds it to the nearest step as
    ``loop.call_at`` does.
    """

    def __init__(
        self,
        clock: Clock,
        wakeup: Wakeup,
        spawn: Spawn | None = None,
        session_alive: SessionAlive | None = None,
        logger: logging.Logger | None = None,
        *,
        max_per_pass: int = DEFAULT_MAX_PER_PASS,
        resolution: float = 0.0,
    ) -> None:
        if max_per_pass < 1:
            raise ValueError(f"max_per_pass must be >= 1, got {max_per_pass!r}")
        self._clock = clock
        self._wakeup = wakeup
        self._spawn = spawn
        self._session_alive = session_alive
        self._log = logger if logger is not None else _log
        self._max_per_pass = max_per_pass
        # A pass also runs the timers due within half of the clock's resolution: with a clock
        # that steps in whole milliseconds (uvloop's), a deadline one float rounding error
        # past the current step would otherwise wait for the next step.
        self._slack = resolution / 2

        # The heap list object is never replaced, only mutated in place: run_due keeps a local
        # reference to it while callbacks may call clear_all() or trigger a compaction.
        self._heap: list[_Entry] = []
        # Insertion order == ascending id, since ids only grow; list() relies on that.
        self._timers: dict[int, _Entry] = {}
        self._bound: dict[int, set[int]] = {}
        self._tasks: set[Any] = set()
        self._stale = 0  # cancelled entries still sitting in the heap
        self._next_id = 1
        # Last deadline handed to wakeup(); +inf stands for None so that arming a timer costs a
        # single comparison, and run_due parks it at -inf so callbacks never trigger wakeups.
        self._wakeup_at = _INF
        self._running = False
        # callback name -> [when its error was last logged, errors not logged since]
        self._error_log: dict[str, list[float]] = {}

        self._fired = 0
        self._cleared = 0
        self._bound_to_gone = 0
        self._errors = 0

    # -- creating ----------------------------------------------------------------------------

    def tick(
        self, ms: float, callback: Callable[..., Any], *args: Any, bind: int | None = None
    ) -> int:
        """Run ``callback(timer_id, *args)`` every ``ms`` milliseconds until cleared."""
        if bind is None and type(ms) is int and ms >= 1 and callable(callback):
            return self._arm(True, ms, callback, args)
        return self._add(True, ms, callback, args, bind)

    def after(
        self, ms: float, callback: Callable[..., Any], *args: Any, bind: int | None = None
    ) -> int:
        """Run ``callback(*args)`` once, ``ms`` milliseconds from now."""
        if bind is None and type(ms) is int and ms >= 1 and callable(callback):
            return self._arm(False, ms, callback, args)
        return self._add(False, ms, callback, args, bind)

    def _arm(
        self, repeat: bool, ms: int, callback: Callable[..., Any], args: tuple[Any, ...]
    ) -> int:
        """The common case, already checked: an unbound timer with a whole-ms interval."""
        timer_id = self._next_id
        self._next_id = timer_id + 1
        deadline = self._clock() + ms / 1000.0
        entry = [deadline, timer_id, callback, args, repeat, ms, None, 0, True]
        self._timers[timer_id] = entry
        heappush(self._heap, entry)
        if deadline < self._wakeup_at:
            self._wakeup_at = deadline
            self._wakeup(deadline)
        return timer_id

    def _add(
        self,
        repeat: bool,
        ms: float,
        callback: Callable[..., Any],
        args: tuple[Any, ...],
        bind: int | None,
        first_delay: float | None = None,
    ) -> int:
        if type(ms) is not int or ms < 1:
            _check_interval(ms)
        if not callable(callback):
            _check_callback(callback)
        timer_id = self._next_id
        if bind is not None:
            _check_bind(bind)
            self._next_id = timer_id + 1
            alive = self._session_alive
            if alive is not None and not alive(bind):
                # A handler racing the session's close must not blow up: hand back an id that
                # simply reads as already cleared.
                self._bound_to_gone += 1
                return timer_id
            bound = self._bound.get(bind)
            if bound is None:
                bound = self._bound[bind] = set()
            bound.add(timer_id)
        else:
            self._next_id = timer_id + 1
        deadline = self._clock() + (ms / 1000.0 if first_delay is None else first_delay)
        # The id doubles as the heap tie-breaker: a timer has exactly one entry, so (deadline,
        # id) is unique and the comparison of two entries never reaches the callback.
        timer = [deadline, timer_id, callback, args, repeat, ms, bind, 0, True]
        self._timers[timer_id] = timer
        heappush(self._heap, timer)
        if deadline < self._wakeup_at:
            self._wakeup_at = deadline
            self._wakeup(deadline)
        return timer_id

    # -- clearing ----------------------------------------------------------------------------

    def clear(self, timer_id: int) -> bool:
        """Cancel a timer; True if it was active. Unknown or non-int ids just return False."""
        try:
            timer = self._timers.pop(timer_id)
        except (KeyError, TypeError):  # TypeError: unhashable id
            return False
        self._deactivate(timer)
        self._cleared += 1
        if not self._timers:
            self._request_wakeup(None)
        else:
            self._maybe_compact()
        return True

    def clear_all(self) -> int:
        """Cancel every timer at once; returns how many were active.

        Entries are dropped wholesale rather than cancelled one by one: nothing else refers to
        them once the heap and the indexes are emptied, so flagging each would be wasted work.
        """
        count = len(self._timers)
        # Heap first: the dict then releases the timers in creation order, which walks memory
        # sequentially and is markedly faster than freeing them in heap order.
        self._heap.clear()
        self._timers.clear()
        self._bound.clear()
        self._stale = 0
        self._cleared += count
        self._request_wakeup(None)
        return count

    def clear_bound(self, sid: int) -> int:
        """Cancel every timer bound to session ``sid``; the server calls this when it closes."""
        ids = self._bound.pop(sid, None)
        if not ids:
            return 0
        timers = self._timers
        count = 0
        for timer_id in ids:
            timer = timers.pop(timer_id, None)
            if timer is not None:
                timer[_ACTIVE] = False
                self._stale += 1
                count += 1
        self._cleared += count
        if not timers:
            self._request_wakeup(None)
        else:
            self._maybe_compact()
        return count

    def export_bound(self, sid: int) -> tuple[list[dict[str, Any]], int]:
        """Take the timers bound to ``sid`` out of this wheel, as data another process can
        re-arm (a live hand-off moves them with their session).

        A callable cannot cross processes, so a timer moves by its callback's name: a
        module-level function (``module:qualname``) that the new code defines again.
        Timers whose callback has no such name (lambdas, closures) or whose args do not
        pickle are cleared here; their number is returned beside the snapshots.
        """
        ids = self._bound.pop(sid, None)
        if not ids:
            return [], 0  # most sessions: called for each of them, up to three times a move
        now = self._clock()
        moved: list[dict[str, Any]] = []
        dropped = 0
        for timer_id in sorted(ids):
            timer = self._timers.pop(timer_id, None)
            if timer is None:
                continue
            timer[_ACTIVE] = False
            self._stale += 1
            name = callback_reference(timer[_CALLBACK])
            if name is None or not is_plain_data(timer[_ARGS]):
                dropped += 1
                continue
            moved.append(
                {
                    "name": name,
                    "repeat": timer[_REPEAT],
                    "interval": timer[_INTERVAL],
                    "delay": max(0.0, timer[_DEADLINE] - now),
                    "args": timer[_ARGS],
                    "exec_count": timer[_EXEC],
                }
            )
        if not self._timers:
            self._request_wakeup(None)
        return moved, dropped

    def import_bound(self, sid: int, snapshot: dict[str, Any], callback: Callable[..., Any]) -> int:
        """Re-arm a timer exported by :meth:`export_bound`, bound to ``sid`` here.

        An overdue timer fires once, immediately: no catch-up burst.
        """
        adder = self._add(
            bool(snapshot["repeat"]),
            snapshot["interval"],
            callback,
            tuple(snapshot["args"]),
            sid,
            first_delay=float(snapshot["delay"]),
        )
        timer = self._timers.get(adder)
        if timer is not None:
            timer[_EXEC] = int(snapshot.get("exec_count", 0))
        return adder

    def _deactivate(self, timer: _Entry) -> None:
        """Flag a timer dead and drop it from the sid index; its heap entry becomes stale."""
        timer[_ACTIVE] = False
        self._stale += 1
        if timer[_BIND] is not None:
            self._unbind(timer)

    def _unbind(self, timer: _Entry) -> None:
        bound = self._bound.get(timer[_BIND])
        if bound is not None:
            bound.discard(timer[_ID])
            if not bound:
                del self._bound[timer[_BIND]]

    def _maybe_compact(self) -> None:
        """Rebuild the heap once dead entries outnumber live ones, bounding memory and pops."""
        heap = self._heap
        if self._stale * 2 > len(heap) and len(heap) >= _COMPACT_MIN:
            heap[:] = [entry for entry in heap if entry[_ACTIVE]]
            heapify(heap)
            self._stale = 0

    # -- introspection -----------------------------------------------------------------------

    def list(self) -> list[int]:
        """Ids of active timers, ascending."""
        return [*self._timers]

    def info(self, timer_id: int) -> dict[str, Any] | None:
        """Describe an active timer, or None if it is unknown, cleared or already fired."""
        try:
            timer = self._timers.get(timer_id)
        except TypeError:
            return None
        if timer is None:
            return None
        return {
            "id": timer[_ID],
            "type": "tick" if timer[_REPEAT] else "after",
            "interval": timer[_INTERVAL],
            "exec_count": timer[_EXEC],
            "next_run": max(0.0, timer[_DEADLINE] - self._clock()),
            "deadline": timer[_DEADLINE],
            "bind": timer[_BIND],
            "callback": _callback_name(timer[_CALLBACK]),
        }

    def stats(self) -> dict[str, int]:
        """Counters for the worker's status page."""
        return {
            "active": len(self._timers),
            "created": self._next_id - 1 - self._bound_to_gone,
            "fired": self._fired,
            "cleared": self._cleared,
            "bound_to_gone": self._bound_to_gone,
            "errors": self._errors,
            "tasks_pending": len(self._tasks),
        }

    def pending_tasks(self) -> set[Any]:
        """Tasks spawned from coroutine callbacks that have not finished yet (a copy)."""
        return set(self._tasks)

    def next_deadline(self) -> float | None:
        """Earliest deadline of an active timer, discarding stale entries on the way."""
        heap = self._heap
        while heap:
            entry = heap[0]
            if entry[_ACTIVE]:
                deadline: float = entry[_DEADLINE]  # entries are list[Any]: name the field's type
                return deadline
            heappop(heap)
            self._stale -= 1
        return None

    # -- running -----------------------------------------------------------------------------

    def run_due(self) -> int:
        """Run every timer due at the current clock; returns how many callbacks ran.

        ``now`` is read once, so a timer created or rescheduled by a callback is never run in
        the same pass, and the pass is capped at ``max_per_pass`` callbacks so one burst cannot
        starve the loop. Never raises for a failing callback; the next wakeup is always
        requested afterwards.
        """
        if self._running:  # re-entered from a callback: the outer pass will finish the job
            return 0
        self._running = True
        self._wakeup_at = -_INF
        ran = 0
        try:
            now = self._clock()
            due = now + self._slack
            heap = self._heap
            timers = self._timers
            limit = self._max_per_pass
            iscoroutine = inspect.iscoroutine
            while heap and ran < limit:
                timer = heap[0]
                if not timer[8]:  # active
                    heappop(heap)
                    self._stale -= 1
                    continue
                deadline = timer[0]
                if deadline > due:
                    break
                # Book-keep before the callback runs so it sees (and may clear) its next
                # schedule.
                timer[7] += 1  # exec_count
                if timer[4]:  # repeat
                    # Anchor on the previous deadline so the period does not drift with loop
                    # latency; more than an interval late, skip ahead instead of bursting.
                    interval_s = timer[5] / 1000.0
                    nxt = deadline + interval_s
                    if nxt <= now:
                        nxt = now + interval_s
                    timer[0] = nxt
                    heapreplace(heap, timer)  # it is heap[0]: sift it down in place
                    try:
                        result = timer[2](timer[1], *timer[3])
                    except (SystemExit, KeyboardInterrupt):
                        raise  # the process is told to stop: not a timer's error to swallow
                    except BaseException:  # a stray CancelledError must not kill the pass
                        ran += 1
                        self._callback_failed(timer)
                        continue
                else:
                    heappop(heap)
                    timer[8] = False
                    del timers[timer[1]]
                    if timer[6] is not None:  # bind
                        self._unbind(timer)
                    try:
                        result = timer[2](*timer[3])
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException:
                        ran += 1
                        self._callback_failed(timer)
                        continue
                ran += 1
                if result is not None and iscoroutine(result):
                    self._start_task(timer, result)
        finally:
            self._running = False
            self._fired += ran
            nxt = self.next_deadline()
            # Always re-request: the host's pending wakeup was consumed by this very call.
            self._wakeup_at = _INF if nxt is None else nxt
            self._wakeup(nxt)
        return ran

    def _callback_failed(self, timer: _Entry) -> None:
        self._errors += 1
        name = _callback_name(timer[_CALLBACK])
        more = self._errors_since_logged(name)
        if more is not None:
            self._log.exception("Timer %d callback %s raised%s", timer[_ID], name, more)

    def _errors_since_logged(self, name: str) -> str | None:
        """Whether the error of callback ``name`` is logged: the first of an episode is,
        with what it repeats after ERROR_LOG_WINDOW seconds; None for the others. A
        tick that raises at every fire logged a traceback each time: 50 of them at
        10 ms filled the log at 2 MB/s, and the logging took 73% of the worker's CPU."""
        now = self._clock()
        seen = self._error_log.get(name)
        if seen is not None and now - seen[0] < ERROR_LOG_WINDOW:
            seen[1] += 1
            return None
        if seen is None and len(self._error_log) >= MAX_ERROR_NAMES:
            self._error_log.pop(next(iter(self._error_log)))  # the longest known
        self._error_log[name] = [now, 0]
        if seen is None or not seen[1]:
            return ""
        return f" ({int(seen[1])} more errors of it not logged since its last logged one)"

    def _start_task(self, timer: _Entry, coro: Coroutine[Any, Any, Any]) -> None:
        """Run a coroutine callback as a task and keep a strong reference until it is done."""
        name = _callback_name(timer[_CALLBACK])
        if self._spawn is None:
            coro.close()
            self._errors += 1
            self._log.error(
                "Timer %d callback %s returned a coroutine but this wheel has no spawn function; "
                "it was discarded",
                timer[_ID],
                name,
            )
            return
        try:
            task = self._spawn(coro)
        except Exception:
            coro.close()
            self._errors += 1
            self._log.exception("Timer %d: could not start coroutine of %s", timer[_ID], name)
            return
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._task_done, timer[_ID], name))

    def _task_done(self, timer_id: int, name: str, task: Any) -> None:
        """Retrieve the task's outcome so failures are logged, not 'never retrieved'."""
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._errors += 1
            more = self._errors_since_logged(name)
            if more is not None:
                self._log.error(
                    "Timer %d coroutine %s raised%s", timer_id, name, more, exc_info=exc
                )

    def _request_wakeup(self, deadline: float | None) -> None:
        """Forward a changed earliest deadline to the host, unless run_due will do it anyway."""
        wakeup_at = _INF if deadline is None else deadline
        if self._running or wakeup_at == self._wakeup_at:
            return
        self._wakeup_at = wakeup_at
        self._wakeup(deadline)
