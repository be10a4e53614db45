"""Leaderboards over N runs of the same prompts (`genbatch compare RUN RUN RUN …`, `genbatch report SWEEP`).

Every score column present in all runs is ranked by its mean over the ids every run scored, with paired
bootstrap intervals, paired win rates and Holm-corrected pairwise tests (`ranking`); `plots` draws score
against each setting the runs differ in, and score against images/s.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from jobs.errors import OutputError, UsageError, some_of
from jobs.report import plots, ranking
from jobs.report.documents import check_destination
from jobs.report.render import CLIP_SCORE_DEFINITION, write_documents
from jobs.report.runs import Run, open_run
from jobs.report.summary import pick_group_column
from jobs.runfolder.shard_files import sweep_run_folders
from workers.io import columns as C
from workers.io import storage

logger = logging.getLogger(__name__)

# The fields of each run in compare.json's overall `ranking` (its CLIP-score standings).
_RANKING_KEYS = ("run", "label", "name", "settings", "n", "mean", "ci95", "images_per_s")

# Per-image score columns a leaderboard ranks when every run has them, in this order (clip_score first:
# `ranking` is by it). Higher is better for each.
SCORE_COLUMNS = (C.CLIP_SCORE, C.PICKSCORE, C.AESTHETIC, C.CLIP_COSINE)
# The config keys that say which model made a score: runs that differ in them are not comparable on it.
SCORE_MODEL_KEYS = {
    C.CLIP_SCORE: ("clip.model",),
    C.CLIP_COSINE: ("clip.model",),
    C.PICKSCORE: ("scores.pickscore.model",),
    C.AESTHETIC: ("scores.aesthetic.model", "scores.aesthetic.head"),
}
# Config keys that differ between any two runs but say nothing about how the images were made.
NOT_SETTINGS = ("output.path",)


@dataclass
class Entrant:
    """One run on the leaderboard: the run, its name on the pages and the settings that set it apart."""

    run: Run
    label: str
    settings: dict  # differing config key -> this run's value

    @property
    def images_per_s(self) -> float | None:
        return self.run.job.images_per_s


def sweep_runs(path: str | Path) -> list[str]:
    """The run folders of a sweep folder, sorted; [] when `path` is not one (see jobs.runfolder.shard_files)."""
    location = storage.normalized(path) if storage.is_remote(str(path)) else str(Path(path))
    if storage.file_type(location) == pafs.FileType.File:
        raise OutputError(f"{location}: a file, not a run folder; give the run's output folder")
    return sweep_run_folders(location) or []


def flat_config(config: dict, prefix: str = "") -> dict:
    """`{"generation": {"steps": 4}}` -> `{"generation.steps": 4}`; lists stay values."""
    flat: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flat_config(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def differing_settings(configs: list[dict]) -> list[str]:
    """The dotted config keys whose values are not the same in every run, in config order."""
    flats = [flat_config(config) for config in configs]
    keys = list(dict.fromkeys(key for flat in flats for key in flat))
    return [
        key for key in keys if key not in NOT_SETTINGS and any(flat.get(key) != flats[0].get(key) for flat in flats[1:])
    ]


def _labels(paths: list[str]) -> list[str]:
    """Each run's folder name, or its whole path where two runs share a folder name."""
    names = [storage.name(path.rstrip("/")) or path for path in paths]
    return [name if names.count(name) == 1 else path for name, path in zip(names, paths)]


def _check_comparable(runs: list[Run]) -> None:
    first = runs[0]
    for run in runs[1:]:
        if run.clip_model != first.clip_model:
            raise UsageError(
                f"{first.path} and {run.path} were scored with different CLIP models "
                f"({first.clip_model!r} vs {run.clip_model!r}); their scores are not comparable"
            )
        id_a, id_b = first.table.schema.field(C.ID).type, run.table.schema.field(C.ID).type
        if id_a != id_b:
            raise UsageError(f"{first.path} and {run.path} have ids of different types ({id_a} vs {id_b})")


