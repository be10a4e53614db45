"""Following a job: images done / total, images/s, ETA, failed rows, live workers.

Three modes: a terminal progress bar (`bar`), a log record every few seconds for batch systems that
collect logs (`log`, e.g. one JSON object per line with `--log-format json`), or nothing (`off`).
"""

from __future__ import annotations

import logging
import sys
import time

from tqdm import tqdm

logger = logging.getLogger("genbatch.progress")
details = logging.getLogger(__name__)  # shown with -v only

LOG_INTERVAL_SECONDS = 10.0


def announce(message: str, mode: str, **fields) -> None:
    """A start-up step, shown wherever progress is: a line above the bar, a progress log record,
    or (with --quiet) a record that only -v shows."""
    if mode == "bar":
        tqdm.write(f"genbatch: {message}", file=sys.stderr)
    elif mode == "log":
        logger.info(message, extra={"event": "startup", **fields})
    else:
        details.info(message)


class Progress:
    def __init__(self, total: int, mode: str = "bar", interval: float = LOG_INTERVAL_SECONDS):
        self.total, self.done, self.failed = total, 0, 0
        self.ready, self.total_workers = 0, 0
        self.mode, self.interval = mode, interval
        self.started = time.monotonic()  # reset when the first worker is ready: rates exclude model loading
        self._last_log = self.started
        self.bar = tqdm(total=total, unit="img", desc="loading models", disable=mode != "bar", dynamic_ncols=True)

    def advance(self, rows: int, failed: int) -> None:
        self.done += rows
        self.failed += failed
        self.bar.update(rows)
        self._postfix()
        if self.mode == "log" and time.monotonic() - self._last_log >= self.interval:
            self.log()

    def worker_ready(self, name: str, device: str, load_seconds: float) -> None:
        load_seconds = round(load_seconds, 3)  # the message is formatted from the value the record carries
        announce(
            f"{name} ready in {load_seconds:.1f} s on {device}",
            self.mode,
            event="worker_ready",
            worker=name,
            device=device,
            load_seconds=load_seconds,
        )

    def workers(self, ready: int, total: int) -> None:
        if self.ready == 0 and ready > 0 and self.done == 0:
            self.bar.reset()  # rate and ETA count from the first ready worker, not from model loading
            self.bar.set_description_str("generating", refresh=False)
            self.started = time.monotonic()
        self.ready, self.total_workers = ready, total
        self._postfix()

    def log(self) -> None:
        self._last_log = time.monotonic()
        elapsed = self._last_log - self.started
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate else None
        fields = {
            "event": "progress",
            "rows_done": self.done,
            "rows_total": self.total,
            "failed": self.failed,
            "images_per_s": round(rate, 3),
            "eta_seconds": None if eta is None else round(eta, 1),
            "workers_ready": self.ready,
            "workers": self.total_workers,
        }
        eta_text = "?" if eta is None else f"{eta:.0f}s"
        logger.info(
            "%d/%d rows, %.2f images/s, eta %s, %d failed, workers %d/%d",
            self.done,
            self.total,
            rate,
            eta_text,
            self.failed,
            self.ready,
            self.total_workers,
            extra=fields,
        )

    def close(self) -> None:
        if self.mode == "log":
            self.log()
        self.bar.close()

    def _postfix(self) -> None:
        if self.mode == "bar":
            self.bar.set_postfix(failed=self.failed, workers=f"{self.ready}/{self.total_workers}", refresh=True)
