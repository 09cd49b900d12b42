"""Run the Autobahn|Testsuite fuzzing client (``wstest``) against a WebSocket server.

Everything needed comes from this repository and PyPI: ``install`` builds a Python 2.7
virtualenv (wstest is Python 2 code) with the exact packages pinned in
``conformance/requirements-py27.txt``; ``run`` writes the fuzzing spec, runs every
selected case against a loopback URL and prints a summary that scripts and tests parse::

    autobahn: 517 cases, OK=... NON-STRICT=... INFORMATIONAL=... UNIMPLEMENTED=... FAILED=0
    failed: none

Exit status: 0 no case FAILED; 1 a case FAILED or has no result; 2 set-up error (no
Python 2.7, no venv, no report). ``scripts/autobahn.sh`` starts a swoolish server and
calls this; see docs/performance.md ("Conformance") for what the run needs.

Environment: ``AUTOBAHN_VENV`` (default ``/tmp/autobahn-wstest``), ``PY27`` (a Python
2.7 interpreter; default: pyenv's 2.7.x, then ``python2.7``/``python2`` on PATH).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements-py27.txt"
SUITE_VERSION = "25.10.1"
# The last virtualenv release that still creates Python 2.7 environments.
VIRTUALENV = "virtualenv==20.21.1"
VENV = Path(os.environ.get("AUTOBAHN_VENV", "/tmp/autobahn-wstest"))
STAMP = VENV / ".autobahn-ok"
BEHAVIOURS = ("OK", "NON-STRICT", "INFORMATIONAL", "UNIMPLEMENTED", "FAILED")
# The quick sample: every framing, fragmentation, UTF-8 and close case, plus the first
# three cases of each permessage-deflate group (12.x, 13.x).
QUICK = ["1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "10.*"] + [
    f"{group}.{sub}.{case}"
    for group, subs in ((12, range(1, 6)), (13, range(1, 8)))
    for sub in subs
    for case in (1, 2, 3)
]


class SetupError(Exception):
    """The run cannot happen here; the message says what is missing (exit 2)."""


def find_python27() -> str:
    """A Python 2.7 interpreter: ``$PY27``, pyenv's 2.7.x, then python2.7/python2."""
    candidates = [os.environ.get("PY27", "")]
    for root in (os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")):
        if root:
            candidates += sorted(glob.glob(f"{root}/versions/2.7*/bin/python2.7"))
    candidates += [shutil.which(name) or "" for name in ("python2.7", "python2")]
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; assert sys.version_info[:2] == (2, 7)"],
            capture_output=True,
            check=False,
        )
        if probe.returncode == 0:
            return candidate
    raise SetupError(
        "no Python 2.7 interpreter (wstest is Python 2 only): install one "
        "(e.g. `pyenv install 2.7.18`) or set PY27=/path/to/python2.7"
    )


def installed() -> bool:
    return STAMP.is_file() and (VENV / "bin" / "wstest").is_file()


def install() -> None:
    """Build the wstest virtualenv once, from PyPI, with the pinned packages."""
    if installed():
        print(f"wstest: already installed in {VENV}")
        return
    python27 = find_python27()
    if VENV.exists():
        if not (VENV / "pyvenv.cfg").is_file():
            raise SetupError(f"{VENV} exists and is no virtualenv; remove it or set AUTOBAHN_VENV")
        shutil.rmtree(VENV)  # a half-built one of ours
    helper = Path(f"{VENV}.tool")
    if not (helper / "bin" / "virtualenv").is_file():
        _run([sys.executable, "-m", "venv", str(helper)])
        _run([str(helper / "bin" / "pip"), "install", "-q", VIRTUALENV])
    _run([str(helper / "bin" / "virtualenv"), "-q", "-p", python27, str(VENV)])
    _run(
        [
            str(VENV / "bin" / "pip"),
            "install",
            "-q",
            "--no-warn-script-location",
            "-r",
            str(REQUIREMENTS),
        ],
        env=dict(os.environ, PYTHONWARNINGS="ignore"),
    )
    version = _run([str(VENV / "bin" / "wstest"), "--autobahnversion"], capture=True)
    if f"AutobahnTestSuite {SUITE_VERSION}" not in version:
        raise SetupError(f"installed wstest reports {version.strip()!r}, not {SUITE_VERSION}")
    STAMP.touch()
    print(f"wstest: installed AutobahnTestSuite {SUITE_VERSION} in {VENV}")


def _run(argv: list[str], env: dict[str, str] | None = None, capture: bool = False) -> str:
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        tail = (result.stdout + result.stderr)[-1500:]
        raise SetupError(f"`{' '.join(argv[:3])} ...` failed (status {result.returncode}):\n{tail}")
    return result.stdout + result.stderr if capture else ""