def shared_rows(runs: list[Run]) -> list[pa.Table]:
    """Each run's scored rows on the ids every run scored, sorted by id (so row k is the same id in all)."""
    shared = runs[0].scored()[C.ID]
    for run in runs[1:]:
        shared = pc.filter(shared, pc.is_in(shared, value_set=run.scored()[C.ID]))
    if len(shared) == 0:
        raise UsageError(f"{some_of([run.path for run in runs])} share no scored ids; nothing to compare")
    return [run.scored().filter(pc.is_in(run.scored()[C.ID], value_set=shared)).sort_by(C.ID) for run in runs]


def score_columns(entrants: list[Entrant], warnings: list[str]) -> list[str]:
    """The score columns every run has and scored with the same model; the others are left out, with why."""
    found = []
    for column in SCORE_COLUMNS:
        missing = [e.label for e in entrants if column not in e.run.table.column_names]
        if len(missing) == len(entrants):
            continue
        if missing:
            warnings.append(
                f"{column} is left out: {len(missing)} of {len(entrants)} runs lack it ({some_of(missing)})"
            )
            continue
        models = {tuple(_config_value(e.run, key) for key in SCORE_MODEL_KEYS.get(column, ())) for e in entrants}
        if len(models) > 1:
            warnings.append(f"{column} is left out: the runs were scored with different models for it")
            continue
        found.append(column)
    return found


def _config_value(run: Run, dotted: str):
    return flat_config(run.job.config or {}).get(dotted)


def score_ranking(entrants: list[Entrant], rows: list[pa.Table], column: str) -> dict:
    """One score's leaderboard: runs by mean (descending) with intervals, win rates and pairwise tests."""
    values = np.stack([table[column].to_numpy(zero_copy_only=False).astype(np.float64) for table in rows])
    scored = ~np.isnan(values).any(axis=0)  # a score may be null on some rows (not on clip_score's)
    values = values[:, scored]
    if values.shape[1] == 0:
        return {"n": 0, "runs": [], "win_rates": [], "pairwise": []}
    means = values.mean(axis=1)
    names = plots.short_names(list(entrants[0].settings))
    order = sorted(range(len(entrants)), key=lambda i: -means[i])  # stable: ties keep the command's order
    values = values[order]
    intervals = ranking.mean_intervals(values)
    wins = ranking.win_rate_matrix(values)
    standings = []
    for rank, index in enumerate(order):
        entrant = entrants[index]
        standings.append(
            {
                "rank": rank + 1,
                "run_index": index,  # the run's place in the command line (or the sweep's folder order)
                "run": entrant.run.path,
                "label": entrant.label,
                # what sets the run apart, in words, for tables and plots; its label where nothing does
                "name": plots.settings_text(entrant.settings, names) or entrant.label,
                "settings": entrant.settings,
                "n": int(values.shape[1]),
                "mean": float(means[index]),
                "ci95": intervals[rank],
                "mean_win_rate": float(np.nanmean(wins[rank])) if len(entrants) > 1 else None,
                "images_per_s": entrant.images_per_s,
            }
        )
    pairwise = [
        {
            **test,
            "a": standings[test["a"]]["name"],
            "b": standings[test["b"]]["name"],
            "a_rank": test["a"] + 1,
            "b_rank": test["b"] + 1,
        }
        for test in ranking.pairwise_tests(values)
    ]
    return {
        "n": int(values.shape[1]),
        "runs": standings,
        # [i][j]: fraction of ids where the run ranked i+1 beats the run ranked j+1 (ties half); null on the diagonal
        "win_rates": [[None if np.isnan(x) else float(x) for x in row] for row in wins],
        "pairwise": pairwise,
    }


