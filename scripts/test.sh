#!/bin/sh
# Run the whole test suite; creates .venv on first use. Extra arguments go to pytest.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
cd "$ROOT"
"$VENV/bin/ruff" check swoolish tests examples benchmarks conformance
# Type check (config: [tool.mypy] in pyproject.toml); set -e makes a type error fail the run.
"$VENV/bin/mypy"
exec "$VENV/bin/python" -m pytest "$@"
