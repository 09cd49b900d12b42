"""The demo page in a real browser: headless Chromium (Debian's) driven by Selenium.

Serves ``examples/ticker.py`` with two workers, opens its page, reloads the server with
``swoolish reload --wait`` and checks that the page shows the new generation: on the
same connection with the live hand-off (the default), or after a 1012 close and an
automatic reconnect with ``reload_handoff=False``. Screenshots go to
``test-artifacts/`` at the repository root.

Skipped, with the reason, when Selenium, ``chromium`` or ``chromedriver`` is missing
(on Debian: ``apt-get install chromium chromium-driver``; ``.ci/run`` installs them).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from support import ROOT, ServerProcess, serving, timeout, wait_until

ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=1000,760",
)


def _missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"{path} not found (Debian: apt-get install {package})"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    # Every process chromedriver started, by pid, so none outlives the test.
    known = _tree(service.process.pid)
    try:
        driver.set_page_load_timeout(timeout(20))
        yield driver
    finally:
        known |= _tree(service.process.pid)
        with contextlib.suppress(Exception):
            driver.quit()
        for pid in known:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    os.kill(pid, signal.SIGKILL)


def _tree(pid: int) -> set[int]:
    try:
        root = psutil.Process(pid)
        return {pid, *(child.pid for child in root.children(recursive=True))}
    except psutil.NoSuchProcess:
        return set()


def _text(driver, element_id: str) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, element_id).text


def _reload(pid_file: Path) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "swoolish", "reload", "--pid-file", str(pid_file), "--wait"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )


def _open_demo(driver, server: ServerProcess) -> tuple[str, str]:
    """Open the page; wait for ticks from generation 1. Returns (pid, session) shown."""
    driver.get(f"http://127.0.0.1:{server.port}/")
    assert driver.title == "swoolish ticker"
    wait_until(
        lambda: _text(driver, "generation") == "1" and _text(driver, "seq").isdigit(),
        15,
        what="the page to show ticks from generation 1",
    )
    pid = _text(driver, "pid")
    assert int(pid) in {w.pid for w in server.workers()}
    return pid, _text(driver, "fd")


def _screenshot(driver, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    path.unlink(missing_ok=True)
    assert driver.save_screenshot(str(path))
    assert path.is_file() and path.stat().st_size > 0
    return path


def test_page_shows_the_reload_on_the_same_connection(browser, tmp_path):
    pid_file = tmp_path / "swoolish.pid"
    with serving(
        "examples/ticker.py:server", tmp_path, "--pid-file", str(pid_file), workers=2
    ) as server:
        old_pid, session = _open_demo(browser, server)
        assert "hello from worker pid" in _text(browser, "log")

        result = _reload(pid_file)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "reload complete: generation 2 serving" in result.stdout

        wait_until(
            lambda: _text(browser, "generation") == "2",
            5,
            what="the page to show generation 2",
        )
        wait_until(
            lambda: "moved to generation 2" in _text(browser, "log"),
            5,
            what="the log line about the move",
        )
        new_pid = _text(browser, "pid")
        assert new_pid != old_pid
        assert int(new_pid) in {w.pid for w in server.workers()}
        log = _text(browser, "log")
        assert f"moved to generation 2, pid {new_pid} — connection kept" in log
        assert "closed with code" not in log  # the hand-off closes nothing
        assert _text(browser, "fd") == session  # same session id, same connection
        assert _text(browser, "status") == "open"
        _screenshot(browser, "demo-after-reload.png")


def test_page_shows_the_1012_close_and_reconnects_without_handoff(browser, tmp_path):
    # The demo app, unchanged but for one setting, served from a copy.
    for name in ("ticker.py", "ticker.html"):
        shutil.copy(ROOT / "examples" / name, tmp_path / name)
    app = tmp_path / "ticker.py"
    source = app.read_text()
    marker = 'if __name__ == "__main__":'
    assert marker in source
    app.write_text(source.replace(marker, f"server.set(reload_handoff=False)\n\n\n{marker}"))

    pid_file = tmp_path / "swoolish.pid"
    with serving(f"{app}:server", tmp_path, "--pid-file", str(pid_file), workers=2) as server:
        old_pid, _ = _open_demo(browser, server)

        result = _reload(pid_file)
        assert result.returncode == 0, result.stdout + result.stderr

        wait_until(
            lambda: _text(browser, "generation") == "2" and _text(browser, "status") == "open",
            5,
            what="the page to reconnect to generation 2",
        )
        wait_until(
            lambda: "now on generation 2" in _text(browser, "log"),
            5,
            what="the log line about the new generation",
        )
        log = _text(browser, "log")
        assert "closed with code 1012 (service restart); reconnecting…" in log
        assert "reconnected" in log
        new_pid = _text(browser, "pid")
        assert new_pid != old_pid
        assert f"now on generation 2, pid {new_pid} (new connection)" in log
        _screenshot(browser, "demo-after-reload-1012.png")
