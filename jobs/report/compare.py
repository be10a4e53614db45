"""`genbatch compare`: paired CLIP-score comparison of two runs over the same ids (B - A), or a leaderboard of
N runs (`leaderboard`); two runs get both."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from jobs.errors import UsageError
from jobs.report import leaderboard
from jobs.report.documents import check_destination
from jobs.report.render import CLIP_SCORE_DEFINITION, histogram_uri, thumbnail_uri, write_documents
from jobs.report.runs import Run, fetch_images, open_run
from jobs.report.stats import paired_comparison
from jobs.report.summary import pick_group_column, run_settings
from workers.io import columns as C
from workers.io import storage

logger = logging.getLogger(__name__)
SHOWN_PAIRS = 8
OUTCOMES = ("run", "images_per_s", "seconds", "status")  # in a run's settings, but what it did, not how it was set up


def pair_rows(a: Run, b: Run, group_column: str | None) -> pa.Table:
    """Scored rows present in both runs, joined on id: id, prompt/seed/score of each side, group."""
    if a.clip_model != b.clip_model:
        raise UsageError(
            f"{a.path} and {b.path} were scored with different CLIP models ({a.clip_model!r} vs {b.clip_model!r}); "
            "their scores are not comparable"
        )
    id_a, id_b = a.table.schema.field(C.ID).type, b.table.schema.field(C.ID).type
    if id_a != id_b:
        raise UsageError(f"{a.path} and {b.path} have ids of different types ({id_a} vs {id_b})")
    keep = [C.ID, C.PROMPT, C.SEED, C.CLIP_SCORE]
    left = a.scored().select(keep + ([group_column] if group_column and group_column not in keep else []))
    right = b.scored().select(keep).rename_columns([C.ID, "prompt_b", "seed_b", "clip_score_b"])
    pairs = left.join(right, keys=C.ID, join_type="inner").sort_by(C.ID)
    if pairs.num_rows == 0:
        raise UsageError(f"{a.path} and {b.path} share no scored ids; nothing to compare")
    return pairs


def build_comparison(
    run_a: Run | str | Path, run_b: Run | str | Path, by: str | None = None, shown: int = SHOWN_PAIRS
) -> tuple[dict, dict]:
    a = run_a if isinstance(run_a, Run) else open_run(run_a)
    b = run_b if isinstance(run_b, Run) else open_run(run_b)
    column = pick_group_column(a, by)
    pairs = pair_rows(a, b, column)
    warnings = []
    for name, other in ((C.PROMPT, "prompt_b"), (C.SEED, "seed_b")):
        differ = pc.sum(pc.fill_null(pc.not_equal(pairs[name], pairs[other]), True)).as_py() or 0
        if differ:
            warnings.append(f"{differ} of {pairs.num_rows} paired ids have a different {name} in the two runs")
    settings_a, settings_b = run_settings(a), run_settings(b)
    seeds_differ = pc.any(pc.fill_null(pc.not_equal(pairs[C.SEED], pairs["seed_b"]), True)).as_py()
    if settings_a.get("seed") != settings_b.get("seed") and not seeds_differ:
        warnings.append(
            f"the config seeds differ ({settings_a.get('seed')} vs {settings_b.get('seed')}) but every pair was "
            "generated with the same seed: the manifest's seed column set them"
        )
    for warning in warnings:
        logger.warning(warning)
    score_a = pairs[C.CLIP_SCORE].to_numpy().astype(np.float64)
    score_b = pairs["clip_score_b"].to_numpy().astype(np.float64)
    data = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "run_a": settings_a,
        "run_b": settings_b,
        "changed_settings": changed_settings(settings_a, settings_b),
        "clip_model": a.clip_model,
        **paired_comparison(score_a, score_b),
        # Rows left out of the pairs: absent from the other run, or failed/unscored in either.
        "unpaired_rows": {
            "a": a.table.num_rows - _count_in(a.table, pairs),
            "b": b.table.num_rows - _count_in(b.table, pairs),
        },
        "warnings": warnings,
        "group_by": column,
        "groups": {column: _group_deltas(pairs, column, score_a, score_b)} if column else {},
        "clip_score_definition": CLIP_SCORE_DEFINITION,
    }
    delta = score_b - score_a
    order = np.argsort(delta, kind="stable")
    b_better = pairs.take(pa.array([i for i in order[::-1] if delta[i] > 0][:shown], pa.int64()))
    a_better = pairs.take(pa.array([i for i in order if delta[i] < 0][:shown], pa.int64()))
    ids = b_better[C.ID].to_pylist() + a_better[C.ID].to_pylist()
    images_a, images_b = fetch_images(a, ids), fetch_images(b, ids)
    visuals = {
        "histogram": histogram_uri(delta, label="CLIP-score delta (B − A)", counted="pairs", marker=0.0),
        "b_better": _tiles(b_better, images_a, images_b),
        "a_better": _tiles(a_better, images_a, images_b),
    }
    return data, visuals


def changed_settings(a: dict, b: dict) -> list[dict]:
    """The settings whose values differ between two runs, in settings order: `{"setting", "a", "b"}` each."""
    return [
        {"setting": key, "a": a.get(key), "b": b.get(key)}
        for key in a
        if key not in OUTCOMES and a.get(key) != b.get(key)
    ]


def write_comparison(
    runs: Sequence[str | Path],
    out_dir: str | Path | None = None,
    by: str | None = None,
    reference: str | None = None,
    fid_weights: str | None = None,
    cmmd_model: str | None = None,
    partial: bool = False,
) -> str:
    """Write compare.json/.md/.html and the leaderboard's plots into `out_dir` (default: the last run's
    `compare` folder; a local folder or an object-store prefix).

    Two runs get the paired B - A comparison with the leaderboard below it; more runs, the leaderboard.
    `reference`, `fid_weights` and `cmmd_model` are for set-level metrics against a reference. `partial`: go
    on without a run's shards that are not whole or not its job's (see `jobs.runfolder.shard_files.job_shard_files`)."""
    if len(runs) < 2:
        raise UsageError(f"compare needs at least two runs (got {len(runs)})")
    out = str(out_dir) if out_dir else storage.join(str(runs[-1]), "compare")
    check_destination(out, ["compare.json", "compare.md", "compare.html"])  # before the work, not after it
    metrics = {"reference": reference, "fid_weights": fid_weights, "cmmd_model": cmmd_model}
    if len(runs) > 2:
        return leaderboard.write_leaderboard(list(runs), out, name="compare", by=by, partial=partial, **metrics)
    a, b = open_run(runs[0], partial), open_run(runs[1], partial)
    data, visuals = build_comparison(a, b, by)
    board, figures = leaderboard.build_leaderboard(
        [a, b], reference, fid_weights=fid_weights, cmmd_model=cmmd_model, check_prompts=False, by=by
    )
    data = {**data, **board}
    context = {"c": data, "v": visuals, "l": data, **leaderboard.page_context(data, figures)}
    return write_documents(out, "compare", data, context, files=figures)


def _group_deltas(pairs: pa.Table, column: str, score_a: np.ndarray, score_b: np.ndarray) -> dict:
    groups = {}
    values = pairs[column].to_pylist()
    for value in sorted(set(values), key=str):
        mask = np.array([v == value for v in values])
        stats = paired_comparison(score_a[mask], score_b[mask])
        groups[str(value)] = {
            key: stats[key] for key in ("pairs", "mean_a", "mean_b", "mean_delta", "ci95", "win_rate")
        }
    return groups


def _count_in(table: pa.Table, pairs: pa.Table) -> int:
    return pc.sum(pc.is_in(table[C.ID], value_set=pairs[C.ID])).as_py() or 0


def _tiles(rows: pa.Table, images_a: dict, images_b: dict) -> list[dict]:
    return [
        {
            "id": r[C.ID],
            "prompt": r[C.PROMPT],
            "a": r[C.CLIP_SCORE],
            "b": r["clip_score_b"],
            "delta": r["clip_score_b"] - r[C.CLIP_SCORE],
            "src_a": thumbnail_uri(images_a.get(r[C.ID])),
            "src_b": thumbnail_uri(images_b.get(r[C.ID])),
        }
        for r in rows.select([C.ID, C.PROMPT, C.CLIP_SCORE, "clip_score_b"]).to_pylist()
    ]
