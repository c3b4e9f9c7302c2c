"""flask_diag.threads: when another thread's stack may be read.

A process forked at the C level (``fork()`` of libc, as uWSGI forks its
workers by default) skips Python's fork hooks: the parent's threads stay
listed in the child, where ``sys._current_frames()`` crashes. Each case runs
in a fresh interpreter, whose threads the test controls; the real uWSGI case
is in ``test_loopback_servers.py``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import types
import typing as t

import pytest

from flask_diag import threads

CHILD = textwrap.dedent(
    """
    import ctypes, json, os, sys, threading, time
    from flask_diag import threads

    fork_kind, parent_thread = sys.argv[1], sys.argv[2] == "thread"
    if parent_thread:
        threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
    fork = ctypes.CDLL(None).fork if fork_kind == "libc" else os.fork
    read, write = os.pipe()
    pid = fork()
    if pid == 0:
        try:
            frames = threads.current_frames()  # a crash here loses the answer
            answer = {
                "reason": threads.frames_unavailable(),
                "frames": None if frames is None else len(frames),
            }
            os.write(write, json.dumps(answer).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        data = pipe.read()
    os.waitpid(pid, 0)
    print(data.decode())
    """
)


def _child_answer(fork_kind: str, parent: str) -> dict[str, t.Any]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, fork_kind, parent],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, f"the child gave no answer (crashed?)\n{done.stderr}"
    return t.cast("dict[str, t.Any]", json.loads(lines[-1]))


def test_a_child_forked_without_hooks_from_a_threaded_parent_reads_no_stacks() -> None:
    answer = _child_answer("libc", "thread")
    assert answer["frames"] is None
    assert "forked without Python's fork hooks" in answer["reason"]
    assert "1 other thread" in answer["reason"]


def test_a_child_forked_without_hooks_from_a_lone_thread_reads_stacks() -> None:
    answer = _child_answer("libc", "alone")
    assert answer == {"reason": None, "frames": 1}


def test_a_child_forked_with_hooks_reads_stacks() -> None:
    # os.fork(): Python's hooks drop the parent's threads in the child.
    answer = _child_answer("os", "thread")
    assert answer == {"reason": None, "frames": 1}


def test_this_process_reads_stacks() -> None:
    assert threads.frames_unavailable() is None
    frames = threads.current_frames()
    assert frames is not None
    assert sys._getframe().f_code in {
        frame.f_code for frame in _outer_frames(frames.values())
    }


def _outer_frames(frames: t.Iterable[types.FrameType]) -> t.Iterator[types.FrameType]:
    for frame in frames:
        current: types.FrameType | None = frame
        while current is not None:
            yield current
            current = current.f_back


@pytest.mark.parametrize(("worker_id", "may"), [(0, False), (1, True), (3, True)])
def test_no_thread_starts_in_a_uwsgi_master(
    monkeypatch: pytest.MonkeyPatch, worker_id: int, may: bool
) -> None:
    fake = types.SimpleNamespace(worker_id=lambda: worker_id)
    monkeypatch.setitem(sys.modules, "uwsgi", fake)
    assert threads.may_start_threads() is may


def test_threads_may_start_outside_uwsgi(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "uwsgi", raising=False)
    assert threads.may_start_threads() is True
