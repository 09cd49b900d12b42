"""What the master hands a worker it forks, and what a worker's exit status tells it."""

from __future__ import annotations

import dataclasses
import socket

from .ids import IdSource
from .table import SessionTable
from .taskload import TaskLoad

__all__ = ["EXIT_BOOT_ERROR", "WorkerSetup"]

#: The app failed to import or worker_start raised. For people and logs: the master
#: judges a failed boot (restarted with back-off, not in a hot loop) by the missing
#: Ready report, since the app's own code may exit with 3 too.
EXIT_BOOT_ERROR = 3


@dataclasses.dataclass(frozen=True)
class WorkerSetup:
    """What the master hands a worker it forks: its place and the shared resources."""

    worker_id: int  # the slot
    generation: int
    listen_sock: socket.socket  # the one listening socket, bound by the master
    id_source: IdSource  # session ids, shared by every worker of every generation
    channel: socket.socket | None  # to and from the master
    master_pid: int
    inbox: socket.socket | None = None  # where the previous generation hands us sessions
    table: SessionTable | None = None  # the server-wide session table
    region: int | None = None  # our region of it
    start_timeout: float | None = None  # worker_start_timeout, as the master enforces it
    task_load: TaskLoad | None = None  # what each task worker slot holds (docs/tasks.md)
    task_worker: bool = False  # a task worker: runs tasks, serves no client
    process_num: int = 0  # user processes the master runs (their ids follow task workers')
    process_index: int | None = None  # this is user process n (server.add_process)
    process_name: str = ""  # its name, to find its target again in the fresh app
    node: int = 0  # cluster mode: this node's number, taken from Redis by the master
    node_token: int = 0  # and the token of this start of it (swoolish.master.cluster)
