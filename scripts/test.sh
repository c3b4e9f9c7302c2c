#!/usr/bin/env bash
# Sets up and runs the whole test suite on a fresh machine with only Python
# and the package registries: system packages the real-server tests need
# (as root, from Debian), a virtualenv of its own (.venv-test) with the
# compiled speedups built, then lint, type checks, the documentation build
# (warnings are errors), a smoke run of the benchmarks, and pytest; without
# arguments, the in-process tests once more on the Python sources. Extra
# arguments go to pytest (and skip that second pass).
#
#   bash scripts/test.sh
#   bash scripts/test.sh -k tagging -x
set -euo pipefail
cd "$(dirname "$0")/.."

python=${PYTHON:-python3}
venv=.venv-test

# Debian packages the real-server tests use. Missing ones are installed when
# we can (root); otherwise the tests that need them fail loudly, never skip.
# chromium: the debugger's browser test (Playwright drives /usr/bin/chromium).
# postgresql: the teardown checks' real database server (started on 127.0.0.1
# by the tests themselves, in a temporary data directory).
# gcc: compiles the speedups (setup.py), which the tests and benchmarks measure.
packages=(tmux netcat-openbsd chromium postgresql gcc)
missing=()
for package in "${packages[@]}"; do
    dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
    if [ "$(id -u)" = 0 ]; then
        echo "==> apt-get install ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "warning: not root, cannot install: ${missing[*]}" >&2
    fi
fi

echo "==> virtualenv $venv"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e ".[dev]"
"$venv/bin/python" -c "import flask_diag, gunicorn, waitress, django, sphinx, playwright, sqlalchemy, psycopg"
# The compiled speedups must have been built: tests and benchmarks of a build
# that fell back to Python would not be testing what a normal install runs.
"$venv/bin/python" -c "
import sys, flask_diag.speedups as s
if s.compiled_modules() != s.COMPILED_MODULES:
    sys.exit('error: the speedups were not compiled (see the pip output; a C compiler and the Python headers are needed)')
"
test -x /usr/bin/chromium || { echo "error: /usr/bin/chromium is missing (Debian package chromium)" >&2; exit 1; }

echo "==> ruff"
"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
echo "==> mypy"
"$venv/bin/mypy"
echo "==> docs"
"$venv/bin/sphinx-build" -W --keep-going -q -b html docs docs/_build/html
echo "==> benchmarks (smoke run; figures come from a full run)"
for bench in benchmarks/bench_*.py; do
    "$venv/bin/python" "$bench" --quick >/dev/null
done
echo "==> pytest"
# The servers the tests start write their files (debugger PIN files and
# records, sockets, databases) under a temporary directory of this run,
# removed at the end: nothing is left in /tmp.
# Traversable (0755): the PostgreSQL server runs as the postgres user with
# its data directory in there; what is inside keeps its own modes (0700).
TMPDIR="$(mktemp -d)"
chmod 0755 "$TMPDIR"
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
"$venv/bin/python" -m pytest "$@"
if (($# == 0)); then
    # The in-process tests of the compiled modules once more, on their Python
    # sources: what an install without a C compiler runs.
    echo "==> pytest, Python sources (FLASK_DIAG_SPEEDUPS=off)"
    FLASK_DIAG_SPEEDUPS=off "$venv/bin/python" -m pytest -q \
        tests/test_closing.py tests/test_errors.py tests/test_tagging.py \
        tests/test_tagging_sentry.py tests/test_extension.py tests/test_speedups.py
fi
