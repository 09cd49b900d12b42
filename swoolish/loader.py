"""Finding the app: ``module:attr``, ``path/file.py:attr``, or the script that called start().

The master loads the app once, to read its settings and to fail early (exit 2) on a bad
TARGET. Each worker loads it *again after the fork*, after dropping every user module
the master had imported, so a reload runs the code that is on disk now (the trap of
code loaded before the fork, which Swoole's and gunicorn's users fall into).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import sysconfig
from typing import Any, TypeVar

from .core.errors import SettingError, TargetError
from .core.loading import created_during_load, loading

__all__ = ["ANY_SERVER", "AppSpec", "load", "parse_target", "purge_user_modules"]

T = TypeVar("T")

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
        except (TargetError, SettingError):
            raise
        except Exception as exc:
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
        found = type(server).__name__ if server is not None else "nothing"
        raise TargetError(
            f"{spec}: expected a swoolish.WebSocketServer named {spec.attr!r} at module "
            f"level, found {found}"
        )
    return server


def _innermost_frame(exc: BaseException) -> str:
    """`` (at file:line)`` of the deepest frame, so a one-line error still points home."""
    tb = exc.__traceback__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f" (at {exc.filename}:{exc.lineno})"
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return f" (at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno})" if tb else ""


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


def _library_dirs() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    dirs = {paths[key] for key in ("stdlib", "platstdlib", "purelib", "platlib") if key in paths}
    dirs.add(os.path.dirname(os.path.abspath(__file__)))  # swoolish itself
    return tuple(os.path.join(os.path.realpath(d), "") for d in dirs)


def purge_user_modules() -> int:
    """Forget every module loaded from outside the Python installation: the app's code.

    Run in a freshly forked worker before :func:`load`, so the app and its own modules
    are imported from disk again. Library modules (stdlib, site-packages, swoolish) stay.
    """
    library = _library_dirs()
    purged = 0
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name == "__main__" or not path:
            continue
        if not os.path.realpath(path).startswith(library):
            del sys.modules[name]
            purged += 1
    importlib.invalidate_caches()
    return purged
