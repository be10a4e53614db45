"""The statistics of a leaderboard over N runs scored on the same ids: pure numpy/scipy, no files.

`values` is always an (N runs x n ids) array whose columns are the same ids in every run, so every
figure is paired: the bootstrap draws the same ids for every run, win rates and tests compare a run's
score with another's on the same id.
"""

from __future__ import annotations

import itertools

import numpy as np

from jobs.report.stats import BOOTSTRAP_RESAMPLES, SEED, bootstrap_mean_ci

ALPHA = 0.05  # the level the pages mark as "significant" after Holm's correction
PAIRED_TEST = (
    "two-sided Wilcoxon signed-rank test on the per-id differences (zero differences dropped), as in a two-run "
    "compare: paired by id (same prompt and seed), and valid without normally distributed differences"
)
CORRECTION = (
    "Holm's step-down correction over the pairs of runs of each score (controls the family-wise error rate "
    "whatever the dependence between tests, which share runs)"
)
INTERVAL = (
    f"95% percentile bootstrap interval of the mean: {BOOTSTRAP_RESAMPLES:,} resamples of the shared ids with "
    f"replacement, seed {SEED}, the same resampled ids for every run"
)


def mean_intervals(values: np.ndarray) -> list[list[float] | None]:
    """Each run's bootstrap interval of its mean. The resamples depend only on the seed and the number of ids,
    so every run is resampled on the same ids (a paired bootstrap)."""
    return [bootstrap_mean_ci(row) for row in values]


def win_rate_matrix(values: np.ndarray) -> np.ndarray:
    """`[i, j]`: the fraction of ids where run i scores above run j, ties counting half (so [i, j] + [j, i] = 1)."""
    above = (values[:, None, :] > values[None, :, :]).mean(axis=2)
    tied = (values[:, None, :] == values[None, :, :]).mean(axis=2)
    matrix = above + 0.5 * tied
    np.fill_diagonal(matrix, np.nan)  # a run against itself is no comparison
    return matrix


def wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value of a - b over the non-zero differences; 1.0 when all are zero."""
    from scipy import stats

    delta = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    nonzero = delta[delta != 0]
    return float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0


def holm(pvalues: list[float]) -> list[float]:
    """Holm-adjusted p-values, in the order given: the k-th smallest of m is multiplied by m - k + 1, then
    made non-decreasing in that order and capped at 1."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [0.0] * len(pvalues)
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[index]))
        adjusted[index] = running
    return adjusted


def pairwise_tests(values: np.ndarray) -> list[dict]:
    """Every pair (i < j): mean difference i - j, win rate of i over j, raw and Holm-adjusted p-values."""
    wins = win_rate_matrix(values)
    pairs = list(itertools.combinations(range(len(values)), 2))
    raw = [wilcoxon_p(values[i], values[j]) for i, j in pairs]
    return [
        {
            "a": i,
            "b": j,
            "mean_delta": float((values[i] - values[j]).mean()),
            "win_rate": float(wins[i, j]),
            "p": p,
            "p_holm": p_holm,
            "significant": p_holm < ALPHA,
        }
        for (i, j), p, p_holm in zip(pairs, raw, holm(raw))
    ]


def pareto_front(speeds: list[float | None], scores: list[float]) -> list[int]:
    """Indices of the runs no other run beats on both images/s and score (higher is better on both);
    runs without a speed are not on it."""
    known = {i: speed for i, speed in enumerate(speeds) if speed is not None}

    def dominated(i: int) -> bool:
        return any(
            known[j] >= known[i] and scores[j] >= scores[i] and (known[j] > known[i] or scores[j] > scores[i])
            for j in known
        )

    return [i for i in known if not dominated(i)]
