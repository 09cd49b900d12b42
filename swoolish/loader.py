"""Finding the app: ``module:attr``, ``path/file.py:attr``, or the script that called start().

The master loads the app once, to read its settings and to fail early (exit 2) on a bad
TARGET. Each worker loads it *again after the fork*, after dropping every user module
the master had imported, so a reload runs the code that is on disk now (the trap of
code loaded before the fork, which Swoole's and gunicorn's users fall into).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import logging
import os
import site
import sys
import sysconfig
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from .core.errors import SettingError, TargetError
from .core.loading import created_during_load, loading

__all__ = [
    "ANY_SERVER",
    "AppSpec",
    "app_directory",
    "import_warning_after",
    "load",
    "parse_target",
    "purge_user_modules",
    "warn_if_import_hangs",
]

T = TypeVar("T")
log = logging.getLogger("swoolish.loader")

#: Seconds the master imports the app before it warns that the import may be blocked
#: (docs/cli.md). Tests only: the environment variable ``SWOOLISH_IMPORT_WARNING_AFTER``
#: (seconds) shortens it.
IMPORT_WARNING_AFTER = 10.0
IMPORT_WARNING_ENV = "SWOOLISH_IMPORT_WARNING_AFTER"

ANY_SERVER = "*"  # AppSpec.attr of a script whose server has no module-level name


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """Where the app's server object lives: ``kind`` is "module" or "path"."""

    kind: str
    ref: str
    attr: str

    def __str__(self) -> str:
        return f"{self.ref}:{self.attr}"


def parse_target(target: str) -> AppSpec:
    """Parse ``module:attr`` or ``path/file.py:attr`` (attr defaults to ``server``)."""
    if not isinstance(target, str) or not target.strip():
        raise TargetError("TARGET is empty; give module:attr or path/to/file.py:attr")
    ref, sep, attr = target.rpartition(":")
    if not sep:
        ref, attr = target, "server"
    if not attr.isidentifier():
        raise TargetError(f"{target!r}: {attr!r} is not a Python name; use module:attr")
    if ref.endswith(".py") or os.sep in ref:
        path = os.path.abspath(ref)
        if not os.path.isfile(path):
            raise TargetError(f"{target!r}: no such file {path}")
        return AppSpec("path", path, attr)
    if not all(part.isidentifier() for part in ref.split(".")):
        raise TargetError(f"{target!r}: {ref!r} is neither a module name nor a .py file")
    return AppSpec("module", ref, attr)


def load(spec: AppSpec, expected: type[T]) -> T:
    """Import the app named by ``spec`` and return its server object, of type ``expected``."""
    with loading():
        try:
            module = _import(spec)
        except (TargetError, SettingError, KeyboardInterrupt):
            raise  # a Ctrl-C during a slow import stays a Ctrl-C
        except BaseException as exc:
            # SystemExit too (sys.exit() at module level): a bad TARGET is one line and
            # exit status 2 (docs/cli.md), not a silent exit with the app's own code.
            where = _innermost_frame(exc)
            raise TargetError(
                f"{spec}: importing the app raised {type(exc).__name__}: {exc}{where}"
            ) from exc
    if spec.attr == ANY_SERVER:
        # A script that called server.start() on a server it keeps in no module-level
        # name: take the one server its import built.
        created = created_during_load()
        server = created[0] if len(created) == 1 else None
    else:
        server = getattr(module, spec.attr, None)
    if not isinstance(server, expected):
        if spec.attr == ANY_SERVER:
            found = type(server).__name__ if server is not None else "nothing"
            raise TargetError(
                f"{spec}: expected a swoolish.WebSocketServer named {spec.attr!r} at module "
                f"level, found {found}"
            )
        raise TargetError(_not_a_server(spec, module, expected))
    return server


def import_warning_after() -> float:
    """IMPORT_WARNING_AFTER, or the seconds of ``SWOOLISH_IMPORT_WARNING_AFTER`` when it
    holds a number > 0: a test's knob, so anything else is ignored rather than made a
    traceback of every start."""
    try:
        seconds = float(os.environ.get(IMPORT_WARNING_ENV) or IMPORT_WARNING_AFTER)
    except ValueError:
        return IMPORT_WARNING_AFTER
    return seconds if 0 < seconds < float("inf") else IMPORT_WARNING_AFTER


