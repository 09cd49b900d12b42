"""``swoolish reload``, ``stop`` and ``status``: talking to a running master.

Before any signal is sent, the pid is checked with psutil to be a live swoolish master
(its process title starts with ``swoolish: master``): a stale pid file whose number now
belongs to an unrelated process must never get a signal.

Only the master's own user and root may control it (its control socket checks the
peer's uid, master/control.py), so the CLI says so in one line instead of trying:
without ``--pid-file`` it only considers masters of the caller's uid, and a master of
another user named by ``--pid-file`` is refused unless the caller is root. ``--port``
picks, among the caller's masters, the one listening on that port.

``reload --wait`` and ``stop`` print what they wait for, as the master reports it over
its control socket (docs/cli.md): each new worker ready, each old worker's drain, and,
about every second, the connections a stopping worker still has and the time left to
its max_wait_time.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from typing import Any

import psutil

from ..core.words import plural
from ..master import control

__all__ = ["CommandError", "find_master", "reload", "status", "stop"]

MASTER_TITLE = "swoolish: master"
_LISTEN = re.compile(r"\[([^\[\]]*)\]$")  # the title ends with [host:port] or [unix:PATH]


class CommandError(Exception):
    """A CLI command failed; the message says why, ``exit_code`` is what to exit with."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _is_master(proc: psutil.Process) -> bool:
    try:
        cmdline = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return bool(cmdline) and cmdline[0].startswith(MASTER_TITLE)


def _uid(proc: psutil.Process) -> int | None:
    """The effective uid a master runs as (its control socket's owner)."""
    try:
        return int(proc.uids().effective)
    except psutil.Error:
        return None


def _title(proc: psutil.Process) -> str:
    """The process title: a title set by setproctitle may come padded with empty words."""
    try:
        return " ".join(word for word in proc.cmdline() if word)
    except psutil.Error:
        return ""


def _listen_of(proc: psutil.Process) -> str:
    """Where a master listens, from its title (``swoolish: master TARGET [host:port]``)."""
    match = _LISTEN.search(_title(proc))
    return match.group(1) if match else "?"


def _listens_on(proc: psutil.Process, port: int) -> bool:
    """Whether ``proc`` listens on TCP ``port``: its title says so, or its sockets do."""
    where = _listen_of(proc)
    if not where.startswith("unix:") and where.rpartition(":")[2] == str(port):
        return True
    try:
        sockets = proc.net_connections(kind="inet")
    except psutil.Error:
        return False
    return any(s.status == psutil.CONN_LISTEN and s.laddr and s.laddr.port == port for s in sockets)


def find_master(pid_file: str | None, port: int | None = None) -> psutil.Process:
    """The master named by ``pid_file``, else the caller's master listening on ``port``,
    else the caller's only master."""
    if pid_file is None and port is not None:
        return _master_on_port(os.geteuid(), port)
    if pid_file is None:
        return _only_master_of(os.geteuid())
    try:
        with open(pid_file) as f:
            text = f.read().strip()
    except OSError as exc:
        raise CommandError(f"cannot read pid file {pid_file}: {exc.strerror}") from None
    if not text.isdigit():
        raise CommandError(f"pid file {pid_file} does not hold a pid: {text[:40]!r}")
    pid = int(text)
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        raise CommandError(f"stale pid file {pid_file}: no process {pid} is running") from None
    if not _is_master(proc):
        raise CommandError(
            f"stale pid file {pid_file}: process {pid} is not a swoolish master "
            f"({' '.join(proc.cmdline())[:60]!r}); not signalling it"
        )
    _check_may_control(proc)
    return proc


def _only_master_of(uid: int) -> psutil.Process:
    masters = [p for p in psutil.process_iter() if _is_master(p)]
    mine = [p for p in masters if _uid(p) == uid]
    if len(mine) == 1:
        return mine[0]
    if mine:
        raise CommandError(
            f"several swoolish masters are running ({_listing(mine)}); "
            "pass --port PORT or --pid-file PATH"
        )
    others = f" ({len(masters)} of other users; --pid-file names one)" if masters else ""
    raise CommandError(f"no swoolish master of uid {uid} is running{others}")


