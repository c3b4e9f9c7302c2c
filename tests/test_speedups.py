"""The compiled speedups: built from the Python sources, switched off by
``FLASK_DIAG_SPEEDUPS=off``, and a build without a C compiler installs the
pure-Python package.

``scripts/test.sh`` runs the in-process tests twice: with the compiled
modules, then once more with ``FLASK_DIAG_SPEEDUPS=off`` on their Python
sources. Both passes run this file; what it expects follows the pass.
"""

from __future__ import annotations

import ast
import os
import pathlib
import pickle
import shutil
import subprocess
import sys
import typing as t
import weakref

import pytest
from werkzeug.test import Client

import flask_diag
from flask_diag import speedups
from flask_diag.context import ENVIRON_KEY
from flask_diag.context import RequestInfo

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = pathlib.Path(flask_diag.__file__).resolve().parent
# Read at collection, before the autouse fixture clears FLASK_DIAG_*.
PURE_PASS = not speedups.enabled()

# A request through the whole stack, printing what the speedups are and the
# tagging headers: the package must work whichever modules it runs.
PROBE = """
import flask_diag, flask_diag.speedups
from flask_diag import wrap
from werkzeug.test import Client

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]

response = Client(wrap(app, environ={})).get("/")
print(",".join(flask_diag.speedups.compiled_modules()) or "-")
print(flask_diag.tagging.__file__.rsplit(".", 1)[1])
print(response.status_code, len(response.headers["X-Request-ID"]))
print(flask_diag.__file__)
"""


def run_probe(
    env: dict[str, str], *, path: pathlib.Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run :data:`PROBE` in a new interpreter, importing flask_diag from
    ``path`` when given (else the one installed for the tests)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("FLASK_DIAG")}
    if path is not None:
        base["PYTHONPATH"] = str(path)
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        env={**base, **env},
        cwd=path or ROOT.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_setup_compiles_the_listed_modules() -> None:
    tree = ast.parse((ROOT / "setup.py").read_text())
    listed = next(
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and getattr(node.targets[0], "id", None) == "COMPILED_MODULES"
    )
    assert listed == speedups.COMPILED_MODULES
    for name in listed:
        assert (PACKAGE / f"{name}.py").is_file()


def test_this_pass_runs_what_it_says() -> None:
    if PURE_PASS:
        assert speedups.compiled_modules() == ()
        assert flask_diag.tagging.__file__.endswith("tagging.py")
    else:
        # The test command builds them: a build that silently fell back to
        # Python would measure and test the wrong thing.
        assert speedups.compiled_modules() == speedups.COMPILED_MODULES, (
            "the speedups were not compiled: install a C compiler and the "
            "Python headers, then `pip install -e .` again"
        )


def test_the_switch_imports_the_python_sources() -> None:
    off = run_probe({"FLASK_DIAG_SPEEDUPS": "off"})
    assert off.returncode == 0, off.stderr
    assert off.stdout.split("\n")[:3] == ["-", "py", "200 32"]
    on = run_probe({})
    assert on.returncode == 0, on.stderr
    compiled, suffix, answer = on.stdout.split("\n")[:3]
    assert answer == "200 32"
    if not PURE_PASS:
        assert compiled == ",".join(speedups.COMPILED_MODULES)
        assert suffix == "so"


def test_an_invalid_switch_fails_at_import() -> None:
    result = run_probe({"FLASK_DIAG_SPEEDUPS": "fast"})
    assert result.returncode != 0
    assert "FLASK_DIAG_SPEEDUPS='fast' is not valid" in result.stderr
    assert "accepted values are on, off" in result.stderr


