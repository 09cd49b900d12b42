"""The Autobahn|Testsuite fuzzing cases, no case FAILED (the --quick sample).

Runs ``scripts/autobahn.sh --quick``: a real ``swoolish serve`` of
``examples/autobahn_echo.py`` on a free loopback port, driven by the real wstest
(Python 2.7). The full suite (all cases, 9.* included) is ``scripts/autobahn.sh
--with-perf``; it takes minutes, so it is not part of the test run.

Everything comes from this repository (conformance/wstest.py and its pinned
requirements) and PyPI. Skipped, with the reason, when no Python 2.7 interpreter is
found; the wstest venv is built on first use (``--install``, from PyPI).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from support import ROOT, timeout

SCRIPT = ROOT / "scripts" / "autobahn.sh"
VENV = Path(os.environ.get("AUTOBAHN_VENV", "/tmp/autobahn-wstest"))


def wstest_cannot_run() -> str | None:
    """Why wstest cannot run here (``conformance/wstest.py check``), or None if it can."""
    probe = subprocess.run(
        [sys.executable, str(ROOT / "conformance" / "wstest.py"), "check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return probe.stderr.strip() or "wstest cannot run" if probe.returncode else None


def run_script(args: list[str], seconds: float, **env: str) -> tuple[int, str]:
    """Run scripts/autobahn.sh; on timeout, TERM it so its trap stops the server by pid."""
    proc = subprocess.Popen(
        ["bash", str(SCRIPT), *args],
        cwd=ROOT,
        env=dict(os.environ, **env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # the script's trap stops its server by pid
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the session it was started in
            output, _ = proc.communicate()
        pytest.fail(f"scripts/autobahn.sh {' '.join(args)} ran over {seconds:.0f}s:\n{output}")
    return proc.returncode, output


@pytest.mark.timeout(600)
@pytest.mark.parametrize("reload_every", [None, "0.3"], ids=["steady", "reloading"])
def test_autobahn_quick_sample_has_no_failed_case(tmp_path: Path, reload_every) -> None:
    """The quick sample, on a steady server and on one reloaded every 300 ms: there the
    cases run on connections handed live from worker to worker mid-case, compression
    (12.*, 13.*) included."""
    problem = wstest_cannot_run()
    if problem:
        pytest.skip(problem)
    if not (VENV / ".autobahn-ok").is_file():
        code, output = run_script(["--install"], timeout(300))
        if code != 0:
            pytest.skip(f"could not install wstest into {VENV} (needs PyPI):\n{output[-2000:]}")

    report = tmp_path / "report"
    env = {"RELOAD_EVERY": reload_every, "WORKERS": "2"} if reload_every else {}
    code, output = run_script(["--quick", "--report-dir", str(report)], timeout(240), **env)

    summary = re.search(r"^autobahn: (\d+) cases, .*FAILED=(\d+)$", output, re.MULTILINE)
    assert summary, f"no summary line from the Autobahn run:\n{output}"
    assert int(summary.group(1)) > 0
    assert int(summary.group(2)) == 0, f"Autobahn cases FAILED (report in {report}):\n{output}"
    assert code == 0, output
    if reload_every:
        moved = re.search(
            r"^reloads during the run: (\d+); connections moved mid-case: (\d+)$",
            output,
            re.MULTILINE,
        )
        assert moved and int(moved.group(1)) > 10 and int(moved.group(2)) > 10, output
