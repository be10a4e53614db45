"""Leaderboards over N runs: every figure recomputed here from the runs' Parquet files with numpy/scipy."""

from __future__ import annotations

import io
import itertools
import json
import re

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from scipy import stats

from jobs.cli.main import main
from jobs.report import ranking
from jobs.report.leaderboard import build_leaderboard, sweep_runs
from jobs.runfolder.jobfile import identity_key
from tests.helpers.runs import CATEGORIES, make_run
from workers.io import columns as C
from workers.io.writer import ShardFooter, write_shard

PIXEL_PNG = io.BytesIO()
Image.new("RGB", (8, 8), (120, 30, 200)).save(PIXEL_PNG, format="PNG")


def make_scored_run(path, scores, failed=(), ids=None, settings=None, images_per_s=10.0, clip_model="tiny"):
    """A run folder with the given score columns (`{"clip_score": [...], "pickscore": [...]}`) and settings
    (`{"generation.guidance_scale": 3.0}`) in its job.json; one shard, ids r000000, r000001, … by default."""
    n = len(scores[C.CLIP_SCORE])
    ids = ids if ids is not None else list(range(n))
    identity = {"made_by": "tests.unit.test_leaderboard", "rows": n, "path": str(path)}
    columns = {
        C.ID: [f"r{i:06d}" for i in ids],
        C.PROMPT: [f"prompt {i}" for i in ids],
        C.IMAGE: pa.array(
            [None if k in failed else {"bytes": PIXEL_PNG.getvalue(), "path": None} for k in range(n)], C.IMAGE_TYPE
        ),
        **{
            name: pa.array([None if k in failed else values[k] for k in range(n)], pa.float32())
            for name, values in scores.items()
        },
        C.SEED: pa.array(ids, pa.int64()),
        C.SCHEDULER: ["ddim"] * n,
        C.STATUS: ["error" if k in failed else "ok" for k in range(n)],
        C.ERROR: ["RuntimeError: boom" if k in failed else None for k in range(n)],
    }
    write_shard(pa.table(columns), str(path), ShardFooter(identity_key(identity), 0, n, n - len(failed), len(failed)))
    config = {
        "output": {"path": str(path)},
        "model": {"id": "tiny", "scheduler": "ddim", "dtype": "auto"},
        "generation": {"steps": 4, "guidance_scale": 7.5, "width": 64, "height": 64},
        "clip": {"model": clip_model},
        "seed": 0,
    }
    for dotted, value in (settings or {}).items():
        section, key = dotted.split(".")
        config[section][key] = value
    job = {"status": "finished", "identity": identity, "shards": 1, "config": config, "images_per_s": images_per_s}
    (path / "job.json").write_text(json.dumps(job))
    return path


def parquet_scores(run, column):
    """{id: score} of a run's ok rows, read straight from its shard files."""
    table = pq.read_table(run / "data", columns=[C.ID, C.STATUS, column]).to_pylist()
    return {r[C.ID]: float(r[column]) for r in table if r[C.STATUS] == "ok" and r[column] is not None}