def group_rankings(rows: list[pa.Table], standings: list[dict], entrants: list[Entrant], column: str) -> dict:
    """Per value of `column` (as the first run has it on the shared ids): each run's mean clip_score over
    that value's ids, best first, with bootstrap intervals; `rank` is the run's overall rank."""
    values = np.stack([table[C.CLIP_SCORE].to_numpy(zero_copy_only=False).astype(np.float64) for table in rows])
    rank_of = {entry["run_index"]: entry["rank"] for entry in standings}
    keys = rows[0][column].to_pylist()
    groups = {}
    for value in sorted(set(keys), key=str):
        mask = np.array([key == value for key in keys])
        means = values[:, mask].mean(axis=1)
        order = sorted(range(len(entrants)), key=lambda i: -means[i])
        groups[str(value)] = {
            "n": int(mask.sum()),
            "runs": [
                {
                    "rank": rank_of[i],
                    "run": entrants[i].run.path,
                    "name": standings[rank_of[i] - 1]["name"],
                    "mean": float(means[i]),
                    "ci95": ranking.mean_intervals(values[[i]][:, mask])[0],
                }
                for i in order
            ],
        }
    return groups


def _prompt_seed_warnings(rows: list[pa.Table], entrants: list[Entrant]) -> list[str]:
    warnings = []
    for name in (C.PROMPT, C.SEED):
        if not all(name in table.column_names for table in rows):
            continue
        first = rows[0][name]
        differ = np.zeros(len(first), dtype=bool)
        for table in rows[1:]:
            differ |= np.asarray(pc.fill_null(pc.not_equal(first, table[name]), True).to_pylist(), dtype=bool)
        if differ.any():
            warnings.append(f"{int(differ.sum())} of {len(first)} shared ids have a different {name} in some runs")
    return warnings


def _ids_on_board(entrants: list[Entrant], shared: int) -> dict:
    """compare.json's `ids`: how many ids every run scored, and each run's rows left off the board (unscored
    or absent from another run), warned about once."""
    left_out = [f"{e.run.table.num_rows - shared} of {e.label}" for e in entrants if e.run.table.num_rows > shared]
    if left_out:
        logger.warning(
            "%d runs compared on the %d ids every run scored; rows left out: %s",
            len(entrants),
            shared,
            some_of(left_out),
        )
    return {
        "shared": shared,
        "left_out": [
            {"run": e.run.path, "rows": e.run.table.num_rows, "left_out": e.run.table.num_rows - shared}
            for e in entrants
        ],
    }


def build_leaderboard(
    runs: Sequence[Run | str | Path],
    reference: str | None = None,
    fid_weights: str | None = None,
    cmmd_model: str | None = None,
    check_prompts: bool = True,
    by: str | None = None,
    partial: bool = False,
) -> tuple[dict, dict]:
    """The leaderboard's figures (for compare.json) and its plots (PNG bytes by file name).

    `check_prompts`: warn when a shared id has another prompt or seed in some run (a two-run comparison
    says so itself). `by`: the column whose values get a leaderboard each (default: category, when present)."""
    # 1. Open the runs, check they compare, and name each by the settings that differ between them.
    opened = [run if isinstance(run, Run) else open_run(run, partial) for run in runs]
    if len(opened) < 2:
        raise UsageError(f"a comparison needs at least two runs (got {len(opened)})")
    _check_comparable(opened)
    keys = differing_settings([run.job.config or {} for run in opened])
    labels = _labels([run.path for run in opened])
    entrants = [
        Entrant(run, label, {key: _config_value(run, key) for key in keys}) for run, label in zip(opened, labels)
    ]
    # 2. The rows every run scored: only they are on the board.
    rows = shared_rows(opened)
    ids = _ids_on_board(entrants, rows[0].num_rows)
    # 3. Rank the runs by each score, overall and within each group, and find the speed/score Pareto front.
    warnings = _prompt_seed_warnings(rows, entrants) if check_prompts else []
    columns = score_columns(entrants, warnings)
    rankings = {column: score_ranking(entrants, rows, column) for column in columns}
    for warning in warnings:
        logger.warning(warning)
    main = rankings[C.CLIP_SCORE]["runs"]
    group_column = pick_group_column(opened[0], by)
    groups = group_rankings(rows, main, entrants, group_column) if group_column else {}
    front = ranking.pareto_front([r["images_per_s"] for r in main], [r["mean"] for r in main])
    # 4. The figures and plots.
    data = {
        "runs_compared": len(entrants),
        "clip_model": opened[0].clip_model,
        "ids": ids,
        "settings_compared": keys,
        "scores": columns,
        "ranking": [{key: entry[key] for key in _RANKING_KEYS} for entry in main],
        "rankings": rankings,
        "pareto_front": [main[i]["name"] for i in front],
        "group_by": group_column,
        "group_rankings": groups,
        "set_metrics": set_metrics(opened, reference, fid_weights=fid_weights, cmmd_model=cmmd_model),
        "statistics": _statistics(),
        "leaderboard_warnings": warnings,
        # --partial: each run's shards left out, whose rows are on no board
        "shards_left_out": {run.path: run.left_out for run in opened if run.left_out},
    }
    figures = plots.leaderboard_plots(rankings, keys, front)
    data["plots"] = list(figures)
    return data, figures


