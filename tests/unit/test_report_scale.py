"""Reports read a run a batch at a time: the figures do not depend on where batches and files end, and intervals
over more than BOOTSTRAP_MAX_ROWS scores are the normal interval, recomputed here with scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from jobs.report import runs, stats
from jobs.report.summary import build_report
from tests.helpers.runs import make_run


def test_figures_and_shown_rows_do_not_depend_on_batch_boundaries(tmp_path, monkeypatch):
    scores = [float(x) for x in np.random.default_rng(3).normal(25, 4, 150).astype(np.float32)]
    scores[40] = scores[41] = scores[90]  # ties: best and worst keep row order among equal scores
    run = make_run(tmp_path / "run", scores, failed=(5, 77, 149), shard_size=32)
    whole, whole_visuals = build_report(run)
    monkeypatch.setattr(runs, "_BATCH_ROWS", 7)  # batches that straddle row groups, and files of 32 rows
    batched, batched_visuals = build_report(run)
    whole.pop("generated_at"), batched.pop("generated_at")
    assert batched == whole and batched_visuals == whole_visuals

    assert (whole["rows"], whole["ok"], whole["failed"]) == (150, 147, 3)
    assert [r["id"] for r in whole["failed_rows"]] == ["r000005", "r000077", "r000149"]
    kept = np.array([s for i, s in enumerate(scores) if i not in (5, 77, 149)], dtype=np.float32)
    ids = [f"r{i:06d}" for i in range(150) if i not in (5, 77, 149)]
    order = np.argsort(kept, kind="stable")
    assert [t["id"] for t in whole_visuals["best"]] == [ids[i] for i in order[::-1][:12]]
    assert [t["id"] for t in whole_visuals["worst"]] == [ids[i] for i in order[:12]]
    assert all(t["src"].startswith("data:image/jpeg;base64,") for t in whole_visuals["best"])
    categories = whole["groups"]["category"]
    assert sum(g["rows"] for g in categories.values()) == 150
    assert sum(g["scored"] for g in categories.values()) == 147


def test_more_scores_than_the_bootstrap_takes_get_the_normal_interval(monkeypatch):
    values = np.random.default_rng(0).normal(26, 3, 5_000)
    monkeypatch.setattr(stats, "BOOTSTRAP_MAX_ROWS", 1_000)
    low, high = stats.bootstrap_mean_ci(values)
    sem = values.std(ddof=0) / np.sqrt(len(values))
    expected = scipy_stats.norm.interval(0.95, loc=values.mean(), scale=sem)
    assert (low, high) == pytest.approx(expected, rel=1e-12)
    # ... which the percentile bootstrap agrees with, within its own resampling noise
    monkeypatch.setattr(stats, "BOOTSTRAP_MAX_ROWS", 10_000)
    boot_low, boot_high = stats.bootstrap_mean_ci(values)
    assert abs(boot_low - low) < 0.1 * (high - low) and abs(boot_high - high) < 0.1 * (high - low)
