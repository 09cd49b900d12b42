"""A ``--uds`` path another user got to first (docs/deployment.md, "A proxy in front").

In a directory anyone may write (``/tmp``, sticky), another user can plant a socket
file nothing listens on at the path: the master may not remove it, and refuses to
start with one line naming the file's owner (exit status 2, like every other listener
error), not with a traceback and exit status 1. The same holds for a stale socket file
in a directory the master's user cannot write.

The other user is ``nobody``, reached by a forked child of this test that drops to it
and binds there itself (the tests run as root; root ignores directory permissions, so
without root only the read-only directory case runs, as the test's own user).
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest
from support import as_user, nobody

from swoolish.core.errors import SettingError
from swoolish.master.listeners import bind_unix


@pytest.fixture
def directory() -> Iterator[Path]:
    """A directory under /tmp that ``nobody`` may enter (pytest's tmp_path is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="swoolish-uds-"))
    try:
        yield path
    finally:
        path.chmod(0o700)
        shutil.rmtree(path, ignore_errors=True)


def dead_socket(path: Path, mode: int) -> None:
    """A socket file at ``path`` that nothing listens on, with ``mode``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
    path.chmod(mode)


def try_to_bind(path: Path) -> dict[str, str]:
    """What the master's bind does at ``path``: refused in one line, or anything else."""
    try:
        sock, _ = bind_unix(str(path))
    except SettingError as exc:
        return {"refused": str(exc)}
    except Exception as exc:
        return {"raised": "".join(traceback.format_exception(exc))}
    sock.close()
    return {"bound": str(path)}


@pytest.mark.parametrize(
    "mode", [0o777, 0o755], ids=["one-we-may-connect-to", "one-we-may-not-connect-to"]
)
def test_a_dead_socket_another_user_planted_in_a_sticky_directory_is_one_line(directory, mode):
    """1. root (the other user here) leaves a socket file nothing listens on in a sticky
    directory anyone may write  2. the master, running as nobody, tries to listen there
    3. it is refused with one line naming the path and the file's owner (before: a
    PermissionError from unlink escaped, a traceback and exit status 1)  4. the file is
    left alone."""
    uid, gid = nobody()
    directory.chmod(0o1777)
    path = directory / "app.sock"
    dead_socket(path, mode)
    result = as_user(uid, gid, lambda: try_to_bind(path))
    assert "refused" in result, result
    message = result["refused"]
    assert message.startswith(f"cannot listen on unix:{path}: "), message
    assert "uid 0" in message and "another --uds" in message, message
    assert "\n" not in message
    assert stat.S_ISSOCK(os.lstat(path).st_mode) and os.lstat(path).st_uid == 0


def test_a_stale_socket_in_a_directory_of_ours_we_cannot_write_is_one_line(directory):
    """The same refusal for a stale socket file of the master's own user in a directory
    it cannot write (run as nobody: root ignores directory permissions)."""
    uid, gid = nobody()
    directory.chmod(0o755)
    own = directory / "own"
    own.mkdir()
    os.chown(own, uid, gid)

    def plant_then_bind() -> dict[str, str]:
        path = own / "app.sock"
        dead_socket(path, 0o660)
        own.chmod(0o500)
        return try_to_bind(path)

    result = as_user(uid, gid, plant_then_bind)
    assert "refused" in result, result
    assert f"uid {uid}" in result["refused"] and "cannot be removed" in result["refused"]


def test_without_root_a_stale_socket_in_a_read_only_directory_is_one_line(tmp_path):
    """The case above as the test's own user, when that is not root."""
    if os.geteuid() == 0:
        pytest.skip("root ignores directory permissions: the other tests cover it as nobody")
    own = tmp_path / "own"
    own.mkdir()
    path = own / "app.sock"
    dead_socket(path, 0o660)
    own.chmod(0o500)
    try:
        with pytest.raises(SettingError, match=f"uid {os.getuid()}.*cannot be removed"):
            bind_unix(str(path))
    finally:
        own.chmod(0o700)
