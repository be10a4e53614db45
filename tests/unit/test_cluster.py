"""Waiting for stopped actors' processes: an exit at any moment of the check counts as gone."""

from __future__ import annotations

import builtins
import os
import subprocess
import sys

from jobs.pool import cluster


def test_a_process_is_alive_until_it_exits_and_is_reaped():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    assert cluster._process_alive(child.pid)
    child.kill()
    child.wait()
    assert not cluster._process_alive(child.pid)
    assert cluster._process_alive(os.getpid())


def test_a_process_that_exits_between_open_and_read_is_gone(monkeypatch):
    """Linux answers ESRCH (ProcessLookupError) to a read of /proc/PID/stat whose process just exited."""

    class ExitedMeanwhile:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self):
            raise ProcessLookupError(3, "No such process")

    real_open = builtins.open
    monkeypatch.setattr(
        builtins, "open", lambda path, *a, **k: ExitedMeanwhile() if "/proc/" in str(path) else real_open(path, *a, **k)
    )
    assert not cluster._process_alive(os.getpid())