def independent_bootstrap(values, resamples=1000, chunk=50, seed=0):
    """The documented rule: percentile interval of 1,000 means of ids drawn with replacement, seed 0
    (drawn 50 resamples at a time, so the same ids whatever the values)."""
    rng = np.random.default_rng(seed)
    means = np.concatenate(
        [
            values[rng.integers(0, len(values), size=(chunk, len(values)))].mean(axis=1)
            for _ in range(resamples // chunk)
        ]
    )
    return [np.percentile(means, 2.5), np.percentile(means, 97.5)]


def holm_reference(pvalues):
    """Holm's step-down adjustment as defined: p_(k) -> max over j <= k of (m - j + 1) p_(j), capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    m = len(p)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.maximum.accumulate(scaled)
    return adjusted


@pytest.fixture
def four_runs(tmp_path):
    """Four runs of 60 prompts with different guidance: run g7.5 failed 2 rows, run g10 lacks the last 5 ids."""
    rng = np.random.default_rng(7)
    base = rng.normal(25, 3, 60)
    runs = {}
    for k, (guidance, shift) in enumerate([(3.0, 0.0), (5.0, 0.9), (7.5, 0.4), (10.0, 0.9)]):
        clip = np.round(base + shift + rng.normal(0, 0.6, 60), 1)  # rounded: some ties between runs
        pick = 20 + 0.1 * clip + rng.normal(0, 0.2, 60)
        failed = {3, 17} if guidance == 7.5 else set()
        n = 55 if guidance == 10.0 else 60
        runs[guidance] = make_scored_run(
            tmp_path / f"g{guidance}",
            {C.CLIP_SCORE: list(clip[:n]), "pickscore": list(pick[:n])},
            failed=failed,
            settings={"generation.guidance_scale": guidance},
            images_per_s=[9.0, 8.0, 7.0, 6.0][k],
        )
    return runs


def test_leaderboard_figures_match_an_independent_computation(four_runs, tmp_path, capsys):
    runs = list(four_runs.values())
    out = tmp_path / "board"
    assert main(["compare", *map(str, runs), "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: leaderboard of 4 runs: {out / 'compare.html'} (also compare.md, compare.json, plots)"
    )
    result = json.loads((out / "compare.json").read_text())
    assert result["scores"] == [C.CLIP_SCORE, "pickscore"]
    assert result["settings_compared"] == ["generation.guidance_scale"]
    for column in result["scores"]:
        by_run = {str(run): parquet_scores(run, column) for run in runs}
        shared = sorted(set.intersection(*(set(s) for s in by_run.values())))
        assert len(shared) == 60 - 5 - 2
        values = {run: np.array([scores[i] for i in shared]) for run, scores in by_run.items()}
        expected_order = sorted(values, key=lambda run: -values[run].mean())
        board = result["rankings"][column]
        assert [r["run"] for r in board["runs"]] == expected_order
        assert [r["rank"] for r in board["runs"]] == [1, 2, 3, 4]
        for entry in board["runs"]:
            mine = values[entry["run"]]
            assert entry["n"] == len(shared)
            assert entry["mean"] == pytest.approx(mine.mean(), abs=1e-9)
            assert entry["ci95"] == pytest.approx(independent_bootstrap(mine), abs=1e-9)
            assert entry["ci95"][0] < entry["mean"] < entry["ci95"][1]
        for i, j in itertools.permutations(range(4), 2):
            x, y = values[expected_order[i]], values[expected_order[j]]
            wins = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(x, y)) / len(shared)
            assert board["win_rates"][i][j] == pytest.approx(wins, abs=1e-12)
        assert [board["win_rates"][i][i] for i in range(4)] == [None] * 4
        pairs = list(itertools.combinations(range(4), 2))
        raw = []
        for test, (i, j) in zip(board["pairwise"], pairs):
            delta = values[expected_order[i]] - values[expected_order[j]]
            raw.append(stats.wilcoxon(delta[delta != 0]).pvalue)
            assert (test["a_rank"], test["b_rank"]) == (i + 1, j + 1)
            assert test["mean_delta"] == pytest.approx(delta.mean(), abs=1e-9)
        assert [t["p"] for t in board["pairwise"]] == pytest.approx(raw, rel=1e-12)
        holm = holm_reference(raw)
        assert [t["p_holm"] for t in board["pairwise"]] == pytest.approx(list(holm), rel=1e-12)
        assert [t["significant"] for t in board["pairwise"]] == [bool(p < 0.05) for p in holm]
    clip = result["rankings"][C.CLIP_SCORE]["runs"]
    assert result["ranking"] == [
        {key: entry[key] for key in ("run", "label", "name", "settings", "n", "mean", "ci95", "images_per_s")}
        for entry in clip
    ]
    assert {r["run"]: (r["settings"], r["images_per_s"]) for r in result["ranking"]} == {
        str(four_runs[3.0]): ({"generation.guidance_scale": 3.0}, 9.0),
        str(four_runs[5.0]): ({"generation.guidance_scale": 5.0}, 8.0),
        str(four_runs[7.5]): ({"generation.guidance_scale": 7.5}, 7.0),
        str(four_runs[10.0]): ({"generation.guidance_scale": 10.0}, 6.0),
    }
    assert result["ids"] == {
        "shared": 53,
        "left_out": [
            {"run": str(four_runs[3.0]), "rows": 60, "left_out": 7},
            {"run": str(four_runs[5.0]), "rows": 60, "left_out": 7},
            {"run": str(four_runs[7.5]), "rows": 60, "left_out": 7},
            {"run": str(four_runs[10.0]), "rows": 55, "left_out": 2},
        ],
    }
    assert result["set_metrics"] is None
    assert result["statistics"]["ci95"].startswith("95% percentile bootstrap interval of the mean: 1,000 resamples")


def test_holm_and_pareto_front_against_their_definitions():
    pvalues = [*np.random.default_rng(3).uniform(0, 0.08, 15), 0.01, 0.01, 1.0]
    assert ranking.holm(pvalues) == pytest.approx(list(holm_reference(pvalues)), rel=1e-12)
    assert ranking.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    speeds, scores = [10.0, 8.0, 12.0, None, 12.0, 5.0], [25.0, 26.0, 24.0, 30.0, 23.0, 26.0]
    # 3 has no speed; 4 is beaten by 2 (same speed, higher score); 5 by 1 (faster, same score)
    assert ranking.pareto_front(speeds, scores) == [0, 1, 2]


def test_leaderboard_plots_and_pages(tmp_path):
    """A 2 x 2 sweep over guidance and scheduler: a plot per setting, the Pareto plot, self-contained pages."""
    rng = np.random.default_rng(11)
    base = rng.normal(25, 3, 40)
    runs = []
    for guidance, scheduler in itertools.product([3.0, 7.5], ["ddim", "euler"]):
        scores = base + 0.1 * guidance + (0.5 if scheduler == "euler" else 0) + rng.normal(0, 0.3, 40)
        speed = 12.0 if scheduler == "ddim" else 9.0
        settings = {"generation.guidance_scale": guidance, "model.scheduler": scheduler}
        runs.append(
            make_scored_run(
                tmp_path / f"{guidance}-{scheduler}",
                {C.CLIP_SCORE: list(scores)},
                settings=settings,
                images_per_s=speed,
            )
        )
    out = tmp_path / "board"
    assert main(["compare", *map(str, runs), "-o", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    assert result["settings_compared"] == ["model.scheduler", "generation.guidance_scale"]  # config order
    assert result["plots"] == ["by-model.scheduler.png", "by-generation.guidance_scale.png", "pareto.png"]
    for name in result["plots"]:
        image = Image.open(out / name)
        assert image.format == "PNG" and image.width > 300 and image.height > 200
    means = {r["run"]: r["mean"] for r in result["ranking"]}
    speeds = {str(run): 12.0 if "ddim" in run.name else 9.0 for run in runs}
    front = [
        run
        for run in means
        if not any(
            speeds[o] >= speeds[run] and means[o] >= means[run] and (speeds[o], means[o]) != (speeds[run], means[run])
            for o in means
        )
    ]
    names = {r["run"]: r["name"] for r in result["ranking"]}
    assert result["pareto_front"] == [names[run] for run in front] and len(front) == 2
    assert names[str(runs[0])] == "scheduler=ddim, guidance_scale=3.0"
    html = (out / "compare.html").read_text()
    text = re.sub(r'"data:[^"]*"', '""', html)
    assert not re.search(r"https?:|//[a-z0-9]|href=|url\(|@import|<script|<link", text, re.I), "external reference"
    assert re.findall(r'<img alt="([^"]+)" src="data:image/png;base64,', html) == result["plots"]
    assert "<h2>Ranked by mean clip_score</h2>" in html and "Holm" in html
    markdown = (out / "compare.md").read_text()
    assert "![pareto.png](pareto.png)" in markdown
    top = result["ranking"][0]
    settings = top["settings"]
    assert f"| 1 | {settings['model.scheduler']} | {settings['generation.guidance_scale']} | 40 |" in markdown


def test_two_run_compare_keeps_its_fields_and_adds_the_leaderboard(tmp_path):
    scores = [float(x) for x in np.random.default_rng(1).normal(25, 4, 90).astype(np.float32)]
    shifted = [float(np.float32(s + 0.5 + 0.8 * np.sin(i))) for i, s in enumerate(scores)]
    a, b = make_run(tmp_path / "a", scores, failed={5}), make_run(tmp_path / "b", shifted)
    assert main(["compare", str(a), str(b), "-o", str(tmp_path / "cmp")]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    two_run_fields = {
        "generated_at",
        "run_a",
        "run_b",
        "changed_settings",
        "clip_model",
        "pairs",
        "mean_a",
        "mean_b",
        "mean_delta",
        "median_delta",
        "ci95",
        "win_rate",
        "wins",
        "losses",
        "ties",
        "wilcoxon_p",
        "sign_test_p",
        "unpaired_rows",
        "warnings",
        "group_by",
        "groups",
        "clip_score_definition",
    }
    assert two_run_fields <= set(result)
    assert {"ranking", "rankings", "set_metrics", "ids", "pareto_front", "statistics"} <= set(result)
    assert result["ids"]["shared"] == result["pairs"] == 89
    assert [r["run"] for r in result["ranking"]] == [str(b), str(a)]  # B is shifted up
    assert result["ranking"][0]["mean"] == pytest.approx(result["mean_b"], abs=1e-9)
    test = result["rankings"][C.CLIP_SCORE]["pairwise"]
    assert len(test) == 1 and test[0]["p"] == test[0]["p_holm"] == result["wilcoxon_p"]  # one pair: Holm is a no-op
    b_over_a = result["rankings"][C.CLIP_SCORE]["win_rates"][0][1]
    assert b_over_a == pytest.approx(result["win_rate"] + result["ties"] / 2 / result["pairs"], abs=1e-12)


def test_report_on_a_sweep_folder_is_the_leaderboard_of_its_runs(four_runs, tmp_path, capsys):
    sweep = tmp_path  # no job.json of its own, four run subfolders (and no sweep.json)
    assert sweep_runs(sweep) == [str(four_runs[g]) for g in (10.0, 3.0, 5.0, 7.5)]  # sorted by folder name
    assert main(["report", str(sweep)]) == 0
    out = sweep / "report"
    assert capsys.readouterr().out.strip() == (
        f"genbatch: leaderboard of 4 runs: {out / 'leaderboard.html'} (also leaderboard.md, leaderboard.json, plots)"
    )
    board = json.loads((out / "leaderboard.json").read_text())
    assert board["runs_compared"] == 4 and board["ids"]["shared"] == 53
    assert sorted(p.name for p in out.iterdir()) == [
        "by-generation.guidance_scale.png",
        "leaderboard.html",
        "leaderboard.json",
        "leaderboard.md",
        "pareto.png",
    ]
    assert main(["report", str(sweep), "-o", str(tmp_path / "elsewhere")]) == 0
    elsewhere = json.loads((tmp_path / "elsewhere" / "leaderboard.json").read_text())
    assert elsewhere["ranking"] == board["ranking"]
    assert sweep_runs(four_runs[3.0]) == []  # a run folder is a run, not a sweep


def test_a_sweep_folder_is_found_by_its_runs_or_its_sweep_json(tmp_path, capsys):
    one = tmp_path / "one"
    make_scored_run(one / "a", {C.CLIP_SCORE: [1.0, 2.0]})
    assert sweep_runs(one) == []  # one run in a folder: not a sweep, and the report says what it is not
    assert main(["report", str(one)]) == 2
    assert f"{one}: not a genbatch run folder (no job.json)" in capsys.readouterr().err
    (one / "sweep.json").write_text("{}")
    assert sweep_runs(one) == [str(one / "a")]
    assert main(["report", str(one)]) == 2
    assert capsys.readouterr().err.strip() == "genbatch: error: a comparison needs at least two runs (got 1)"


def test_leaderboard_refusals_are_one_line_and_write_nothing(tmp_path, capsys):
    a = make_scored_run(tmp_path / "a", {C.CLIP_SCORE: [1.0, 2.0, 3.0]})
    b = make_scored_run(tmp_path / "b", {C.CLIP_SCORE: [1.0, 2.0, 3.0]}, ids=[3, 4, 5])
    c = make_scored_run(tmp_path / "c", {C.CLIP_SCORE: [1.0, 2.0, 3.0]})
    d = make_scored_run(tmp_path / "d", {C.CLIP_SCORE: [1.0, 2.0, 3.0]}, clip_model="openai/clip-vit-base-patch32")
    out = tmp_path / "out"
    cases = [
        (["compare", str(a)], "compare needs at least two runs (got 1)"),
        (["compare", str(a), str(b), str(c), "-o", str(out)], f"{a}, {b}, {c} share no scored ids; nothing to compare"),
        (
            ["compare", str(a), str(c), str(d), "-o", str(out)],
            f"{a} and {d} were scored with different CLIP models ('tiny' vs 'openai/clip-vit-base-patch32'); "
            "their scores are not comparable",
        ),
        (
            ["compare", str(a), str(c), str(c), "--by", "colour"],
            f"{a}: --by 'colour': no such column (columns: id, prompt, clip_score, seed, scheduler, status, error)",
        ),
    ]
    for argv, message in cases:
        assert main(argv) == 2
        assert capsys.readouterr().err.strip() == f"genbatch: error: {message}"
    assert not out.exists() and not (c / "compare").exists()


def test_a_score_not_in_every_run_is_left_out_with_a_warning(tmp_path):
    clip = [20.0, 21.0, 22.0, 23.0]
    runs = [
        make_scored_run(tmp_path / "a", {C.CLIP_SCORE: clip, "aesthetic": [5.0, 5.5, 6.0, 4.0]}),
        make_scored_run(tmp_path / "b", {C.CLIP_SCORE: [c + 1 for c in clip], "aesthetic": [5.0, 5.0, 5.0, None]}),
        make_scored_run(tmp_path / "c", {C.CLIP_SCORE: [c - 1 for c in clip]}),
    ]
    data, figures = build_leaderboard(runs)
    assert data["scores"] == [C.CLIP_SCORE]
    assert data["leaderboard_warnings"] == ["aesthetic is left out: 1 of 3 runs lack it (c)"]
    assert [r["label"] for r in data["ranking"]] == ["b", "a", "c"]
    assert data["settings_compared"] == [] and list(figures) == ["pareto.png"]  # same settings: no setting plots
    # In two runs that both have it, a score null on some rows is ranked on the ids scored in both.
    both, _ = build_leaderboard(runs[:2])
    assert both["scores"] == [C.CLIP_SCORE, "aesthetic"]
    aesthetic = both["rankings"]["aesthetic"]
    assert aesthetic["n"] == 3 and [r["mean"] for r in aesthetic["runs"]] == pytest.approx([5.5, 5.0])


@pytest.mark.slow  # moto's S3 server
def test_report_on_a_sweep_prefix_on_s3(s3_server, tmp_path, capsys):
    bucket = "genbatch-leaderboard"
    s3_server.create_bucket(Bucket=bucket)
    for guidance, shift in ((3.0, 0.0), (5.0, 1.0)):
        run = make_scored_run(
            tmp_path / f"generation.guidance_scale={guidance}",
            {C.CLIP_SCORE: [20.0 + shift, 21.0 + shift, 22.0 - shift]},
            settings={"generation.guidance_scale": guidance},
        )
        for file in run.rglob("*"):
            if file.is_file():
                s3_server.upload_file(str(file), bucket, f"sweep/{file.relative_to(tmp_path)}")
    sweep = f"s3://{bucket}/sweep"
    assert sweep_runs(sweep) == [f"{sweep}/generation.guidance_scale=3.0", f"{sweep}/generation.guidance_scale=5.0"]
    assert main(["report", sweep]) == 0
    assert capsys.readouterr().out.strip() == (
        f"genbatch: leaderboard of 2 runs: {sweep}/report/leaderboard.html "
        "(also leaderboard.md, leaderboard.json, plots)"
    )
    board = json.loads(s3_server.get_object(Bucket=bucket, Key="sweep/report/leaderboard.json")["Body"].read())
    assert [r["run"] for r in board["ranking"]] == [
        f"{sweep}/generation.guidance_scale=5.0",
        f"{sweep}/generation.guidance_scale=3.0",
    ]
    assert [r["mean"] for r in board["ranking"]] == pytest.approx([64 / 3, 21.0])  # 21, 22, 21 and 20, 21, 22
    pareto = s3_server.get_object(Bucket=bucket, Key="sweep/report/pareto.png")["Body"].read()
    assert Image.open(io.BytesIO(pareto)).format == "PNG"


def test_rows_left_out_are_said_in_one_line(four_runs, tmp_path, caplog):
    runs = [four_runs[g] for g in (3.0, 7.5, 10.0)]
    with caplog.at_level("WARNING", logger="jobs.report.leaderboard"):
        build_leaderboard(runs)
    assert caplog.messages == [
        "3 runs compared on the 53 ids every run scored; rows left out: 7 of g3.0, 7 of g7.5, 2 of g10.0"
    ]


def test_set_metrics_are_asked_for_each_run_only_with_a_reference(four_runs, tmp_path, monkeypatch):
    """The slot the set-metrics function fills: --reference, --fid-weights and --cmmd-model reach it."""
    from jobs.report import leaderboard

    asked = []

    def set_metrics(runs, reference, fid_weights=None, cmmd_model=None):
        asked.append((reference, fid_weights, cmmd_model))
        return None if reference is None else {run.path: {"fid": 12.5, "kid_mean": None} for run in runs}

    monkeypatch.setattr(leaderboard, "set_metrics", set_metrics)
    runs = [str(four_runs[g]) for g in (3.0, 5.0, 7.5)]
    assert main(["compare", *runs, "-o", str(tmp_path / "plain")]) == 0
    assert json.loads((tmp_path / "plain" / "compare.json").read_text())["set_metrics"] is None
    assert "Against the reference" not in (tmp_path / "plain" / "compare.html").read_text()
    out = tmp_path / "ref"
    argv = ["compare", *runs, "-o", str(out), "--reference", "ref/", "--fid-weights", "w.pth", "--cmmd-model", "tiny"]
    assert main(argv) == 0
    assert asked == [(None, None, None), ("ref/", "w.pth", "tiny")]
    assert json.loads((out / "compare.json").read_text())["set_metrics"] == {
        run: {"fid": 12.5, "kid_mean": None} for run in runs
    }
    html = (out / "compare.html").read_text()
    assert f'<tr><td>{runs[0]}</td><td class="n">12.500</td><td class="n">–</td></tr>' in html
    assert f"| {runs[1]} | 12.500 | – |" in (out / "compare.md").read_text()


def test_each_group_gets_its_own_ranking(tmp_path):
    """Runs with a category column: per category, each run's mean over that category's shared ids."""
    rng = np.random.default_rng(5)
    base = rng.normal(25, 3, 45)
    runs = []
    for k, boost in enumerate([(0.0, 2.0, 0.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.5)]):
        scores = [float(np.float32(s + boost[i % 3] + rng.normal(0, 0.2))) for i, s in enumerate(base)]
        runs.append(make_run(tmp_path / f"run{k}", scores, failed={4} if k == 1 else set()))
    data, _ = build_leaderboard(runs)
    assert data["group_by"] == "category"
    shared = [i for i in range(45) if i != 4]
    overall = {r["run"]: r["rank"] for r in data["rankings"][C.CLIP_SCORE]["runs"]}
    for k, name in enumerate(CATEGORIES):
        ids = [f"r{i:06d}" for i in shared if i % 3 == k]
        means = {str(run): np.mean([parquet_scores(run, C.CLIP_SCORE)[i] for i in ids]) for run in runs}
        group = data["group_rankings"][name]
        assert group["n"] == len(ids)
        assert [r["run"] for r in group["runs"]] == sorted(means, key=lambda run: -means[run])
        assert [r["mean"] for r in group["runs"]] == pytest.approx(sorted(means.values(), reverse=True), abs=1e-9)
        assert [r["rank"] for r in group["runs"]] == [overall[r["run"]] for r in group["runs"]]
    # each run was boosted on one category: it wins that one
    assert [data["group_rankings"][name]["runs"][0]["run"] for name in CATEGORIES] == [
        str(runs[1]),
        str(runs[0]),
        str(runs[2]),
    ]


def test_a_single_run_report_summarises_its_other_score_columns(tmp_path):
    """`genbatch report` on a run with `scores:` columns: each summarised over the ok rows that have it."""
    rng = np.random.default_rng(3)
    pick, aesthetic = list(rng.normal(21, 1, 30)), list(rng.normal(5, 0.5, 30))
    aesthetic[7] = None  # an ok row without an aesthetic score: left out of that score alone
    scores = {C.CLIP_SCORE: list(rng.normal(25, 2, 30)), C.PICKSCORE: pick, C.AESTHETIC: aesthetic}
    run = make_scored_run(tmp_path / "run", scores, failed={2, 11})
    assert main(["report", str(run)]) == 0
    summary = json.loads((run / "report" / "report.json").read_text())["scores"]
    assert list(summary) == [C.PICKSCORE, C.AESTHETIC]
    for name, values, skipped in [(C.PICKSCORE, pick, {2, 11}), (C.AESTHETIC, aesthetic, {2, 7, 11})]:
        expected = np.array([np.float32(values[k]) for k in range(30) if k not in skipped], dtype=np.float64)
        assert summary[name]["n"] == len(expected)
        assert summary[name]["mean"] == pytest.approx(expected.mean(), rel=1e-12)
        assert summary[name]["median"] == pytest.approx(np.median(expected), rel=1e-12)
        assert summary[name]["ci95"][0] < expected.mean() < summary[name]["ci95"][1]
    html = (run / "report" / "report.html").read_text()
    assert "<h2>Other scores</h2>" in html and f"{summary[C.PICKSCORE]['mean']:.3f}" in html
    assert f"| aesthetic | 27 | {summary[C.AESTHETIC]['mean']:.3f} |" in (run / "report" / "report.md").read_text()
