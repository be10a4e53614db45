"""Ctrl-C is never lost: a KeyboardInterrupt swallowed on its way still stops the dispatch loop."""

from __future__ import annotations

import os
import signal

import pytest

from jobs.dispatch import Dispatcher
from jobs.sigint import sigint_flag
from workers.tasks import ShardTask


def swallowing_finalizer_gets_the_signal() -> None:
    """What a finalizer does to a KeyboardInterrupt that lands in it: prints it and goes on."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
    except KeyboardInterrupt:
        pass


def test_the_flag_survives_a_swallowed_keyboard_interrupt_and_the_handler_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with sigint_flag() as ctrl_c:
        assert not ctrl_c.is_set()
        swallowing_finalizer_gets_the_signal()
        assert ctrl_c.is_set()
    assert signal.getsignal(signal.SIGINT) is before


def test_an_ignored_sigint_stays_ignored():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with sigint_flag() as ctrl_c:
            os.kill(os.getpid(), signal.SIGINT)
            assert not ctrl_c.is_set()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_the_dispatch_loop_raises_keyboard_interrupt_once_a_stop_is_requested():
    shard = ShardTask(index=0, file="m.parquet", start=0, stop=4, first_row=0, has_id_column=False)
    progress = []
    dispatcher = Dispatcher(
        start_actor=lambda index: pytest.fail("no actor should start"),
        workers=0,
        shards=[shard],
        max_shard_retries=0,
        on_progress=lambda rows, failed: progress.append((rows, failed)),
        on_workers=lambda ready, alive: None,
    )
    with pytest.raises(KeyboardInterrupt):
        dispatcher.run(stop_requested=lambda: True)
    assert list(dispatcher.pending) == [shard] and progress == []  # nothing was failed or counted
