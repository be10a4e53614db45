"""Stop signals that arrive together: the first one decides the exit, whatever Python's handling order.

Python runs pending signal handlers in signal-number order (SIGHUP, SIGINT, then SIGTERM), so a
SIGTERM followed 50 ms later by a Ctrl-C, both landing while the main thread is busy in C code (as in
`ray.wait`), used to end the job as if Ctrl-C had come first.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

CHILD = textwrap.dedent(
    """
    import hashlib, sys, time
    from jobs import signals

    signals.install()
    try:
        print("busy", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"p", b"s", 8_000_000)  # seconds in one C call: handlers wait for it
        time.sleep(30)
    except KeyboardInterrupt as stop:
        signals.stopping()
        print(signals.signal_name_of(stop), flush=True)
        sys.stdin.read()  # until the test has sent every signal, however late a busy machine lets it
        sys.exit(signals.exit_code_of(stop))
    """
)


@pytest.mark.slow  # a Python process of its own, signalled three times
def test_the_first_of_signals_arriving_together_decides(sigint_as_in_a_terminal):
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert child.stdout.readline() == "busy\n"
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        # Apart in time, as a scheduler's SIGTERM and a user's Ctrl-C are: signals pending together
        # are delivered by the kernel itself in number order, and no program can tell their order.
        child.send_signal(sig)
        time.sleep(0.1)
    stdout, stderr = child.communicate(timeout=60)  # closes the child's stdin: it may exit now
    assert (child.returncode, stdout) == (143, "SIGTERM\n"), stderr
    # The later two are noted, each once, and nothing else is said.
    assert sorted(stderr.splitlines()) == [
        "SIGHUP received while stopping; still stopping",
        "SIGINT received while stopping; still stopping",
    ]


def test_a_sigterm_that_a_library_re_raised_as_a_plain_keyboardinterrupt_still_exits_143():
    """Ray turns our `Interrupted` into a plain KeyboardInterrupt when it lands inside `ray.get`."""
    from jobs import signals

    signals.install()
    try:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)  # the handler raises here
        except KeyboardInterrupt:
            pass
        plain = KeyboardInterrupt()  # what the caller catches instead of the handler's Interrupted
        assert (signals.signal_name_of(plain), signals.exit_code_of(plain)) == ("SIGTERM", 143)
    finally:
        signals.restore_defaults()
    signals.install()  # a fresh job: a plain KeyboardInterrupt is Ctrl-C again
    try:
        ctrl_c = KeyboardInterrupt()
        assert (signals.signal_name_of(ctrl_c), signals.exit_code_of(ctrl_c)) == ("SIGINT", 130)
    finally:
        signals.restore_defaults()
