"""`genbatch report`: CLIP-score summary of one run, as report.json, report.md and report.html."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import UsageError
from jobs.report.render import CLIP_SCORE_DEFINITION, histogram_uri, thumbnail_uri, write_documents
from jobs.report.runs import Run, fetch_images, open_run
from jobs.report.stats import bootstrap_mean_ci, summarize_scores
from workers import columns as C
from workers import storage

DEFAULT_GROUP_COLUMN = "category"
SHOWN_ROWS = 12
MAX_FAILED_LISTED = 100


def pick_group_column(run: Run, by: str | None) -> str | None:
    """`--by`, else `category` when the run has it; a named column that is missing is an error."""
    if by is None:
        return DEFAULT_GROUP_COLUMN if DEFAULT_GROUP_COLUMN in run.table.column_names else None
    if by not in run.table.column_names:
        raise UsageError(f"{run.path}: --by {by!r}: no such column (columns: {', '.join(run.table.column_names)})")
    return by


def group_stats(table: pa.Table, scored: pa.Table, column: str) -> dict:
    """Per value of `column`: rows, and the mean, median and bootstrap interval of its scores."""
    groups = {}
    counts = pc.value_counts(table[column]).to_pylist()
    for entry in sorted(counts, key=lambda e: str(e["values"])):
        value = entry["values"]
        mask = pc.is_null(scored[column]) if value is None else pc.equal(scored[column], value)
        scores = scored.filter(pc.fill_null(mask, False))[C.CLIP_SCORE].to_numpy().astype(np.float64)
        groups[str(value)] = {
            "rows": entry["counts"],
            "scored": len(scores),
            "mean": float(scores.mean()) if len(scores) else None,
            "median": float(np.median(scores)) if len(scores) else None,
            "ci95": bootstrap_mean_ci(scores),
        }
    return groups


def run_settings(run: Run) -> dict:
    """The run's settings, with dtype and scheduler as its workers resolved them (`auto` -> `float32` on CPU).

    job.json's `workers` (recorded when the job ends) and the output's `scheduler` column hold the resolved
    values; a run without either shows the configured ones."""
    config = run.job.get("config") or {}
    generation, model = config.get("generation", {}), config.get("model", {})
    workers = run.job.get("workers") or []
    schedulers = set(pc.unique(run.table[C.SCHEDULER]).to_pylist()) | {w.get("scheduler") for w in workers}
    dtypes = {w.get("dtype") for w in workers}
    return {
        "run": str(run.path),
        "model": model.get("id"),
        "scheduler": ", ".join(sorted(schedulers - {None})) or model.get("scheduler"),
        "dtype": ", ".join(sorted(dtypes - {None})) or model.get("dtype"),
        "steps": generation.get("steps"),
        "guidance_scale": generation.get("guidance_scale"),
        "size": f"{generation.get('width')}x{generation.get('height')}",
        "clip_model": run.clip_model,
        "seed": config.get("seed"),
        "images_per_s": run.job.get("images_per_s"),
        "seconds": run.job.get("seconds"),
        "status": run.job.get("status"),
    }


def build_report(
    run_dir: str | Path, by: str | None = None, shown: int = SHOWN_ROWS, reference: str | None = None, **set_options
) -> tuple[dict, dict]:
    """The report's figures (report.json) and what only the HTML needs (thumbnails, histogram).

    With a `reference` (see `set_metrics.compute_set_metrics`, which takes `set_options`), `set_metrics` too."""
    run = open_run(run_dir)
    column = pick_group_column(run, by)
    table, scored = run.table, run.scored()
    scores = scored[C.CLIP_SCORE].to_numpy().astype(np.float64)
    ok = pc.sum(pc.equal(table[C.STATUS], C.STATUS_OK)).as_py() or 0
    failed_rows = table.filter(pc.equal(table[C.STATUS], C.STATUS_ERROR))
    data = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": table.num_rows,
        "ok": ok,
        "failed": failed_rows.num_rows,
        "clip_score": summarize_scores(scores),
        "clip_score_definition": CLIP_SCORE_DEFINITION,
        "group_by": column,
        "groups": {column: group_stats(table, scored, column)} if column else {},
        "settings": run_settings(run),
        "failed_rows": [
            {"id": r[C.ID], "prompt": r.get(C.PROMPT), "error": r[C.ERROR]}
            for r in failed_rows.select(_present(failed_rows, C.ID, C.PROMPT, C.ERROR))
            .slice(0, MAX_FAILED_LISTED)
            .to_pylist()
        ],
    }
    if C.RECON_MSE in table.column_names:
        data["reconstruction"] = reconstruction_stats(table)
    if reference is not None:
        from jobs.report.set_metrics import compute_set_metrics

        data["set_metrics"] = compute_set_metrics(run.path, reference, **set_options)
    shown = min(shown, max(1, len(scores) // 2))  # small runs: best and worst do not overlap
    order = np.argsort(scores, kind="stable")
    best = scored.take(order[::-1][:shown]) if len(order) else scored
    worst = scored.take(order[:shown]) if len(order) else scored
    images = fetch_images(run, best[C.ID].to_pylist() + worst[C.ID].to_pylist())
    visuals = {
        "histogram": histogram_uri(scores),
        "best": _tiles(best, images),
        "worst": _tiles(worst, images),
    }
    return data, visuals


def reconstruction_stats(table: pa.Table) -> dict:
    """`mode: reconstruct` runs: how much the VAE round trip lost, over the rows that have a reconstruction."""
    done = table.filter(pc.is_valid(table[C.RECON_MSE]))
    psnr = done[C.RECON_PSNR].to_numpy().astype(np.float64)
    return {
        "mse": summarize_scores(done[C.RECON_MSE].to_numpy().astype(np.float64)),
        "psnr_db": summarize_scores(psnr[np.isfinite(psnr)]),
        "exact": int((~np.isfinite(psnr)).sum()),  # round trips with MSE 0 (infinite PSNR)
        "latent_mean": summarize_scores(done[C.LATENT_MEAN].to_numpy().astype(np.float64)),
        "latent_std": summarize_scores(done[C.LATENT_STD].to_numpy().astype(np.float64)),
    }


def _present(table: pa.Table, *names: str) -> list[str]:
    return [name for name in names if name in table.column_names]


def write_report(
    run_dir: str | Path, out_dir: str | Path | None = None, by: str | None = None, **set_metric_options
) -> str:
    """Write report.json/.md/.html into `out_dir` (default RUN/report; a local folder or an object-store prefix).

    `reference`, `fid_weights`, `cmmd_model`: set-level metrics against a reference set (`set_metrics`)."""
    data, visuals = build_report(run_dir, by, **set_metric_options)
    out = str(out_dir) if out_dir else storage.join(str(run_dir), "report")
    return write_documents(out, "report", data, visuals, "r")


def _tiles(rows: pa.Table, images: dict) -> list[dict]:
    return [
        {"id": r[C.ID], "prompt": r.get(C.PROMPT), "score": r[C.CLIP_SCORE], "src": thumbnail_uri(images.get(r[C.ID]))}
        for r in rows.select(_present(rows, C.ID, C.PROMPT, C.CLIP_SCORE)).to_pylist()
    ]