def _master_on_port(uid: int, port: int) -> psutil.Process:
    """The caller's master listening on ``port`` (a master of another user only through
    its pid file, as without --port)."""
    mine = [p for p in psutil.process_iter() if _is_master(p) and _uid(p) == uid]
    found = [p for p in mine if _listens_on(p, port)]
    if len(found) == 1:
        return found[0]
    if found:  # two masters cannot bind one port, unless one binds it on another host
        raise CommandError(
            f"several swoolish masters listen on port {port} ({_listing(found)}); "
            "pass --pid-file PATH"
        )
    running = f" (running: {_listing(mine)})" if mine else ""
    raise CommandError(f"no swoolish master of uid {uid} listens on port {port}{running}")


def _listing(masters: list[psutil.Process]) -> str:
    """``4242 on 127.0.0.1:9501, 4300 on 127.0.0.1:9502``."""
    return ", ".join(f"{p.pid} on {_listen_of(p)}" for p in sorted(masters, key=lambda p: p.pid))


def _check_may_control(proc: psutil.Process) -> None:
    """Refuse, in one line, a master the caller may not control: another user's, unless
    the caller is root (its control socket and the kernel would refuse anyway)."""
    me, owner = os.geteuid(), _uid(proc)
    if me != 0 and owner != me:
        raise CommandError(
            f"master {proc.pid} runs as uid {owner}; only that user or root may control it "
            f"(you are uid {me})"
        )


def _control_path(master: psutil.Process) -> str:
    """Where ``master``'s control socket is: its runtime directory was chosen from its
    own environment (read with psutil when allowed), else from ours."""
    uid = _uid(master)
    if uid is None:
        raise ConnectionError(f"master {master.pid} is gone")
    environs: list[dict[str, str]] = []
    with contextlib.suppress(psutil.Error):
        environs.append(master.environ())
    if uid == os.geteuid():
        environs.append(dict(os.environ))
    return control.locate(master.pid, uid, environs)


def _signal(master: psutil.Process, sig: signal.Signals) -> None:
    try:
        master.send_signal(sig)
    except psutil.NoSuchProcess:
        raise CommandError(f"master {master.pid} exited before it got {sig.name}") from None
    except psutil.AccessDenied:
        raise CommandError(
            f"not permitted to signal master {master.pid} (you are uid {os.geteuid()})"
        ) from None


def reload(pid_file: str | None, wait: bool, timeout: float, port: int | None = None) -> int:
    master = find_master(pid_file, port)
    if not wait:
        _signal(master, signal.SIGUSR1)
        print(f"reload requested (master pid {master.pid})")
        return 0
    started = time.monotonic()
    result: int | None = None
    try:
        # After "finished", the master goes on reporting how each old worker drains
        # (connections moved or closed, what it still waits for) and hangs up when they
        # have all exited.
        path = _control_path(master)
        for event in control.request(master.pid, {"command": "reload"}, timeout, path):
            line = _describe_reload_event(event)
            if line:
                print(line, flush=True)
            if event.get("event") == "finished":
                result = 0 if event.get("ok") else 1
    except TimeoutError:
        if result is not None:  # the outcome is known; only old workers still drain
            print(
                f"reload: old workers still draining after {timeout:g}s; "
                "check with 'swoolish status'",
                file=sys.stderr,
            )
            return result
        raise CommandError(
            f"reload: still in progress after {timeout:g}s; it may still complete — "
            "check with 'swoolish status'"
        ) from None
    except ConnectionError as exc:
        if result is not None:
            return result  # the reload's outcome is known; only drain reports were cut short
        raise CommandError(f"reload: {exc}") from None
    if result is not None:
        return result
    raise CommandError(
        f"reload: master {master.pid} hung up after {time.monotonic() - started:.1f}s "
        "without a result"
    )


