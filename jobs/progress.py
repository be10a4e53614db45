"""The terminal progress bar: images done / total, images/s, ETA, failed rows, live workers."""

from __future__ import annotations

from tqdm import tqdm


class Progress:
    def __init__(self, total: int, enabled: bool = True):
        self.failed = 0
        self.ready, self.total_workers = 0, 0
        self.bar = tqdm(total=total, unit="img", desc="generating", disable=not enabled, dynamic_ncols=True)

    def advance(self, rows: int, failed: int) -> None:
        self.failed += failed
        self.bar.update(rows)
        self._postfix()

    def workers(self, ready: int, total: int) -> None:
        if self.ready == 0 and ready > 0 and self.bar.n == 0:
            self.bar.reset()  # rate and ETA count from the first ready worker, not from model loading
        self.ready, self.total_workers = ready, total
        self._postfix()

    def close(self) -> None:
        self.bar.close()

    def _postfix(self) -> None:
        self.bar.set_postfix(failed=self.failed, workers=f"{self.ready}/{self.total_workers}", refresh=True)
