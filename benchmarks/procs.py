"""Processes the benchmarks start: their CPU time and how they are stopped, by pid.

A swoolish server is a master and the workers it forks, so both figures cover a
process's whole tree as it is at the moment of the call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import psutil

__all__ = ["stop_tree", "tree_cpu_seconds"]


def tree_cpu_seconds(pids: list[int]) -> float:
    """user+sys of the processes ``pids`` and every live child of theirs."""
    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            root = psutil.Process(pid)
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times = proc.cpu_times()
                    total += times.user + times.system
    return total


def stop_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL by pid for the process and every child it had left."""
    pids = {proc.pid}
    with contextlib.suppress(psutil.NoSuchProcess):
        pids.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))
    with contextlib.suppress(ProcessLookupError):
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
