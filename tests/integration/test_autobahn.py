"""The Autobahn|Testsuite fuzzing cases, no case FAILED (the --quick sample).

Runs ``scripts/autobahn.sh --quick``: a real ``swoolish serve`` of
``examples/autobahn_echo.py`` on a free loopback port, driven by the real wstest
(Python 2.7). The full suite (all cases, 9.* included) is ``scripts/autobahn.sh
--with-perf``; it takes minutes, so it is not part of the test run.

Skipped, with the reason, when the shared Autobahn tool or a Python 2.7 interpreter is
missing. The wstest venv is built on first use (``--install``, from PyPI).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
from support import ROOT, timeout

SCRIPT = ROOT / "scripts" / "autobahn.sh"
TOOL = ROOT.parent / "shared" / "tools" / "autobahn.sh"
VENV = Path(os.environ.get("AUTOBAHN_VENV", "/tmp/autobahn-wstest"))


def python27() -> str | None:
    """A Python 2.7 interpreter, looked up the way the tool looks it up."""
    candidates = [os.environ.get("PY27", "")]
    for root in (os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")):
        if root:
            candidates += sorted(glob.glob(f"{root}/versions/2.7*/bin/python2.7"))
    candidates += [shutil.which(name) or "" for name in ("python2.7", "python2")]
    for candidate in filter(None, candidates):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
                capture_output=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if probe.returncode == 0:
            return candidate
    return None


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
    if not TOOL.is_file():
        pytest.skip(f"the Autobahn tool is not at {TOOL}")
    if python27() is None:
        pytest.skip("no Python 2.7 interpreter (wstest is Python 2 only; set PY27)")
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
