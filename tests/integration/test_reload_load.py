"""Rolling reloads under load, reload storms, hung workers, the control CLI, and the
master's resources over many reloads, on real processes (docs/reload.md, docs/cli.md)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import psutil
import pytest
from support import HttpLoad, ServerProcess, run_cli, serving, timeout, wait_until, write_app
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

LOAD_APP = "tests/apps/reload_load_app.py:server"
SERVICE_RESTART = 1012
STARTED = re.compile(r"reload to generation (\d+) started")
COMPLETE = re.compile(r"reload to generation (\d+) complete in ([0-9.]+)s")
TITLE = re.compile(r"^swoolish: worker (\d+) gen (\d+)$")

# worker_exit blocks the whole loop, but only in the first generation: the reload's
# new workers exit normally, the old ones must be killed by the master.
HANG_APP = """
    import json
    import time

    from swoolish import WebSocketServer

    server = WebSocketServer()

    @server.on("worker_exit")
    def hang(server, worker_id):
        if server.generation == 1:
            time.sleep(60)

    @server.on("request")
    def on_request(request, response):
        response.end(json.dumps({"pid": server.worker_pid, "generation": server.generation}))
"""


# ---------------------------------------------------------------------------- helpers


def status_json(pid_file) -> dict:
    result = run_cli("status", "--pid-file", str(pid_file), "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def settled(pid_file, workers: int) -> dict | None:
    """The status report once no reload runs and every worker is of its generation."""
    report = status_json(pid_file)
    master, live = report["master"], report["workers"]
    if master["reloading"] or len(live) != workers:
        return None
    if any(w["generation"] != master["generation"] or w["state"] != "serving" for w in live):
        return None
    return report


def worker_generations(server: ServerProcess) -> dict[int, tuple[int, int]] | None:
    """pid -> (slot, generation) of every child of the master, from its title; None
    while a child is exiting or exited but not yet reaped by the master."""
    server.workers()  # remembered for the teardown
    found = {}
    try:
        for proc in psutil.Process(server.pid).children():
            title = proc.cmdline()[0]
            match = TITLE.match(title)
            assert match, f"unexpected process title {title!r}"
            found[proc.pid] = (int(match[1]), int(match[2]))
    except (psutil.Error, ProcessLookupError, IndexError):
        return None
    return found


def all_workers_on(server: ServerProcess, generation: int, workers: int) -> bool:
    gens = worker_generations(server)
    return gens is not None and sorted(gens.values()) == [(s, generation) for s in range(workers)]


def completed(server: ServerProcess) -> list[int]:
    return [int(g) for g, _ in COMPLETE.findall(server.log())]


def http_get(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout(5))
    try:
        conn.request("GET", "/who")
        response = conn.getresponse()
        body = response.read()
        assert response.status == 200, (response.status, body)
        return json.loads(body)
    finally:
        conn.close()


class WsClient(threading.Thread):
    """Sends and checks echoes continuously; reconnects after a 1012 close."""

    def __init__(self, name: str, url: str, stop: threading.Event) -> None:
        super().__init__(daemon=True, name=name)
        self.url, self.stop = url, stop
        self.closes: list[int | None] = []  # close codes received from the server
        self.errors: list[str] = []
        self.echoes = 0
        self.generation = 0  # of the worker that answered last

    def run(self) -> None:
        sent = 0
        while not self.stop.is_set():
            try:
                ws = connect(self.url, open_timeout=timeout(5), close_timeout=timeout(5))
            except Exception as exc:
                self.errors.append(f"connect: {exc!r}")
                self.stop.wait(0.05)
                continue
            with ws:
                try:
                    while not self.stop.is_set():
                        sent += 1
                        text = f"{self.name}-{sent}"
                        ws.send(text)
                        echoed, _, generation = ws.recv(timeout=timeout(5)).split("|")
                        if echoed != text:
                            self.errors.append(f"sent {text!r}, echo {echoed!r}")
                        self.generation = int(generation)
                        self.echoes += 1
                        self.stop.wait(0.01)
                except ConnectionClosed as exc:
                    self.closes.append(exc.rcvd.code if exc.rcvd is not None else None)
                    if exc.rcvd is None or exc.rcvd.code != SERVICE_RESTART:
                        self.errors.append(f"closed without 1012: {exc!r}")
                except Exception as exc:
                    self.errors.append(f"while echoing: {exc!r}")


def generation_of(body: bytes) -> int:
    """Which generation answered (the app's /who answers its pid and generation)."""
    return json.loads(body)["generation"]


def under_load(loads: list[HttpLoad], clients: list[WsClient]) -> None:
    """Wait until every load thread made progress since this was called."""
    requests = [t.ok for t in loads]
    echoes = [c.echoes for c in clients]
    wait_until(
        lambda: (
            all(t.ok >= n + 20 for t, n in zip(loads, requests, strict=True))
            and all(c.echoes >= n + 10 for c, n in zip(clients, echoes, strict=True))
        ),
        10,
        what="every load thread making progress",
    )


def kill_if_alive(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------- tests


def test_reloads_under_steady_load_lose_no_request_and_close_each_client_at_most_once(tmp_path):
    """1. 4 workers; 3 threads send HTTP requests on fresh connections, 4 WebSocket
    clients echo continuously and reconnect after a 1012 close
    2. SIGUSR1, wait for the reload to complete and every client to be on the new
    generation; again  3. a storm: two SIGUSR1 50 ms apart, wait until the master is
    idle with every worker on its generation
    4. no HTTP request failed, no connect was refused or reset, each client was closed
    at most once per reload of each step (never, if its session was handed over live),
    and only ever with 1012
    5. every live worker runs the final generation (titles and HTTP answers), the
    master is the same process."""
    pid_file = tmp_path / "master.pid"
    workers = 4
    with serving(LOAD_APP, tmp_path, "--pid-file", str(pid_file), workers=workers) as server:
        stop = threading.Event()
        loads = [HttpLoad(server.port, stop, key=generation_of) for _ in range(3)]
        clients = [WsClient(f"ws{i}", server.url("/"), stop) for i in range(4)]
        threads = [*loads, *clients]
        for thread in threads:
            thread.start()
        try:
            steps: list[tuple[str, int, list[int]]] = []  # what, reloads, closes per client
            closed_so_far = [0] * len(clients)

            def settle_step(what: str, before: int) -> None:
                report = wait_until(
                    lambda: settled(pid_file, workers), 20, what=f"idle master after {what}"
                )
                generation = report["master"]["generation"]
                wait_until(
                    lambda: all(c.generation == generation for c in clients),
                    10,
                    what=f"every client echoing from generation {generation}",
                )
                closes = [len(c.closes) for c in clients]
                delta = [n - p for n, p in zip(closes, closed_so_far, strict=True)]
                closed_so_far[:] = closes
                steps.append((what, generation - before, delta))

            under_load(loads, clients)
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 20)
            settle_step("first SIGUSR1", 1)

            under_load(loads, clients)
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 3 complete", 20)
            settle_step("second SIGUSR1", 2)

            under_load(loads, clients)
            server.signal(signal.SIGUSR1)
            stop.wait(0.05)
            server.signal(signal.SIGUSR1)
            settle_step("two SIGUSR1 50 ms apart", 3)
            under_load(loads, clients)
        finally:
            stop.set()
            for thread in threads:
                thread.join(timeout(10))

        assert not any(t.is_alive() for t in threads)
        final = max(completed(server))
        requests = sum(t.ok for t in loads)
        by_generation = sum((t.answers for t in loads), Counter())
        print(f"\nHTTP requests answered: {requests}, by generation {dict(by_generation)}")
        print(
            f"WebSocket echoes: {[c.echoes for c in clients]}, closes {[c.closes for c in clients]}"
        )
        print(f"steps (what, reloads, closes per client): {steps}")
        print(f"reload durations (s): {COMPLETE.findall(server.log())}")

        assert [f for t in loads for f in t.failures] == []
        assert [e for c in clients for e in c.errors] == []
        assert all(code == SERVICE_RESTART for c in clients for code in c.closes)
        assert [reloads for _, reloads, _ in steps[:2]] == [1, 1]
        assert 1 <= steps[2][1] <= 2, steps[2]
        for what, reloads, closes in steps:
            assert all(0 <= n <= reloads for n in closes), (what, reloads, closes)
        assert final == 3 + steps[2][1]
        assert len(STARTED.findall(server.log())) == final - 1
        assert "rolled back" not in server.log()

        assert all_workers_on(server, final, workers), worker_generations(server)
        assert {http_get(server.port)["generation"] for _ in range(8)} == {final}
        assert server.proc.poll() is None
        assert status_json(pid_file)["master"]["pid"] == server.pid


def test_twenty_reload_signals_in_a_second_coalesce_and_end_on_the_newest_generation(tmp_path):
    """1. 2 workers  2. 20 SIGUSR1, 5 ms apart  3. wait until the master is idle with
    every worker on its generation  4. far fewer than 20 reloads started, each one
    completed, the master's generation is 1 + that number, every worker runs it."""
    pid_file = tmp_path / "master.pid"
    workers = 2
    with serving(LOAD_APP, tmp_path, "--pid-file", str(pid_file), workers=workers) as server:
        # A reload of 2 workers can take as little as 20 ms: the signals come faster.
        for _ in range(20):
            server.signal(signal.SIGUSR1)
            time.sleep(0.005)
        # The master reads every signal before it answers a status request, and starts
        # a coalesced reload in the same step that ends the previous one: idle is final.
        report = wait_until(lambda: settled(pid_file, workers), 30, what="an idle master")
        log = server.log()
        started = STARTED.findall(log)
        coalesced = log.count("reload requested during a reload")
        print(
            f"\n20 signals: {len(started)} reloads started, {coalesced} requests coalesced, "
            f"durations (s) {COMPLETE.findall(log)}"
        )
        assert 1 <= len(started) < 20
        assert len(completed(server)) == len(started)
        generation = report["master"]["generation"]
        assert generation == 1 + len(started)
        assert [w["generation"] for w in report["workers"]] == [generation] * workers
        assert all_workers_on(server, generation, workers)
        assert http_get(server.port)["generation"] == generation


def test_worker_hanging_in_worker_exit_is_killed_and_the_reload_completes(tmp_path):
    """1. 2 workers whose worker_exit blocks the loop for 60 s in generation 1,
    max_wait_time 1  2. SIGUSR1  3. the reload completes  4. both old workers are
    SIGKILLed after max_wait_time + grace, with a log line, and are gone
    5. the new workers serve."""
    app = write_app(tmp_path, HANG_APP)
    with serving(f"{app}:server", tmp_path, "--max-wait-time", "1", workers=2) as server:
        old = server.workers()
        server.signal(signal.SIGUSR1)
        server.wait_for_log(r"reload to generation 2 complete", 15)
        server.wait_for_log(r"did not exit within max_wait_time; killed", 15, count=2)
        _, alive = psutil.wait_procs(old, timeout=timeout(5))
        assert alive == []
        wait_until(lambda: all_workers_on(server, 2, 2), 10, what="two workers of generation 2")
        assert http_get(server.port)["generation"] == 2
        log = server.log()
        for proc in old:
            assert re.search(rf"\(pid {proc.pid}\) did not exit within max_wait_time; killed", log)
        assert "died:" not in log  # an expected kill, not a crash to restart
        print(f"\nhung worker_exit: {COMPLETE.findall(log)}")


def test_stopped_worker_cannot_block_a_reload_and_is_killed(tmp_path):
    """1. 2 workers, max_wait_time 1  2. SIGSTOP one worker, then SIGUSR1
    3. the reload completes anyway (the pause deadline passes for the stopped worker)
    4. the stopped worker is SIGKILLed after max_wait_time + grace and is gone
    5. the new workers serve."""
    with serving(LOAD_APP, tmp_path, "--max-wait-time", "1", workers=2) as server:
        old = server.workers()
        victim, other = old
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            server.signal(signal.SIGUSR1)
            server.wait_for_log(r"reload to generation 2 complete", 15)
            server.wait_for_log(
                rf"\(pid {victim.pid}\) did not exit within max_wait_time; killed", 15
            )
            _, alive = psutil.wait_procs(old, timeout=timeout(5))
            assert alive == []
            wait_until(lambda: all_workers_on(server, 2, 2), 10, what="two workers of gen 2")
            assert http_get(server.port)["generation"] == 2
            log = server.log()
            # the worker that was not stopped drained normally
            assert re.search(rf"\(pid {other.pid}\) drained in", log)
            assert f"(pid {other.pid}) did not exit" not in log
            print(f"\nSIGSTOPped worker: {COMPLETE.findall(log)}")
        finally:
            kill_if_alive(victim.pid, signal.SIGCONT)
            kill_if_alive(victim.pid, signal.SIGKILL)


def test_cli_reload_wait_status_and_stop_against_a_running_master(tmp_path):
    """1. 2 workers with a pid file  2. ``reload --wait`` prints a ready line per new
    worker and "reload complete", exits 0  3. ``status`` shows each worker's pid and
    generation, ``status --json`` names the master and both workers  4. ``stop`` exits 0
    and the master is gone."""
    pid_file = tmp_path / "master.pid"
    with serving(LOAD_APP, tmp_path, "--pid-file", str(pid_file), workers=2) as server:
        result = run_cli("reload", "--pid-file", str(pid_file), "--wait")
        print(f"\n$ swoolish reload --wait\n{result.stdout}")
        assert result.returncode == 0, result.stderr
        ready = re.findall(r"worker (\d) gen 2 \(pid (\d+)\) ready", result.stdout)
        assert sorted(slot for slot, _ in ready) == ["0", "1"]
        assert "reload complete: generation 2 serving" in result.stdout

        report = wait_until(lambda: settled(pid_file, 2), 10, what="old workers gone")
        assert report["master"]["pid"] == server.pid
        assert report["master"]["generation"] == 2
        assert len(report["workers"]) == 2
        assert {w["pid"] for w in report["workers"]} == {int(pid) for _, pid in ready}

        result = run_cli("status", "--pid-file", str(pid_file))
        print(f"$ swoolish status\n{result.stdout}")
        assert result.returncode == 0, result.stderr
        assert f"master pid {server.pid}" in result.stdout
        rows = [line.split() for line in result.stdout.splitlines()[3:] if line.strip()]
        # slot, kind, pid, gen, ...
        assert sorted((r[1], int(r[2]), int(r[3])) for r in rows) == sorted(
            ("event", w["pid"], 2) for w in report["workers"]
        )

        # The master's parent reaps it when it exits, as a shell or a supervisor does.
        reaper = threading.Thread(target=server.proc.wait, daemon=True)
        reaper.start()
        result = run_cli("stop", "--pid-file", str(pid_file))
        assert result.returncode == 0, result.stderr
        assert f"stopped (master pid {server.pid})" in result.stdout
        reaper.join(timeout(5))
        assert server.proc.returncode == 0
        assert not psutil.pid_exists(server.pid)
        assert not pid_file.exists()


def test_cli_stop_counts_an_exited_master_its_parent_has_not_reaped_yet(tmp_path):
    """1. a master whose parent (this test) does not reap it while ``stop`` runs
    2. ``stop --timeout 3``  3. the master exits at once, so stop exits 0."""
    pid_file = tmp_path / "master.pid"
    with serving(LOAD_APP, tmp_path, "--pid-file", str(pid_file)) as server:
        result = run_cli("stop", "--pid-file", str(pid_file), "--timeout", "3")
        assert "all workers gone, exiting" in server.log()
        assert psutil.Process(server.pid).status() == psutil.STATUS_ZOMBIE
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("command", ["reload", "stop", "status"])
def test_cli_refuses_a_pid_file_naming_another_process(tmp_path, command):
    """1. a pid file holding this test process's pid, another one holding a sleeper
    that records every signal it gets  2. the command exits non-zero saying "not a
    swoolish master"  3. neither process got a signal."""
    sleeper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import signal, sys, time\n"
            "for s in (signal.SIGUSR1, signal.SIGHUP, signal.SIGTERM):\n"
            "    signal.signal(s, lambda n, f: print('got', n, flush=True))\n"
            "print('ready', flush=True)\n"
            "time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sleeper.stdout.readline() == "ready\n"
        for pid in (os.getpid(), sleeper.pid):
            pid_file = tmp_path / f"{pid}.pid"
            pid_file.write_text(f"{pid}\n")
            result = run_cli(command, "--pid-file", str(pid_file))
            assert result.returncode != 0
            assert "not a swoolish master" in result.stderr
            assert f"process {pid}" in result.stderr
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        output, _ = sleeper.communicate(timeout=timeout(5))
    assert "got" not in output


@pytest.mark.parametrize("command", ["reload", "stop", "status"])
def test_cli_with_a_missing_pid_file_is_a_clear_error(tmp_path, command):
    missing = tmp_path / "nothing-here.pid"
    result = run_cli(command, "--pid-file", str(missing))
    assert result.returncode != 0
    assert f"cannot read pid file {missing}" in result.stderr
    assert result.stderr.count("\n") == 1


def test_master_rss_and_open_fds_stay_flat_over_twenty_reloads(tmp_path):
    """1. 2 workers, one warm-up reload  2. note the master's RSS and open fds
    3. 20 reloads, each waited for until every worker runs the new generation
    4. the same number of fds, RSS grown by less than 5 MiB."""
    workers = 2
    with serving(LOAD_APP, tmp_path, workers=workers) as server:
        master = psutil.Process(server.pid)

        def reload_to(generation: int) -> None:
            server.signal(signal.SIGUSR1)
            server.wait_for_log(rf"reload to generation {generation} complete", 15)
            wait_until(
                lambda: all_workers_on(server, generation, workers),
                10,
                what=f"every worker on generation {generation}",
            )

        reload_to(2)
        with master.oneshot():
            rss_before, fds_before = master.memory_info().rss, master.num_fds()
        for generation in range(3, 23):
            reload_to(generation)
        # The master closes an old worker's channel right after reaping it: give the
        # last one a moment, then compare (the assertion below reports the figures).
        with contextlib.suppress(AssertionError):
            wait_until(lambda: master.num_fds() == fds_before, 5, what="fds back to baseline")
        with master.oneshot():
            rss_after, fds_after = master.memory_info().rss, master.num_fds()
        durations = [float(s) for _, s in COMPLETE.findall(server.log())]
        print(
            f"\nmaster over 20 reloads: RSS {rss_before / 2**20:.2f} -> {rss_after / 2**20:.2f} "
            f"MiB ({(rss_after - rss_before) / 2**10:+.0f} KiB), fds {fds_before} -> {fds_after}; "
            f"reload durations (s) min {min(durations):.3f} max {max(durations):.3f} "
            f"mean {sum(durations) / len(durations):.3f}"
        )
        assert fds_after == fds_before
        assert rss_after - rss_before < 5 * 2**20