@contextlib.contextmanager
def warn_if_import_hangs(spec: AppSpec) -> Iterator[None]:
    """Around the master's import of the app: one warning if it still runs after
    ``IMPORT_WARNING_AFTER`` seconds, with the line it is at. Module-level code that
    blocks (a loop, a network call) would otherwise leave ``swoolish serve`` silent
    forever; the import is left to go on, as a slow one may yet finish."""
    after = import_warning_after()
    importer = threading.get_ident()
    done = threading.Event()

    def watch() -> None:
        if not done.wait(after):
            log.warning(
                "still importing the app %s after %gs; its module-level code may be blocked%s",
                spec,
                after,
                _current_line(importer),
            )

    watcher = threading.Thread(target=watch, name="swoolish-import-watch", daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()  # gone before the master forks: no thread holds a lock then


def _current_line(thread_id: int) -> str:
    """``; now at file:line in function`` of the thread's innermost Python frame (for a
    blocked call in C, the line that called it), or nothing if it has none."""
    frame = sys._current_frames().get(thread_id)
    if frame is None:
        return ""
    code = frame.f_code
    return f"; now at {code.co_filename}:{frame.f_lineno} in {code.co_name}"


def _not_a_server(spec: AppSpec, module: Any, expected: type) -> str:
    """What is wrong with ``spec.attr``, and the module-level servers TARGET could name
    instead (``swoolish serve app.py`` looks for ``server`` when no attr is given)."""
    if hasattr(module, spec.attr):
        kind = type(getattr(module, spec.attr)).__name__
        problem = f"{spec} is of type {kind}, not a swoolish.WebSocketServer"
    else:
        problem = f"{spec.ref} has no attribute {spec.attr!r}"
    names = [name for name, value in vars(module).items() if isinstance(value, expected)]
    if not names:
        return f"{problem}; no WebSocketServer at module level"
    return f"{problem}; module-level servers found: {', '.join(names)} (use {spec.ref}:{names[0]})"


def _innermost_frame(exc: BaseException) -> str:
    """`` (at file:line)`` of the deepest frame, so a one-line error still points home."""
    tb = exc.__traceback__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb else ""


def app_directory(spec: AppSpec) -> str:
    """The app's own directory: the directory of a path TARGET, the working directory
    (which :func:`load` puts on ``sys.path``) for a module TARGET."""
    return os.path.dirname(spec.ref) if spec.kind == "path" else os.getcwd()


def _import(spec: AppSpec) -> Any:
    if spec.kind == "module":
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            return importlib.import_module(spec.ref)
        except ModuleNotFoundError as exc:
            if exc.name and spec.ref.startswith(exc.name):
                raise TargetError(
                    f"{spec}: no module named {spec.ref!r} (run from the directory that "
                    "contains it, or give path/to/file.py:attr)"
                ) from None
            raise
    directory = os.path.dirname(spec.ref)
    if directory not in sys.path:
        sys.path.insert(0, directory)
    name = "swoolish_app_" + os.path.splitext(os.path.basename(spec.ref))[0]
    module_spec = importlib.util.spec_from_file_location(name, spec.ref)
    if module_spec is None or module_spec.loader is None:
        raise TargetError(f"{spec}: cannot import {spec.ref}")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
    return module


def _directory(path: str) -> str:
    """``path`` resolved, with a trailing separator (so /app never matches /app2)."""
    return os.path.join(os.path.realpath(path), "")


def _library_dirs(roots: Sequence[str]) -> tuple[str, ...]:
    """Where libraries live: the installation's, swoolish's, the user site-packages and
    every PYTHONPATH entry, except the app's own directories (``roots``) and the
    directories above them (a PYTHONPATH entry may be the app's directory, or the
    checkout that holds it)."""
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # swoolish itself
    user_site = site.getusersitepackages()
    if isinstance(user_site, str):
        dirs.add(user_site)
    dirs.update(entry for entry in os.environ.get("PYTHONPATH", "").split(os.pathsep) if entry)
    resolved = {_directory(d) for d in dirs}
    return tuple(d for d in resolved if not any(root.startswith(d) for root in roots))


def _module_paths() -> Callable[[str], str]:
    """``os.path.realpath`` for the files of many modules, each directory resolved once.

    A booting worker resolves every module's file; ``realpath`` checks each component of
    each path (a few thousand ``lstat`` calls for a few hundred modules, most of a small
    app's boot), while those files share a few dozen directories. A file that is itself
    a symbolic link, or a path ending in ``.`` or ``..``, is resolved in full.
    """
    directories: dict[str, str] = {}

    def resolve(path: str) -> str:
        head, tail = os.path.split(path)
        if tail in ("", os.curdir, os.pardir) or os.path.islink(path):
            return os.path.realpath(path)
        real_head = directories.get(head)
        if real_head is None:
            real_head = directories[head] = os.path.realpath(head)
        return os.path.join(real_head, tail)

    return resolve


def purge_user_modules(app_dir: str, watched: Sequence[str] = ()) -> int:
    """Forget the app's own modules: those loaded from the app's directory ``app_dir``
    (:func:`app_directory` of its TARGET) or from a directory ``--reload`` watches
    (``watched``, the ``reload_dirs``).

    Run in a freshly forked worker before :func:`load`, so the app and its own modules
    are imported from disk again. A watched directory counts as the app's own: a save
    there starts a reload, which must run the saved code (docs/quickstart.md,
    "Developing with --reload"), not the copy the master imported at start. Libraries
    stay, including those under these directories (a virtualenv inside one, a
    PYTHONPATH entry below one): re-importing a library as app code would give the
    worker a second copy of its classes and state.
    """
    roots = tuple(_directory(d) for d in (app_dir, *watched))
    library = _library_dirs(roots)
    real_path = _module_paths()
    purged = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name == "__main__" or not path:
            continue
        real = real_path(path)
        if real.startswith(roots) and not real.startswith(library):
            del sys.modules[name]
            purged += 1
    importlib.invalidate_caches()
    return purged
