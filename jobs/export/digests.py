"""`--dedup`'s memory: which image digests an export has already kept.

A Python set of 32-byte `bytes` costs about 109 MB per million digests (object headers and hash slots),
1.1 GB at 10 M images. Here only the most recent digests are in a set; older ones live in one sorted
numpy array of 32 bytes each (320 MB at 10 M), into which the set is merged whenever it holds `flush_at`.
Membership is exact: whole sha256 digests are compared, never prefixes.
"""

from __future__ import annotations

import numpy as np

_DIGEST = np.dtype("S32")  # every digest is exactly 32 bytes, so numpy's NUL padding never merges two


class DigestSet:
    def __init__(self, flush_at: int = 1 << 18):
        self._recent: set[bytes] = set()
        self._sorted = np.empty(0, dtype=_DIGEST)
        self._flush_at = flush_at

    def __len__(self) -> int:
        return len(self._recent) + len(self._sorted)

    def first_seen(self, digests: list[bytes]) -> list[bool]:
        """For each digest in order, whether it is new (then it is remembered): True for the first of each."""
        known = np.zeros(len(digests), dtype=bool)
        if len(self._sorted) and digests:
            batch = np.array(digests, dtype=_DIGEST)
            positions = np.minimum(np.searchsorted(self._sorted, batch), len(self._sorted) - 1)
            known = self._sorted[positions] == batch
        new = []
        for digest, old in zip(digests, known.tolist()):
            fresh = not old and digest not in self._recent
            if fresh:
                self._recent.add(digest)
            new.append(fresh)
        if len(self._recent) >= self._flush_at:
            self._merge()
        return new

    def _merge(self) -> None:
        """Move the recent digests into the sorted array: one new array, no second sorted copy."""
        recent = np.sort(np.array(list(self._recent), dtype=_DIGEST))
        self._sorted = np.insert(self._sorted, np.searchsorted(self._sorted, recent), recent)
        self._recent.clear()