def spec(url: str, cases: list[str], exclude: list[str], outdir: Path) -> dict[str, object]:
    """The fuzzingclient spec. 9.* (limits and performance) runs only when asked for."""
    return {
        "options": {"failByDrop": False},
        "outdir": str(outdir),
        "servers": [{"agent": "swoolish", "url": url}],
        "cases": cases,
        "exclude-cases": exclude,
        "exclude-agent-cases": {},
    }


def summarize(results: dict[str, dict[str, str]], expected: int) -> tuple[list[str], bool]:
    """The summary lines, and whether the run is bad (a FAILED case or a missing one)."""
    counts = dict.fromkeys(BEHAVIOURS, 0)
    failed = []
    order = sorted(results, key=lambda case: tuple(int(n) for n in case.split(".")))
    for case in order:
        behaviour = results[case].get("behavior", "")
        if behaviour in counts and behaviour != "FAILED":
            counts[behaviour] += 1
        else:
            counts["FAILED"] += 1
            failed.append(case if behaviour == "FAILED" else f"{case}({behaviour})")
    lines = [
        f"autobahn: {len(results)} cases, "
        + " ".join(f"{name}={count}" for name, count in counts.items()),
        "failed: " + (" ".join(failed) or "none"),
    ]
    missing = expected - len(results)
    if missing > 0:
        lines.append(f"missing: {missing} of {expected} selected cases have no result")
    return lines, bool(failed) or missing > 0


def run(args: argparse.Namespace) -> int:
    if not installed():
        raise SetupError(f"wstest is not installed in {VENV}: run `{sys.argv[0]} install` first")
    host = urllib.parse.urlsplit(args.url).hostname or ""
    if not (host.startswith("127.") or host in ("localhost", "::1")):
        raise SetupError(f"refusing a non-loopback host {host!r}")
    cases = QUICK if args.quick else _split(args.cases) or ["*"]
    exclude = _split(args.exclude)
    if not args.with_perf and not any(case.startswith("9.") for case in cases):
        exclude.append("9.*")
    with tempfile.TemporaryDirectory(prefix="autobahn-run.") as work:
        outdir = Path(work) / "reports"
        spec_file = Path(work) / "spec.json"
        spec_file.write_text(json.dumps(spec(args.url, cases, exclude, outdir), indent=2))
        started = time.monotonic()
        try:
            output = subprocess.run(
                [str(VENV / "bin" / "wstest"), "-m", "fuzzingclient", "-s", str(spec_file)],
                cwd=work,
                env=dict(os.environ, PYTHONWARNINGS="ignore"),
                capture_output=True,
                text=True,
                timeout=args.timeout,
                check=False,
            ).stdout
        except subprocess.TimeoutExpired as exc:
            raise SetupError(f"wstest ran over {args.timeout:g}s") from exc
        index = outdir / "index.json"
        if not index.is_file():
            raise SetupError(f"wstest wrote no report; its output ends:\n{output[-1500:]}")
        if args.report_dir:
            shutil.copytree(outdir, args.report_dir, dirs_exist_ok=True)
        results: dict[str, dict[str, str]] = {}
        for agent_cases in json.loads(index.read_text()).values():
            results.update(agent_cases)
        selected = re.search(r"will run (\d+) test cases", output)
        lines, bad = summarize(results, int(selected.group(1)) if selected else len(results))
    print("\n".join(lines))
    print(f"time: {time.monotonic() - started:.0f}s")
    return 1 if bad else 0


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wstest.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("install", help="build the wstest virtualenv (needs Python 2.7, PyPI)")
    commands.add_parser("check", help="exit 0 if wstest can run here, else say why (exit 2)")
    runner = commands.add_parser("run", help="run the fuzzing cases against URL")
    runner.add_argument("url", help="ws://127.0.0.1:PORT")
    runner.add_argument("--quick", action="store_true", help="the quick sample (283 cases)")
    runner.add_argument("--cases", default="", help="case patterns, comma-separated")
    runner.add_argument("--exclude", default="", help="case patterns to skip")
    runner.add_argument("--with-perf", action="store_true", help="also the 9.* cases")
    runner.add_argument("--report-dir", help="keep the HTML/JSON report there")
    runner.add_argument("--timeout", type=float, default=3600.0, help="seconds (default 3600)")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            install()
            return 0
        if args.command == "check":
            find_python27()
            return 0
        return run(args)
    except SetupError as exc:
        print(f"wstest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