def _statistics() -> dict:
    """compare.json's `statistics`: how the intervals, win rates and tests are computed."""
    return {
        "ci95": ranking.INTERVAL,
        "win_rate": "fraction of shared ids where one run scores above the other; ties count half",
        "test": ranking.PAIRED_TEST,
        "correction": ranking.CORRECTION,
        "alpha": ranking.ALPHA,
    }


def set_metrics(
    runs: list[Run], reference: str | None, fid_weights: str | None = None, cmmd_model: str | None = None
) -> dict | None:
    """Set-level metrics (FID, KID, CMMD) of each run against `reference`, by run path; None without one.
    The reference is embedded once and every run's CMMD uses one CLIP model (`set_metrics_of_runs`)."""
    if reference is None:
        return None
    from jobs.report.set_metrics import set_metrics_of_runs

    return set_metrics_of_runs(runs, reference, fid_weights=fid_weights, cmmd_model=cmmd_model)


def write_leaderboard(
    runs: Sequence[Run | str | Path],
    out: str,
    name: str = "leaderboard",
    reference: str | None = None,
    fid_weights: str | None = None,
    cmmd_model: str | None = None,
    by: str | None = None,
    partial: bool = False,
) -> str:
    """Write `name`.json/.md/.html and the plots' PNG files into `out` (a local folder or an object-store prefix)."""
    check_destination(out, [f"{name}.json", f"{name}.md", f"{name}.html"])  # before the work, not after it
    data, figures = build_leaderboard(
        runs, reference, fid_weights=fid_weights, cmmd_model=cmmd_model, by=by, partial=partial
    )
    data = {
        "generated_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **data,
        "clip_score_definition": CLIP_SCORE_DEFINITION,
    }
    # The HTML shows the plots inline (data URIs), so it stays one self-contained file; the PNGs are saved too.
    context = {"l": data, **page_context(data, figures)}
    return write_documents(out, name, data, context, files=figures, template="leaderboard")


def page_context(data: dict, figures: dict) -> dict:
    """What the templates need beyond the data: plots as data URIs, short setting names, and per score the
    head-to-head cells (`[row][column]`, in ranking order; None on the diagonal)."""
    cells = {}
    for score in data["scores"]:
        board = data["rankings"][score]
        tests = {(t["a_rank"] - 1, t["b_rank"] - 1): t for t in board["pairwise"]}
        cells[score] = [
            [None if win is None else {"win": win, **_test_of(tests, i, j)} for j, win in enumerate(row)]
            for i, row in enumerate(board["win_rates"])
        ]
    return {
        "plots": {file_name: plots.data_uri(png) for file_name, png in figures.items()},
        "names": plots.short_names(data["settings_compared"]),
        "cells": cells,
    }


def _test_of(tests: dict, i: int, j: int) -> dict:
    test = tests[(min(i, j), max(i, j))]
    return {"p_holm": test["p_holm"], "significant": test["significant"]}