def build_wheel(
    tmp_path: pathlib.Path,
    env: dict[str, str],
    change: t.Callable[[pathlib.Path], None] | None = None,
) -> tuple[str, set[str]]:
    """Build a wheel of a copy of the project (``change`` may alter the
    copy first) and install it in ``tmp_path / "installed"``; the build log
    and the installed files."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("setup.py", "pyproject.toml", "MANIFEST.in", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(
        PACKAGE,
        source / "flask_diag",
        ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd", "*.c"),
    )
    if change is not None:
        change(source)
    out = tmp_path / "wheel"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-v", "-w", str(out), str(source)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = out.glob("*.whl")
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index"]
        + ["--disable-pip-version-check", "--target", str(tmp_path / "installed")]
        + [str(wheel)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr
    names = {
        str(path.relative_to(tmp_path / "installed"))
        for path in (tmp_path / "installed").rglob("*")
        if path.is_file()
    }
    return result.stdout + result.stderr, names


def fail_compiling_context(source: pathlib.Path) -> dict[str, str]:
    """A C compiler that fails on one module only (``context``, which the
    others use at the C level)."""
    compiler = source.parent / "cc"
    compiler.write_text(
        "#!/bin/sh\n"
        'case "$*" in *context.c*) echo "cc: refused" >&2; exit 1;; esac\n'
        f'exec {shutil.which("gcc") or "cc"} "$@"\n'
    )
    compiler.chmod(0o755)
    return {"CC": str(compiler)}


def break_a_declaration(source: pathlib.Path) -> None:
    """A ``.pxd`` that Cython refuses (as a future Cython might)."""
    pxd = source / "flask_diag" / "tagging.pxd"
    pxd.write_text(pxd.read_text() + "\ncdef int not valid\n")


@pytest.mark.parametrize(
    "case",
    ["no-compiler", "switched-off", "one-module-fails", "cython-refuses"],
)
def test_a_build_without_speedups_installs_the_python_package(
    tmp_path: pathlib.Path, case: str
) -> None:
    change = None
    if case == "no-compiler":
        # Every compile fails and is reported.
        env = {"CC": "false", "LDSHARED": "false"}
    elif case == "switched-off":
        env = {"FLASK_DIAG_SPEEDUPS": "off"}
    elif case == "one-module-fails":
        # The modules share C-level declarations: all of them or none.
        env = fail_compiling_context(tmp_path)
    else:
        env = {}
        change = break_a_declaration
    log, names = build_wheel(tmp_path, env, change)
    assert not [n for n in names if n.endswith((".so", ".pyd"))]
    for name in speedups.COMPILED_MODULES:
        assert f"flask_diag/{name}.py" in names
    assert "flask_diag/doctor/__init__.py" in names
    assert "flask_diag/py.typed" in names
    if case == "no-compiler":
        for name in speedups.COMPILED_MODULES:
            assert f"flask_diag.{name} was not compiled" in log
    if case == "one-module-fails":
        assert "flask_diag.context was not compiled" in log
        assert "flask_diag.tagging was not compiled" not in log
        assert "all speedups left out" in log
    if case == "cython-refuses":
        assert "the speedups were not translated to C" in log
    if case != "switched-off":
        assert "installing the pure-Python package" in log
    result = run_probe({}, path=tmp_path / "installed")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:4] == [
        "-",
        "py",
        "200 32",
        str(tmp_path / "installed" / "flask_diag" / "__init__.py"),
    ]


@pytest.mark.parametrize("middleware", ["RequestTagging", "ErrorEnvelope"])
def test_a_compiled_middleware_is_still_an_ordinary_object(middleware: str) -> None:
    """What a class of the Python source allows, the compiled one allows:
    attributes of the user's own, weak references, subclasses."""

    def app(environ: dict[str, object], start_response: t.Any) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    cls = getattr(flask_diag, middleware)
    instance = cls(app)
    instance.note = "mine"  # type: ignore[attr-defined]
    assert instance.note == "mine"  # type: ignore[attr-defined]
    assert weakref.ref(instance)() is instance
    subclass = type("Mine", (cls,), {"extra": True})
    assert subclass(app).extra is True
    response = Client(instance).get("/")
    assert response.status_code == 200


def test_the_request_object_is_an_ordinary_object() -> None:
    """``environ["flask_diag.request"]`` takes attributes of the app's own and
    weak references, compiled or not, and pickles the same either way."""
    seen: dict[str, object] = {}

    def app(environ: dict[str, t.Any], start_response: t.Any) -> list[bytes]:
        info = environ[ENVIRON_KEY]
        info.tenant = "acme"
        seen["tenant"] = info.tenant
        seen["ref"] = weakref.ref(info)() is info
        seen["pickled"] = pickle.loads(pickle.dumps(info))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    response = Client(flask_diag.RequestTagging(app)).get("/")
    assert response.status_code == 200
    assert seen["tenant"] == "acme"
    assert seen["ref"] is True
    copy = seen["pickled"]
    assert isinstance(copy, RequestInfo)
    assert copy.request_id == response.headers["X-Request-ID"]


def test_a_pickle_crosses_between_compiled_and_python() -> None:
    made = subprocess.run(
        [sys.executable, "-c", PICKLE_INFO],
        env={**os.environ, "FLASK_DIAG_SPEEDUPS": "off"},
        capture_output=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    info = pickle.loads(made.stdout)
    assert (info.request_id, info.path, info.started) == ("abc", "/x", 1.5)


PICKLE_INFO = """
import pickle, sys
from flask_diag.context import RequestInfo
info = RequestInfo("abc", None, 1, "MainThread", "GET", "/x", 1.5)
sys.stdout.buffer.write(pickle.dumps(info))
"""
