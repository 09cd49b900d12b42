"""A worker booted beside serving workers boots at a lower CPU priority.

A reload (or the replacement of a crashed worker) boots new workers while others serve
clients. On a machine with few cores their imports take the CPU from those clients:
measured under load on 2 cores, a new worker that needs ~20 ms of CPU to boot took
100 to 250 ms of wall time, and the serving workers' WebSocket p99 doubled meanwhile
(docs/performance.md, "Rolling reload"). So such a worker lowers its priority by
``BOOT_NICENESS`` right after the fork and takes the old one back once it is ready,
before it accepts anyone: it boots with what the serving workers leave.

A worker that hands its sessions off on a reload exits after it. Once only quiet
sessions are left to move, it lowers its own priority by ``HANDOFF_NICENESS`` for the
rest of its life (:func:`step_back`): the clients already adopted by its successor get
the CPU first. Lowering needs no privilege, and it never takes the priority back.

Taking a priority back needs ``CAP_SYS_NICE`` or an ``RLIMIT_NICE`` that allows it
(setpriority(2)); without either the worker would stay at the lower priority for good,
so then it keeps its priority and boots as before. Linux keeps a nice value per thread:
taking it back sets every thread of the process.
"""

from __future__ import annotations

import contextlib
import os
import resource

__all__ = [
    "BOOT_NICENESS",
    "HANDOFF_NICENESS",
    "lower_while_booting",
    "restore_after_boot",
    "step_back",
]

BOOT_NICENESS = 10
HANDOFF_NICENESS = 10
CAP_SYS_NICE = 23  # linux/capability.h

_base: int | None = None  # the priority to take back, while lowered
_stepped_back = False  # step_back() lowered it already


def lower_while_booting() -> bool:
    """Lower this process's priority until :func:`restore_after_boot`; False if it
    could not be taken back, and so was left alone."""
    global _base
    base = os.getpriority(os.PRIO_PROCESS, 0)
    if not _may_raise_to(base):
        return False
    try:
        os.setpriority(os.PRIO_PROCESS, 0, min(19, base + BOOT_NICENESS))
    except OSError:
        return False
    _base = base
    return True


def restore_after_boot() -> None:
    """Take back the priority :func:`lower_while_booting` lowered, in every thread."""
    global _base
    if _base is None:
        return
    base, _base = _base, None
    try:
        threads = [int(tid) for tid in os.listdir("/proc/self/task")]
    except OSError:
        threads = [0]
    for tid in threads:
        with contextlib.suppress(OSError):  # a thread that ended meanwhile
            os.setpriority(os.PRIO_PROCESS, tid, base)


def step_back() -> None:
    """Lower this thread's priority by ``HANDOFF_NICENESS`` for good, once (an exiting
    worker's last, background work); a failure leaves it as it was."""
    global _stepped_back
    if _stepped_back:
        return
    _stepped_back = True
    with contextlib.suppress(OSError):
        base = os.getpriority(os.PRIO_PROCESS, 0)
        os.setpriority(os.PRIO_PROCESS, 0, min(19, base + HANDOFF_NICENESS))


def _may_raise_to(base: int) -> bool:
    """Whether this process may set its nice value back to ``base`` once it lowered it."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or 20 - soft <= base:
        return True  # RLIMIT_NICE's ceiling is 20 - rlim_cur (setrlimit(2))
    return _capable(CAP_SYS_NICE)


def _capable(capability: int) -> bool:
    """Whether ``capability`` is in this process's effective set."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> capability & 1)
    except (OSError, ValueError):
        pass
    return False
