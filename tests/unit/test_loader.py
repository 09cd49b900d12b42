"""purge_user_modules forgets the app's own modules and nothing else."""

from __future__ import annotations

import importlib
import site
import sys

import pytest

from swoolish import loader


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """An app directory, a user site-packages, a PYTHONPATH library outside the app and
    one inside it, each with one module, all imported."""
    dirs = {
        "app": tmp_path / "app",
        "user_site": tmp_path / "user-site",
        "pythonpath": tmp_path / "lib",
        "vendored": tmp_path / "app" / "vendor",
    }
    names = {}
    for kind, directory in dirs.items():
        directory.mkdir(parents=True)
        name = f"swoolish_purge_{kind}"
        (directory / f"{name}.py").write_text(f"KIND = {kind!r}\n")
        names[kind] = name
        monkeypatch.syspath_prepend(str(directory))
    monkeypatch.setattr(site, "getusersitepackages", lambda: str(dirs["user_site"]))
    monkeypatch.setenv("PYTHONPATH", f"{dirs['pythonpath']}:{dirs['vendored']}")
    importlib.invalidate_caches()
    for name in names.values():
        importlib.import_module(name)
    yield dirs, names
    for name in names.values():
        sys.modules.pop(name, None)


def test_only_modules_of_the_apps_directory_are_purged(tree):
    dirs, names = tree
    loader.purge_user_modules(str(dirs["app"]))
    assert names["app"] not in sys.modules
    for kind in ("user_site", "pythonpath", "vendored"):
        assert names[kind] in sys.modules, f"the {kind} library was purged as app code"
    assert "swoolish.loader" in sys.modules and "pytest" in sys.modules


def test_a_pythonpath_entry_that_is_the_apps_directory_is_still_app_code(tree, monkeypatch):
    dirs, names = tree
    monkeypatch.setenv("PYTHONPATH", str(dirs["app"]))
    loader.purge_user_modules(str(dirs["app"]))
    assert names["app"] not in sys.modules
    assert names["vendored"] not in sys.modules  # below the app, no longer a library
    assert names["user_site"] in sys.modules


def test_a_watched_directory_is_the_apps_own_but_not_the_libraries_in_it(tree, tmp_path):
    """--reload-dir: modules of a watched directory are purged like the app's (a save
    there must be what the new worker runs), libraries below it stay."""
    dirs, names = tree
    loader.purge_user_modules(str(tmp_path / "elsewhere"), [str(dirs["pythonpath"])])
    assert names["pythonpath"] not in sys.modules  # a PYTHONPATH entry, watched
    assert names["app"] in sys.modules  # neither the app directory nor watched
    loader.purge_user_modules(str(tmp_path / "elsewhere"), [str(dirs["app"])])
    assert names["app"] not in sys.modules
    assert names["vendored"] in sys.modules  # a PYTHONPATH entry below the watched one


def test_the_apps_directory_of_each_kind_of_target(tmp_path, monkeypatch):
    script = tmp_path / "app.py"
    script.write_text("")
    assert loader.app_directory(loader.parse_target(f"{script}:server")) == str(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert loader.app_directory(loader.parse_target("some.module:server")) == str(tmp_path)


@pytest.mark.parametrize("value", ["abc", "nan", "inf", "-1", "0"])
def test_a_bad_import_warning_knob_keeps_the_default(monkeypatch, value):
    """SWOOLISH_IMPORT_WARNING_AFTER (a test's knob) that is not seconds > 0 is ignored:
    before, ``abc`` made every start a ValueError traceback."""
    monkeypatch.setenv(loader.IMPORT_WARNING_ENV, value)
    assert loader.import_warning_after() == loader.IMPORT_WARNING_AFTER


def test_the_import_warning_knob_shortens_the_wait(monkeypatch):
    monkeypatch.setenv(loader.IMPORT_WARNING_ENV, "0.2")
    assert loader.import_warning_after() == 0.2
