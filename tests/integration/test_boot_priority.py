"""A worker booted beside serving workers boots at a lower CPU priority and takes its
priority back, in every thread, once ready (swoolish/shared/priority.py), on a real
reload."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil
import pytest
from support import serving, wait_until, write_app

from swoolish.shared import priority

# The new generation's worker_start starts a thread, then waits for RELEASE: the test
# looks at the booting worker meanwhile.
SLOW_BOOT_APP = """
    import os, threading, time
    from swoolish import WebSocketServer

    RELEASE = {release!r}
    server = WebSocketServer(worker_start_timeout=60)

    @server.on("worker_start")
    def start(server, worker_id):
        if server.generation > 1:
            threading.Thread(target=time.sleep, args=(600,), daemon=True).start()
            while not os.path.exists(RELEASE):
                time.sleep(0.02)
"""


def thread_nices(pid: int) -> dict[int, int]:
    """Every thread of ``pid`` -> its nice value (/proc/PID/task/TID/stat, field 19)."""
    nices = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # ended meanwhile
        nices[int(tid)] = int(stat.rpartition(")")[2].split()[16])
    return nices


def test_a_reloaded_worker_boots_at_lower_priority_then_takes_it_back(tmp_path) -> None:
    if not priority._may_raise_to(os.getpriority(os.PRIO_PROCESS, 0)):
        pytest.skip("no CAP_SYS_NICE nor RLIMIT_NICE here: workers keep their priority")
    base = os.getpriority(os.PRIO_PROCESS, 0)
    release = tmp_path / "release"
    app = write_app(tmp_path, SLOW_BOOT_APP.format(release=str(release)))
    with serving(f"{app}:server", tmp_path) as server:
        (first,) = server.workers()
        assert set(thread_nices(first.pid).values()) == {base}  # nothing served beside it
        server.signal(signal.SIGUSR1)
        new = wait_until(
            lambda: next((w for w in server.workers() if w.pid != first.pid), None),
            what="the new worker",
        )
        wait_until(lambda: len(thread_nices(new.pid)) >= 2, what="its thread started")
        assert set(thread_nices(new.pid).values()) == {base + priority.BOOT_NICENESS}
        assert psutil.Process(first.pid).nice() == base  # the serving one is untouched
        release.touch()
        server.wait_for_log(r"reload to generation 2 complete", 30)
        assert set(thread_nices(new.pid).values()) == {base}
        with server.connect() as ws:  # and it serves
            ws.send("hi")
