"""The master's pid file: created exclusively, locked for the master's whole life.

A pid file names the master that ``swoolish reload``/``stop``/``status --pid-file``
act on, so it must never name the wrong one (docs/security.md):

* it is never opened through a symlink: a symlink at the path is refused, not followed;
* it appears complete and locked, or not at all: the pid is written to a temporary file
  beside it, which is locked (``flock``) and then hard-linked into place, and a link
  fails when anything is already there, like ``O_EXCL``;
* the lock is held for the master's life (forked workers close their copy), so a
  second server given the same path refuses to start, with one line, before anything
  is bound or forked, as gunicorn does;
* a file nobody holds the lock of, whose pid is no running swoolish master, is stale
  (a ``SIGKILL``, a reboot) and is replaced;
* at exit the file is removed only while it is still the one this master created and
  still holds its pid.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat

import psutil

from ..core.errors import SettingError

__all__ = ["PidFile"]

log = logging.getLogger("swoolish.master")

MASTER_TITLE = "swoolish: master"
ATTEMPTS = 5  # a stale file replaced while another server replaces it too: try again


class PidFile:
    """A pid file this process created and holds locked; :meth:`release` at exit."""

    def __init__(self, path: str, fd: int, pid: int) -> None:
        self.path = path
        self.fd = fd
        self.pid = pid

    @classmethod
    def create(cls, path: str) -> PidFile:
        """Write this process's pid to ``path`` and lock it; raises ``SettingError`` (one
        line) when a running master holds it, or when the path is unsafe or unwritable."""
        pid = os.getpid()
        for _ in range(ATTEMPTS):
            fd = _locked_temporary(path, pid)
            try:
                os.link(_temporary(path, pid), path)
            except FileExistsError:
                os.close(fd)
                _remove_stale(path)
                continue
            except OSError as exc:
                os.close(fd)
                raise _unwritable(path, exc) from None
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(_temporary(path, pid))
            return cls(path, fd, pid)
        raise SettingError(f"pid_file {path} keeps reappearing; is another server starting?")

    def release(self) -> None:
        """Remove the file if it is still ours, then drop the lock (the master, at exit)."""
        if self.fd < 0:
            return
        try:
            if os.getpid() == self.pid and self._still_ours():
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            self.close()

    def close(self) -> None:
        """Close this process's descriptor only (a forked worker's copy): the lock stays
        with the master."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def _still_ours(self) -> bool:
        """The path is the file we created (not a replacement) and it holds our pid."""
        on_disk, ours = os.lstat(self.path), os.fstat(self.fd)
        if (on_disk.st_dev, on_disk.st_ino) != (ours.st_dev, ours.st_ino):
            return False
        return os.pread(self.fd, 64, 0).strip() == str(self.pid).encode()


def _temporary(path: str, pid: int) -> str:
    return f"{path}.{pid}.tmp"


def _locked_temporary(path: str, pid: int) -> int:
    """A new file beside ``path`` holding ``pid``, locked; its descriptor."""
    temporary = _temporary(path, pid)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)  # a dead process with our pid left it (never a live one)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(temporary, flags, 0o644)
    except OSError as exc:
        raise _unwritable(path, exc) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, f"{pid}\n".encode())
    except OSError as exc:
        os.close(fd)
        os.unlink(temporary)
        raise _unwritable(path, exc) from None
    return fd


def _unwritable(path: str, exc: OSError) -> SettingError:
    return SettingError(f"cannot write pid_file {path}: {exc.strerror}; choose a writable path")


def _remove_stale(path: str) -> None:
    """Remove the file at ``path`` if it is stale; raise ``SettingError`` if it is not
    (a running master's, a symlink, not a regular file). Returns when the caller
    should try again."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise SettingError(
            f"pid_file {path} is a symbolic link; swoolish does not follow it: remove it "
            "or choose another path"
        )
    if not stat.S_ISREG(st.st_mode):
        raise SettingError(f"pid_file {path} is not a regular file; choose another path")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise SettingError(f"cannot read pid_file {path}: {exc.strerror}") from None
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return  # replaced meanwhile: look again
        text = os.pread(fd, 64, 0).decode(errors="replace").strip()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _held(path, text) from None
        if text.isdigit() and _is_master(int(text)):
            raise _held(path, text)  # a master that holds no lock (an older swoolish)
        try:
            os.unlink(path)
        except OSError as exc:
            raise SettingError(
                f"cannot replace the stale pid_file {path}: {exc.strerror}; remove it"
            ) from None
        log.warning(
            "pid_file %s was stale (pid %s is no running master); replacing it",
            path,
            text or "none",
        )
    finally:
        os.close(fd)


def _held(path: str, text: str) -> SettingError:
    owner = f"pid {text}" if text.isdigit() else "another process"
    return SettingError(
        f"pid_file {path} belongs to a running master ({owner}); stop it first "
        f"(swoolish stop --pid-file {path}) or choose another path"
    )


def _is_master(pid: int) -> bool:
    try:
        cmdline = psutil.Process(pid).cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    return bool(cmdline) and cmdline[0].startswith(MASTER_TITLE)