def _describe_reload_event(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "queued":
        return "a reload is in progress; this request will run right after it"
    if kind == "started":
        return f"reload to generation {event['generation']} started"
    if kind == "ready":
        kinds = {"task": "task worker", "process": "user process"}
        which = kinds.get(str(event.get("kind")), "worker")
        return (
            f"  {which} {event['slot']} gen {event['generation']} (pid {event['pid']}) ready "
            f"in {event['seconds']:.3f}s"
        )
    if kind == "waiting":
        return f"  waiting for old {_describe_waiting(event)}"
    if kind == "drained":
        moved = ""
        if "moved" in event:
            moved = (
                f", {plural(event['moved'], 'connection')} moved to the new worker, "
                f"{event.get('fell_back', 0)} closed with 1012 instead"
            )
        if event.get("kind") == "process":
            return (
                f"  old user process {event.get('name')!r} (pid {event['pid']}) stopped in "
                f"{event.get('seconds', 0.0):.3f}s"
            )
        if event.get("kind") == "task":
            return (
                f"  old task worker {event['slot']} (pid {event['pid']}) drained: "
                f"{plural(event.get('tasks_done', 0), 'task')} done"
            )
        return f"  old {_describe_drained(event)}{moved}"
    if kind == "finished":
        if event.get("ok"):
            return (
                f"reload complete: generation {event['generation']} serving "
                f"({event['seconds']:.3f}s)"
            )
        serving = event.get("generation")
        keeps = f"; generation {serving} keeps serving" if serving is not None else ""
        return f"reload rolled back: {event.get('reason')}{keeps}"
    if "error" in event:
        return f"error: {event['error']}"
    return ""


def _describe_waiting(event: dict[str, Any]) -> str:
    """``worker 0 (pid 123): 3 connections left, 2.1s to max_wait_time``: what a
    stopping worker still has, as it answered the master's last poll."""
    if event.get("connections") is None:
        has = "not answering (a worker_stop or worker_exit hook still running?)"
    else:
        has = f"{plural(event['connections'], 'connection')} left"
        if event.get("handlers"):
            has += f", {plural(event['handlers'], 'handler')} running"
    left = event.get("seconds_left", 0.0)
    if left > 0:
        when = f"{left:.1f}s to max_wait_time"
    else:
        when = f"past max_wait_time, killed in {max(0.0, event.get('kill_in', 0.0)):.1f}s"
    return f"worker {event['slot']} (pid {event['pid']}): {has}, {when}"


def _describe_drained(event: dict[str, Any]) -> str:
    return (
        f"worker {event['slot']} (pid {event['pid']}) drained: "
        f"{plural(event.get('timers_cleared', 0), 'timer')} cleared, "
        f"{plural(event.get('connections_closed', 0), 'connection')} closed"
    )


def stop(pid_file: str | None, timeout: float, port: int | None = None) -> int:
    """Ask the master for a graceful shutdown and show what it waits for until it has
    exited; a master that does not answer on its control socket gets SIGTERM, and the
    wait is then silent."""
    master = find_master(pid_file, port)
    deadline = time.monotonic() + timeout
    if not _follow_stop(master, timeout):
        _signal(master, signal.SIGTERM)
        print(
            f"master {master.pid} does not answer on its control socket: sent SIGTERM, "
            "waiting for it to exit",
            flush=True,
        )
    if not _wait_gone(master, max(0.0, deadline - time.monotonic())):
        raise CommandError(
            f"master {master.pid} still running after {timeout:g}s "
            "(send SIGTERM again, or SIGQUIT, to force)"
        )
    print(f"stopped (master pid {master.pid})")
    return 0


def _follow_stop(master: psutil.Process, timeout: float) -> bool:
    """Send ``stop`` over the control socket and print the master's progress until it
    hangs up. False when the master could not be asked (no control socket, or one that
    does not know ``stop``): the caller falls back to SIGTERM."""
    asked = False
    try:
        path = _control_path(master)
        for event in control.request(master.pid, {"command": "stop"}, timeout, path):
            asked = True
            line = _describe_stop_event(event)
            if line:
                print(line, flush=True)
    except TimeoutError:
        return True  # it was asked; the wait that follows says it is still running
    except ConnectionError:
        return asked  # cut short once it stops is fine; refused or unreachable is not
    return asked


def _describe_stop_event(event: dict[str, Any]) -> str:
    kind = event.get("event")
    if kind == "stopping":
        return (
            f"stopping master {event['pid']}: {plural(event['workers'], 'worker')} "
            f"draining (max_wait_time {event['max_wait_time']:g}s)"
        )
    left = f"; {plural(event.get('workers_left', 0), 'worker')} left"
    if kind == "waiting":
        return f"  waiting for {_describe_waiting(event)}{left}"
    if kind == "drained":
        return f"  {_describe_drained(event)}{left}"
    if kind == "exited" and event.get("how") != "exit status 0":
        return f"  worker {event['slot']} (pid {event['pid']}) {event['how']}{left}"
    return ""


def _wait_gone(proc: psutil.Process, timeout: float) -> bool:
    """True once ``proc`` has exited. An exited process its parent has not reaped yet (a
    zombie) counts as gone: it runs nothing and holds nothing but its pid."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def status(pid_file: str | None, as_json: bool, timeout: float, port: int | None = None) -> int:
    master = find_master(pid_file, port)
    try:
        path = _control_path(master)
        replies = list(control.request(master.pid, {"command": "status"}, timeout, path))
    except (TimeoutError, ConnectionError) as exc:
        raise CommandError(f"status: {exc}") from None
    if not replies or "master" not in replies[0]:
        raise CommandError(f"status: unexpected reply from master {master.pid}: {replies!r}")
    report = replies[0]
    _add_process_figures(report)
    if as_json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        print(render_status(report))
    return 0


def _add_process_figures(report: dict[str, Any]) -> None:
    """RSS, CPU and uptime from psutil, for the master and each worker."""
    now = time.time()
    for entry in [report["master"], *report["workers"]]:
        try:
            proc = psutil.Process(entry["pid"])
            with proc.oneshot():
                entry["rss_mib"] = round(proc.memory_info().rss / 2**20, 1)
                times = proc.cpu_times()
                entry["cpu_seconds"] = round(times.user + times.system, 2)
                entry["uptime_seconds"] = round(now - proc.create_time(), 1)
        except psutil.NoSuchProcess:
            entry.update(rss_mib=None, cpu_seconds=None, uptime_seconds=None)


def render_status(report: dict[str, Any]) -> str:
    master = report["master"]
    lines = [
        f"swoolish master pid {master['pid']}  {master['target']}  on {master['listen']}  "
        f"generation {master['generation']}{'  (reloading)' if master['reloading'] else ''}  "
        f"RSS {master.get('rss_mib')} MiB  up {_duration(master.get('uptime_seconds'))}",
        "",
    ]
    header = (
        "slot",
        "kind",
        "pid",
        "gen",
        "state",
        "conns",
        "timers",
        "messages",
        "RSS MiB",
        "CPU s",
        "uptime",
    )
    rows = [header]
    for w in report["workers"]:
        rows.append(
            (
                str(w["slot"]),
                w.get("kind", "event"),
                str(w["pid"]),
                str(w["generation"]),
                w["state"],
                str(w["connections"]),
                str(w["timers"]),
                str(w["messages"]),
                str(w.get("rss_mib")),
                str(w.get("cpu_seconds")),
                _duration(w.get("uptime_seconds")),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        lines.append("  ".join(cell.rjust(widths[i]) for i, cell in enumerate(row)))
    cluster = report.get("cluster")
    if cluster:
        lines += ["", *render_cluster(cluster)]
    return "\n".join(lines)


def render_cluster(cluster: dict[str, Any]) -> list[str]:
    """The cluster part of ``swoolish status`` (docs/cluster.md, "Watching it")."""
    if cluster["link"] == "up":
        link = f"link up ({plural(cluster['workers_linked'], 'worker')})"
    else:
        link = (
            f"link DOWN for {cluster['down_for_seconds']}s ({cluster['down_reason']}); "
            f"{cluster['workers_linked']} workers linked"
        )
    lines = [
        f"cluster {cluster['name']!r}, this is node {cluster['node']}: {link}",
        f"  bus messages out {cluster['messages_out']}, in {cluster['messages_in']}, "
        f"dropped {cluster['dropped']}, refused {cluster.get('refused', 0)}, "
        f"to closed {cluster.get('to_closed', 0)}; link losses {cluster['link_losses']}, "
        f"subscriber restarts {cluster['subscriber_restarts']}, "
        f"unanswered {cluster['pending_bytes']} bytes",
    ]
    if cluster.get("refusing"):
        lines.append(
            f"  Redis refuses {', '.join(cluster['refusing'])} "
            f"({cluster['refused_commands']} refused)"
        )
    if not cluster["nodes"]:
        lines.append("  no other node heard")
    for node, seen in cluster["nodes"].items():
        lines.append(
            f"  node {node}: {plural(seen['workers'], 'worker')}, "
            f"{plural(seen['sessions'], 'session')}, heard {seen['heard_ago']}s ago"
        )
    return lines


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"
