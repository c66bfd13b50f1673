#!/usr/bin/env bash
# One command on a fresh machine: install tidings into .venv, then run examples/demo.py
# (a local Kafka-compatible broker, a publisher, two replicas of app-id `orders`, one of `audit`).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
.venv/bin/python -m pip install --quiet -e '.[local]'
exec .venv/bin/python examples/demo.py "$@"
