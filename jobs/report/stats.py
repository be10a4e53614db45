"""The statistics reports quote: summaries with bootstrap intervals, and paired comparisons."""

from __future__ import annotations

import numpy as np

BOOTSTRAP_RESAMPLES = 1000
# Above this many values the interval is the normal one, mean +- z * sd / sqrt(n), which the bootstrap's converges
# to: at 100,000 rows they agree to within the bootstrap's own resampling noise, and 1,000 resamples of 10M rows
# would take minutes.
BOOTSTRAP_MAX_ROWS = 100_000
_CHUNK = 50  # resamples drawn at once: bounds memory at _CHUNK x rows indices
SEED = 0  # fixed, so a report is reproducible


def bootstrap_mean_ci(values: np.ndarray, level: float = 0.95) -> list[float] | None:
    """Percentile bootstrap interval of the mean, resampling rows with replacement (the normal interval for more
    than BOOTSTRAP_MAX_ROWS values)."""
    if len(values) == 0:
        return None
    if len(values) > BOOTSTRAP_MAX_ROWS:
        return normal_mean_ci(values, level)
    rng = np.random.default_rng(SEED)
    chunks = []
    for start in range(0, BOOTSTRAP_RESAMPLES, _CHUNK):
        size = min(_CHUNK, BOOTSTRAP_RESAMPLES - start)
        picks = rng.integers(0, len(values), size=(size, len(values)))
        chunks.append(values[picks].mean(axis=1))
    means = np.concatenate(chunks)
    tail = (1 - level) / 2 * 100
    return [float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))]


def normal_mean_ci(values: np.ndarray, level: float = 0.95) -> list[float]:
    """mean +- z * sd / sqrt(n), with the sd of the values themselves (ddof 0), as the bootstrap resamples them."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    half = stats.norm.ppf(0.5 + level / 2) * values.std() / np.sqrt(len(values))
    return [float(values.mean() - half), float(values.mean() + half)]


def summarize_scores(values: np.ndarray) -> dict:
    """mean, median, std (sample), p05, p95 and a bootstrap 95% interval of the mean."""
    values = np.asarray(values, dtype=np.float64)
    if len(values) == 0:
        return {"n": 0, "mean": None, "median": None, "std": None, "p05": None, "p95": None, "ci95": None}
    return {
        "n": len(values),
        "mean": float(values.mean()),
        "median": float(np.median(values)),
        "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        "p05": float(np.percentile(values, 5)),
        "p95": float(np.percentile(values, 95)),
        "ci95": bootstrap_mean_ci(values),
    }


def paired_comparison(a: np.ndarray, b: np.ndarray) -> dict:
    """B - A over pairs: mean delta with a paired bootstrap interval, win rate, Wilcoxon and sign tests."""
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    delta = b - a
    wins, losses = int((delta > 0).sum()), int((delta < 0).sum())
    nonzero = delta[delta != 0]
    wilcoxon = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else 1.0
    sign = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else 1.0
    return {
        "pairs": len(delta),
        "mean_a": float(a.mean()) if len(a) else None,
        "mean_b": float(b.mean()) if len(b) else None,
        "mean_delta": float(delta.mean()) if len(delta) else None,
        "median_delta": float(np.median(delta)) if len(delta) else None,
        "ci95": bootstrap_mean_ci(delta),
        "win_rate": wins / len(delta) if len(delta) else None,
        "wins": wins,
        "losses": losses,
        "ties": int(len(delta) - wins - losses),
        "wilcoxon_p": wilcoxon,
        "sign_test_p": sign,
    }
