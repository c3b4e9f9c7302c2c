#!/usr/bin/env bash
# Sets up and runs the flask_diag demo on a fresh machine with only Python
# and the package registries: a virtualenv of its own (.venv-demo), then the
# example apps on real gunicorn servers on 127.0.0.1, each diagnosis shown.
# Arguments pick scenarios (see: python examples/demo.py --help).
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv-demo

echo "==> virtualenv $venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[demo]"
# The demo's servers write their files (the debugger's PIN file, its
# record) under a temporary directory of this run, removed at the end.
TMPDIR="$(mktemp -d)"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
"$venv/bin/python" examples/demo.py "$@"
