"""Ctrl-C that cannot be lost: the usual KeyboardInterrupt, plus a flag the dispatch loop checks.

A KeyboardInterrupt raised while the main thread runs a finalizer or a library callback can be
swallowed ("Exception ignored in ..."); the flag survives that, and the dispatch loop, which wakes at
least once a second, turns it back into a KeyboardInterrupt.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator


@contextlib.contextmanager
def sigint_flag() -> Iterator[threading.Event]:
    """An Event set on SIGINT while the block runs; the previous handler is restored after it."""
    flag = threading.Event()
    previous = signal.getsignal(signal.SIGINT)
    # Signal handlers can only be set from the main thread; an ignored SIGINT stays ignored.
    if threading.current_thread() is not threading.main_thread() or previous is signal.SIG_IGN:
        yield flag
        return

    def on_sigint(signum, frame):
        flag.set()
        signal.default_int_handler(signum, frame)

    signal.signal(signal.SIGINT, on_sigint)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
