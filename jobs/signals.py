"""SIGINT, SIGTERM and SIGHUP all stop a job the same way: an `Interrupted` raised in the main thread.

Batch schedulers stop jobs with SIGTERM (Slurm preemption, `kubectl delete`, systemd) and terminals
hang up with SIGHUP; each must end like Ctrl-C: scheduling stops, actors are stopped, only whole
shards remain, and the process exits 128 + the signal's number. Ray installs SIGTERM handlers of its
own while it starts (one exits at once, a C++ one dumps a stack); `ray_keeps_our_handlers` keeps
ours in place. Once one signal is being handled, later ones are noted and ignored, so a second
Ctrl-C during shutdown cannot cut the tidying short with a traceback.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from contextlib import contextmanager

from jobs.errors import EXIT_SIGNAL_BASE, one_line

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class Interrupted(KeyboardInterrupt):
    """The job was asked to stop by the signal `signum` (`exit_code_of` turns it into the exit code)."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The exit status of a process that a stop signal ended, as shells report it: 128 + the signal's number."""
    return EXIT_SIGNAL_BASE + signum


def signum_of(interrupt: KeyboardInterrupt) -> int:
    """The stop signal behind `interrupt`. Ray re-raises our `Interrupted` from inside `ray.get` as a plain
    KeyboardInterrupt, so a plain one is the signal the handler received, else Ctrl-C's SIGINT."""
    if isinstance(interrupt, Interrupted):
        return interrupt.signum
    return _handler.received or signal.SIGINT


def exit_code_of(interrupt: KeyboardInterrupt) -> int:
    return exit_code(signum_of(interrupt))


def signal_name_of(interrupt: KeyboardInterrupt) -> str:
    """SIGINT, SIGTERM or SIGHUP."""
    return signal.Signals(signum_of(interrupt)).name


class _Handler:
    def __init__(self) -> None:
        self.stopping = False
        self.received: int | None = None  # the first stop signal, kept in case a library swallows the raise
        self.arrivals: int | None = None  # read end of the wakeup pipe: signal numbers in arrival order
        self.wakeup: int = -1  # its write end, Python's wakeup fd while installed
        self.handled_early: int | None = None  # the first signal, when a later one's handler ran first

    def __call__(self, signum: int, frame) -> None:
        if self.stopping:
            if signum == self.handled_early:
                self.handled_early = None
                return
            logger.warning("%s received while stopping; still stopping", signal.Signals(signum).name)
            return
        first = self._first_arrived() or signum
        self.stopping = True
        self.received = first
        if first != signum:
            self.handled_early = first
            logger.warning("%s received while stopping; still stopping", signal.Signals(signum).name)
        raise Interrupted(first)

    def _first_arrived(self) -> int | None:
        """Python runs the handlers of signals that arrived together in signal-number order (SIGINT before
        SIGTERM), not in arrival order; the wakeup pipe has them as they came."""
        return next((signum for signum in self.drain() if signum in STOP_SIGNALS), None)

    def drain(self) -> bytes:
        arrived = b""
        while self.arrivals is not None:
            try:
                chunk = os.read(self.arrivals, 512)
            except BlockingIOError:
                break
            if not chunk:
                break
            arrived += chunk
        return arrived


_handler = _Handler()


def install() -> None:
    """Route the stop signals to `Interrupted`. A signal the process started with ignored stays ignored
    (`nohup`, a script's background job), as Unix programs do. Main thread only, as Python requires."""
    _handler.stopping, _handler.received, _handler.handled_early = False, None, None
    _route_signals()
    _note_arrivals()
    sys.unraisablehook = _unraisable


def _unraisable(unraisable) -> None:
    """An exception Python cannot raise (one in a finalizer, say) is printed raw on stderr by default.
    A stop signal's raise can land there: `received` still stops the job, so say nothing; log the rest."""
    if isinstance(unraisable.exc_value, Interrupted):
        return
    logger.warning(
        "%s: %s: %s",
        unraisable.err_msg or "exception ignored",
        type(unraisable.exc_value).__name__,
        one_line(unraisable.exc_value),
    )


def _route_signals() -> None:
    if threading.current_thread() is not threading.main_thread():
        return
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is not signal.SIG_IGN:
            signal.signal(signum, _handler)


def _note_arrivals() -> None:
    """Point Python's wakeup fd at a pipe of ours (once), so the handler can tell which signal came first."""
    if threading.current_thread() is not threading.main_thread():
        return
    if _handler.arrivals is None:
        read, write = os.pipe()
        os.set_blocking(read, False)
        os.set_blocking(write, False)
        _handler.arrivals, _handler.wakeup = read, write
    else:
        _handler.drain()  # signals of an earlier job in this process
    signal.set_wakeup_fd(_handler.wakeup, warn_on_full_buffer=False)


def stopping() -> None:
    """From now on stop signals are noted but raise nothing: the job is already shutting down."""
    _handler.stopping = True


def raise_if_received() -> None:
    """Raise `Interrupted` for a stop signal whose raise did not reach the caller (code that catches
    KeyboardInterrupt can swallow it); loops call this at safe points."""
    if _handler.received is not None:
        raise Interrupted(_handler.received)


def restore_defaults() -> None:
    """Back to Python's own handling (tests call `main()` many times in one process)."""
    if sys.unraisablehook is _unraisable:
        sys.unraisablehook = sys.__unraisablehook__
    if threading.current_thread() is not threading.main_thread():
        return
    previous = signal.set_wakeup_fd(-1)
    if previous not in (-1, _handler.wakeup):
        signal.set_wakeup_fd(previous)  # not ours: leave it as it was
    for signum in STOP_SIGNALS:
        if signal.getsignal(signum) is _handler:
            signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT else signal.SIG_DFL)


@contextmanager
def ray_keeps_our_handlers():
    """While Ray starts, keep our handlers: Ray's Python SIGTERM handlers would exit at once, and its C++
    failure handler (installed with the driver's core worker) dumps a stack and aborts on SIGTERM."""
    import ray._private.ray_constants as ray_constants
    import ray._private.utils as ray_utils

    original: Callable = ray_utils.set_sigterm_handler
    ray_utils.set_sigterm_handler = lambda handler: None
    failure_handler = ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
    try:
        yield
    finally:
        ray_utils.set_sigterm_handler = original
        ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = failure_handler
        _route_signals()  # in case Ray replaced a handler by a path not covered above
