"""`genbatch report`: CLIP-score summary of one run, as report.json, report.md and report.html."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import UsageError
from jobs.report.documents import check_destination
from jobs.report.render import CLIP_SCORE_DEFINITION, histogram_uri, thumbnail_uri, write_documents
from jobs.report.runs import Run, RunFiles, fetch_rows, locate_run, scan
from jobs.report.stats import bootstrap_mean_ci, summarize_scores
from workers.io import columns as C
from workers.io import storage

DEFAULT_GROUP_COLUMN = "category"
SHOWN_ROWS = 12
MAX_FAILED_LISTED = 100
REPORT_FILES = ("report.json", "report.md", "report.html")


def pick_group_column(run: RunFiles, by: str | None) -> str | None:
    """`--by`, else `category` when the run has it; a named column that is missing is an error."""
    if by is None:
        return DEFAULT_GROUP_COLUMN if DEFAULT_GROUP_COLUMN in run.columns else None
    groupable = [name for name in run.columns if name not in C.IMAGE_COLUMNS]
    if by not in groupable:
        raise UsageError(f"{run.path}: --by {by!r}: no such column (columns: {', '.join(groupable)})")
    return by


def run_settings(run: RunFiles, schedulers: set | None = None) -> dict:
    """The run's settings, with dtype and scheduler as its workers resolved them (`auto` -> `float32` on CPU).

    job.json's `workers` (recorded when the job ends) and the output's `scheduler` column (its distinct values:
    `schedulers`, else read from a `Run`'s table) hold the resolved values; a run without either shows the
    configured ones."""
    config = run.job.config or {}
    generation, model = config.get("generation", {}), config.get("model", {})
    workers = run.job.workers or []
    if schedulers is None:
        assert isinstance(run, Run)
        schedulers = set(pc.unique(run.table[C.SCHEDULER]).to_pylist())
    schedulers = set(schedulers) | {w.scheduler for w in workers}
    dtypes = {w.dtype for w in workers if w.dtype is not None}
    settings = {
        "run": str(run.path),
        "model": model.get("id"),
        "scheduler": ", ".join(sorted(schedulers - {None})) or model.get("scheduler"),
        "dtype": ", ".join(sorted(dtypes)) or model.get("dtype"),
        "steps": generation.get("steps"),
        "guidance_scale": generation.get("guidance_scale"),
        "size": f"{generation.get('width')}x{generation.get('height')}",
        "clip_model": run.clip_model,
        "seed": config.get("seed"),
        "images_per_s": run.job.images_per_s,
        "seconds": run.job.seconds,
        "status": run.job.status,
    }
    return settings | lora_settings(run.job.identity.get("model") or {})


def lora_settings(model: dict) -> dict:
    """A run's LoRAs as its identity records them (jobs.config.adapters): `file x weight (sha256 prefix)` each; nothing
    for a run without any, so its settings read as before."""

    def listed(loras: list[dict]) -> str:
        return ", ".join(
            f"{lora.get('weight_name') or os.path.basename(lora['path'])} x{lora['weight']} ({lora['sha256'][:12]})"
            for lora in loras
        )

    settings = {}
    if model.get("loras"):
        settings["loras"] = listed(model["loras"])
    if model.get("adapters"):
        settings["adapters"] = "; ".join(f"{name}: {listed(loras)}" for name, loras in model["adapters"].items())
    return settings


def build_report(
    run_dir: str | Path,
    by: str | None = None,
    shown: int = SHOWN_ROWS,
    reference: str | None = None,
    partial: bool = False,
    **set_options,
) -> tuple[dict, dict]:
    """The report's figures (report.json) and what only the HTML needs (thumbnails, histogram).

    One pass over the few columns the figures need, a batch at a time (`RunTally`), then the rows shown
    (failed rows, best and worst images) fetched by position: memory stays flat whatever the run's size.
    With a `reference` (see `set_metrics.compute_set_metrics`, which takes `set_options`), `set_metrics` too.
    `partial`: go on without the shards that are not whole or not the job's (see
    `jobs.runfolder.shard_files.job_shard_files`)."""
    # 1. Tally the run.
    run = locate_run(run_dir, partial)
    column = pick_group_column(run, by)
    tally = _tally(run, column)
    # 2. The figures.
    data = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "rows": tally.rows,
        "ok": tally.ok,
        "failed": tally.failed,
        "clip_score": summarize_scores(tally.scores),
        "clip_score_definition": CLIP_SCORE_DEFINITION,
        "group_by": column,
        "groups": {column: tally.group_stats()} if column else {},
        "settings": run_settings(run, tally.schedulers),
        "failed_rows": [],
        "shards_left_out": run.left_out,  # --partial: their rows are not in these figures
    }
    if tally.extra_scores:
        data["scores"] = tally.extra_score_stats()
    if tally.reconstruct:
        data["reconstruction"] = tally.reconstruction_stats()
    if tally.step_cache:
        performance = (run.job.config or {}).get("performance") or {}
        data["step_cache"] = {"cache": performance.get("cache"), **tally.step_cache_stats()}
    if reference is not None:
        from jobs.report.set_metrics import compute_set_metrics

        data["set_metrics"] = compute_set_metrics(run.path, reference, **set_options)
    # 3. The rows shown: failed rows, best and worst images.
    data["failed_rows"], visuals = _shown_rows(run, tally, shown)
    return data, visuals


def _tally(run: RunFiles, column: str | None) -> RunTally:
    """One pass over the few columns the figures need, a batch at a time."""
    tally = RunTally(
        column,
        reconstruct=C.RECON_MSE in run.columns,
        extra_scores=[name for name in C.SCORES if name in run.columns],
        step_cache=C.CACHE_SKIPPED_STEPS in run.columns,
    )
    for batch in scan(run, tally.columns):
        tally.add(batch)
    tally.finish()
    return tally


def _shown_rows(run: RunFiles, tally: RunTally, shown: int) -> tuple[list[dict], dict]:
    """report.json's failed rows, and the HTML's histogram and best and worst images, fetched by position."""
    scores = tally.scores
    shown = min(shown, max(1, len(scores) // 2))  # small runs: best and worst do not overlap
    order = np.argsort(scores, kind="stable")
    positions = tally.positions
    best, worst = positions[order[::-1][:shown]].tolist(), positions[order[:shown]].tolist()
    rows = fetch_rows(run, tally.failed_positions + best + worst, [C.ID, C.PROMPT, C.ERROR, C.CLIP_SCORE])
    failed = [rows[p] for p in tally.failed_positions]
    failed_rows = [{"id": r[C.ID], "prompt": r.get(C.PROMPT), "error": r[C.ERROR]} for r in failed]
    images = fetch_rows(run, best + worst, [C.IMAGE])
    visuals = {
        "histogram": histogram_uri(scores),
        "best": [_tile(rows[p], images[p]) for p in best],
        "worst": [_tile(rows[p], images[p]) for p in worst],
    }
    return failed_rows, visuals


class RunTally:
    """What a report needs from every row, added a batch at a time: counts, scores, groups, schedulers."""

    def __init__(
        self,
        group_column: str | None,
        reconstruct: bool,
        extra_scores: list[str] | None = None,
        step_cache: bool = False,
    ):
        self.group_column, self.reconstruct, self.step_cache = group_column, reconstruct, step_cache
        self.extra_scores = extra_scores or []  # score columns beside clip_score (scores: pickscore, aesthetic)
        self.columns = [C.STATUS, C.CLIP_SCORE, C.SCHEDULER] + ([group_column] if group_column else [])
        self.columns += list(C.RECONSTRUCTION) if reconstruct else []
        self.columns += self.extra_scores
        self.columns += [C.CACHE_SKIPPED_STEPS, C.STEPS] if step_cache else []
        self.cache_images = self.cache_skipped = self.cache_steps = 0  # over the rows with a count
        self._extra: dict[str, list[np.ndarray]] = {name: [] for name in self.extra_scores}
        self.rows = self.ok = self.failed = 0
        self.scores, self.positions, self.codes = np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int32)
        self.failed_positions: list[int] = []  # the first MAX_FAILED_LISTED
        self.schedulers: set = set()
        self._scores: list[np.ndarray] = []
        self._positions: list[np.ndarray] = []  # of the scored rows
        self._codes: list[np.ndarray] = []  # group value code of each scored row
        self._values: dict = {}  # group value -> code
        self._counts = np.zeros(0, dtype=np.int64)  # rows per group code, all rows
        self._reconstruction: dict[str, list[np.ndarray]] = {name: [] for name in C.RECONSTRUCTION}

    def add(self, batch: pa.RecordBatch) -> None:
        status = batch.column(C.STATUS)
        ok = pc.fill_null(pc.equal(status, C.STATUS_OK), False).to_numpy(zero_copy_only=False)
        failed = pc.fill_null(pc.equal(status, C.STATUS_ERROR), False).to_numpy(zero_copy_only=False)
        positions = np.arange(self.rows, self.rows + batch.num_rows, dtype=np.int64)
        room = MAX_FAILED_LISTED - len(self.failed_positions)
        self.failed_positions += positions[failed][:room].tolist() if room > 0 else []
        score = batch.column(C.CLIP_SCORE)
        scored = ok & pc.is_valid(score).to_numpy(zero_copy_only=False)
        self._scores.append(score.filter(pa.array(scored)).to_numpy().astype(np.float64))
        self._positions.append(positions[scored])
        self.schedulers |= set(pc.unique(batch.column(C.SCHEDULER)).to_pylist())
        if self.group_column:
            codes = self._group_codes(batch.column(self.group_column))
            self._counts = np.pad(self._counts, (0, len(self._values) - len(self._counts)))
            self._counts += np.bincount(codes, minlength=len(self._values))
            self._codes.append(codes[scored].astype(np.int32))
        for name in self.extra_scores:  # each over the ok rows that have it
            values = batch.column(name)
            has = ok & pc.is_valid(values).to_numpy(zero_copy_only=False)
            self._extra[name].append(values.filter(pa.array(has)).to_numpy().astype(np.float64))
        if self.reconstruct:
            done = pc.is_valid(batch.column(C.RECON_MSE))
            for name in C.RECONSTRUCTION:
                values = batch.column(name).filter(done).to_numpy(zero_copy_only=False)
                self._reconstruction[name].append(values.astype(np.float64))
        if self.step_cache:
            counted = pc.is_valid(batch.column(C.CACHE_SKIPPED_STEPS))
            self.cache_images += int(pc.sum(counted.cast(pa.int64())).as_py() or 0)
            self.cache_skipped += int(pc.sum(batch.column(C.CACHE_SKIPPED_STEPS)).as_py() or 0)
            self.cache_steps += int(pc.sum(batch.column(C.STEPS).filter(counted)).as_py() or 0)
        self.rows += batch.num_rows
        self.ok += int(ok.sum())
        self.failed += int(failed.sum())

    def _group_codes(self, values: pa.Array) -> np.ndarray:
        """A code per row for its group value (null included), stable across batches."""
        encoded = pc.dictionary_encode(values)
        local = [self._values.setdefault(v, len(self._values)) for v in encoded.dictionary.to_pylist()]
        null = self._values.setdefault(None, len(self._values)) if encoded.null_count else -1
        indices = pc.fill_null(encoded.indices, len(local)).to_numpy()
        return np.array([*local, null], dtype=np.int64)[indices]

    def finish(self) -> None:
        """After the last batch: the scored rows' scores, positions and group codes as single arrays."""
        self.scores = np.concatenate(self._scores) if self._scores else np.zeros(0)
        self.positions = np.concatenate(self._positions) if self._positions else np.zeros(0, dtype=np.int64)
        self.codes = np.concatenate(self._codes) if self._codes else np.zeros(0, dtype=np.int32)
        self._scores, self._positions, self._codes = [], [], []  # each row is held once, not twice

    def group_stats(self) -> dict:
        """Per value of the group column: rows, and the mean, median and bootstrap interval of its scores."""
        scores, codes = self.scores, self.codes
        order = np.argsort(codes, kind="stable")  # each group's scores keep their row order
        bounds = np.searchsorted(codes, np.arange(len(self._values) + 1), sorter=order)
        groups = {}
        for value, code in sorted(self._values.items(), key=lambda item: str(item[0])):
            if not self._counts[code]:
                continue
            group = scores[order[bounds[code] : bounds[code + 1]]]
            groups[str(value)] = {
                "rows": int(self._counts[code]),
                "scored": len(group),
                "mean": float(group.mean()) if len(group) else None,
                "median": float(np.median(group)) if len(group) else None,
                "ci95": bootstrap_mean_ci(group),
            }
        return groups

    def extra_score_stats(self) -> dict:
        """Each score column beside clip_score: the same summary as clip_score's, over the ok rows that have it."""
        return {name: summarize_scores(np.concatenate(chunks)) for name, chunks in self._extra.items()}

    def reconstruction_stats(self) -> dict:
        """`mode: reconstruct` runs: how much the VAE round trip lost, over the rows that have a reconstruction."""
        done = {name: np.concatenate(chunks) for name, chunks in self._reconstruction.items()}
        psnr = done[C.RECON_PSNR]
        return {
            "mse": summarize_scores(done[C.RECON_MSE]),
            "psnr_db": summarize_scores(psnr[np.isfinite(psnr)]),
            "exact": int((~np.isfinite(psnr)).sum()),  # round trips with MSE 0 (infinite PSNR)
            "latent_mean": summarize_scores(done[C.LATENT_MEAN]),
            "latent_std": summarize_scores(done[C.LATENT_STD]),
        }

    def step_cache_stats(self) -> dict:
        """performance.cache runs: denoiser passes the cache skipped, over the images that have a count; the skip
        rate is per denoising step (two passes a step under true CFG can make it pass 1)."""
        steps = self.cache_steps
        return {
            "images": self.cache_images,
            "skipped_steps": self.cache_skipped,
            "steps": steps,
            "skip_rate": self.cache_skipped / steps if steps else None,
            "skipped_per_image": self.cache_skipped / self.cache_images if self.cache_images else None,
        }


def _tile(row: dict, image: dict) -> dict:
    picture = image.get(C.IMAGE)
    return {
        "id": row[C.ID],
        "prompt": row.get(C.PROMPT),
        "score": row[C.CLIP_SCORE],
        "src": thumbnail_uri(None if picture is None else picture["bytes"]),
    }


def write_report(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    by: str | None = None,
    partial: bool = False,
    **set_metric_options,
) -> str:
    """Write report.json/.md/.html into `out_dir` (default RUN/report; a local folder or an object-store prefix).

    `reference`, `fid_weights`, `cmmd_model`: set-level metrics against a reference set (`set_metrics`)."""
    out = str(out_dir) if out_dir else storage.join(str(run_dir), "report")
    check_destination(out, list(REPORT_FILES))  # before the work, not after it
    data, visuals = build_report(run_dir, by, partial=partial, **set_metric_options)
    return write_documents(out, "report", data, {"r": data, "v": visuals})
