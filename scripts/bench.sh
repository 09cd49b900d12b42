#!/bin/sh
# Run the side-by-side benchmark suite (swoolish vs websockets, aiohttp, picows).
# Creates .venv on first use and installs the bench extra. Arguments go to benchmarks/run.py:
#   sh scripts/bench.sh [--quick] [--rounds N] [--only SCENARIO[,SCENARIO...]]
# Results: a table on stdout and benchmarks/results/<timestamp>.json.
set -e
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
. "$ROOT/scripts/env.sh"
"$VENV/bin/python" -m pip install -q -e "$ROOT[bench]"
cd "$ROOT"
exec "$VENV/bin/python" benchmarks/run.py "$@"
