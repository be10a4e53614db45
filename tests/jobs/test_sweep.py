"""Sweeps: expanding `sweep:` into runs, naming their folders, and one Ray job serving every run."""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pyarrow.parquet as pq
import pytest
import yaml

from jobs.cli.main import main
from jobs.config.schema import JobConfig, load_config
from jobs.config.sweep_plan import MAX_COMBINATIONS, MAX_FOLDER_NAME, expand_sweep, folder_name, folder_names
from jobs.errors import ConfigError, OutputError
from jobs.pool.dispatch import Dispatcher, DispatchOutcome, JobHooks
from jobs.run.driver import run_job
from jobs.run.sweep import group_runs, run_sweep
from jobs.runfolder.shard_files import is_sweep_folder
from jobs.runfolder.status import format_sweep_status, sweep_status
from tests.conftest import generation_defaults, read_output, small_config, write_manifest
from tests.helpers.fake_actors import FakeBackend
from tests.helpers.fake_actors import shards as fake_shards
from workers.io import columns as C
from workers.tasks import RunBinding

SAFE = re.compile(r"[A-Za-z0-9._=,-]+")
AXES = {"generation.guidance_scale": [3.0, 7.5], "model.scheduler": ["ddim", "euler_a"]}
FOLDERS = [
    "guidance_scale=3.0,scheduler=ddim",
    "guidance_scale=3.0,scheduler=euler_a",
    "guidance_scale=7.5,scheduler=ddim",
    "guidance_scale=7.5,scheduler=euler_a",
]


def sweep_config(tmp_path, axes=AXES, **sections) -> JobConfig:
    return JobConfig.model_validate(small_config(tmp_path / "m.parquet", tmp_path / "sweep", sweep=axes, **sections))


# Folder names.


def test_a_folder_name_is_the_short_keys_and_values_in_the_sweeps_order():
    assert folder_name({"generation.guidance_scale": 7.5, "model.scheduler": "ddim"}) == FOLDERS[2]
    assert folder_name({"model.scheduler": "ddim", "generation.steps": 30}) == "scheduler=ddim,steps=30"
    assert folder_name({"model.scheduler": None, "performance.vae_tiling": True}) == "scheduler=null,vae_tiling=true"


def test_keys_that_share_their_last_part_are_named_in_full():
    assert folder_name({"model.id": "tiny", "other.id": "x"}) == "model.id=tiny,other.id=x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("stabilityai/sdxl-turbo", "id=stabilityai_sdxl-turbo"),
        ("../../etc/passwd", "id=.._.._etc_passwd"),
        ("a b\tc", "id=a_b_c"),
        ("café ☕", "id=caf___"),  # é, the space and ☕
        ("x=1,y=2", "id=x_1_y_2"),
        ("C:\\models\\v1.", "id=C__models_v1_"),  # no trailing dot: Windows would drop it
        ('"quoted"*?<>|', "id=_quoted______"),
        ("\x00nul", "id=_nul"),
    ],
)
def test_nasty_values_become_safe_names(value, expected):
    name = folder_name({"model.id": value})
    assert name == expected
    assert SAFE.fullmatch(name)


def test_a_long_name_is_cut_and_ends_in_a_hash_of_the_settings():
    long_a = {"generation.negative_prompt": "blurry, " * 40 + "a"}
    long_b = {"generation.negative_prompt": "blurry, " * 40 + "b"}  # same first 120 characters
    name_a, name_b = folder_name(long_a), folder_name(long_b)
    assert len(name_a) == len(name_b) == MAX_FOLDER_NAME
    assert name_a[:109] == name_b[:109] and name_a != name_b
    assert re.fullmatch(r"negative_prompt=blurry__.*-[0-9a-f]{10}", name_a)
    assert folder_name(dict(long_a)) == name_a  # deterministic


def test_names_that_collide_once_made_safe_or_case_folded_get_a_hash_each():
    combos = [{"model.id": "a/b"}, {"model.id": "a_b"}, {"model.id": "A_B"}, {"model.id": "tiny"}]
    names = folder_names(combos)
    assert names[3] == "id=tiny"
    assert all(re.fullmatch(r"id=(a_b|A_B)-[0-9a-f]{10}", name) for name in names[:3])
    assert len({name.casefold() for name in names}) == 4


# Expansion and validation.


def test_every_combination_is_a_full_config_in_its_own_folder(tmp_path):
    runs = expand_sweep(sweep_config(tmp_path), "s.yaml")
    assert [run.folder for run in runs] == FOLDERS
    assert [run.settings for run in runs][1] == {"generation.guidance_scale": 3.0, "model.scheduler": "euler_a"}
    for run in runs:
        assert run.config.output.path == str(tmp_path / "sweep" / run.folder)
        assert run.config.sweep is None
        assert run.config.generation.guidance_scale == run.settings["generation.guidance_scale"]
        assert run.config.model.scheduler == run.settings["model.scheduler"]
        assert run.config.generation.steps == 2  # the rest as the config says
    # One actor group: the runs differ only in what a task carries.
    assert len(group_runs_of(runs)) == 1


def group_runs_of(runs):
    class _Held:  # group_runs only looks at each run's config
        def __init__(self, run):
            self.config, self.sweep = run.config, run

    return group_runs([_Held(run) for run in runs])  # type: ignore[list-item]


def test_a_model_axis_makes_one_actor_group_per_model(tmp_path, tiny_dirs):
    axes = {"model.id": ["tiny", str(tiny_dirs[0])], "generation.steps": [1, 2]}
    groups = group_runs_of(expand_sweep(sweep_config(tmp_path, axes), "s.yaml"))
    assert [[run.sweep.settings for run in group] for group in groups] == [
        [{"model.id": "tiny", "generation.steps": 1}, {"model.id": "tiny", "generation.steps": 2}],
        [
            {"model.id": str(tiny_dirs[0]), "generation.steps": 1},
            {"model.id": str(tiny_dirs[0]), "generation.steps": 2},
        ],
    ]


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        (
            {"generation.guidance_scale": [3.0, -1]},
            "s.yaml: sweep generation.guidance_scale=-1: generation.guidance_scale: "
            "Input should be greater than or equal to 0",
        ),
        (
            {"model.scheduler": ["ddim", "nope"]},
            "s.yaml: sweep model.scheduler='nope': model.scheduler: unknown scheduler",
        ),
        ({"generation.stepz": [1]}, "s.yaml: sweep generation.stepz=1: unknown key 'generation.stepz'"),
        ({"generation.steps.x": [1]}, "s.yaml: sweep: generation.steps.x: generation.steps is not a section"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_key_and_value(tmp_path, axes, message):
    with pytest.raises(ConfigError) as error:
        expand_sweep(sweep_config(tmp_path, axes), "s.yaml")
    assert str(error.value).startswith(message)


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"output.path": ["a", "b"]}, "sweep: Value error, 'output.path' cannot be swept"),
        ({"seed": []}, "'seed' has no values"),
        ({"seed": [1, 2, 1]}, "'seed' lists 1 more than once"),
    ],
)
def test_the_sweep_section_itself_is_checked_when_the_config_is_read(tmp_path, axes, message):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_config(tmp_path / "m.parquet", tmp_path / "o", sweep=axes)))
    with pytest.raises(ConfigError, match=re.escape(message.removeprefix("sweep: Value error, "))):
        load_config(path)


def test_more_combinations_than_the_limit_need_yes(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ["a"], "prompt": ["a fox"]})
    axes = {"seed": list(range(MAX_COMBINATIONS + 1))}
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_config(manifest, tmp_path / "o", sweep=axes)))
    assert main(["run", str(path), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: sweep has 65 combinations, more than 64; rerun with --yes to run them all"
    )
    assert not (tmp_path / "o").exists()  # nothing written


def test_run_job_refuses_a_sweep(tmp_path):
    with pytest.raises(
        ConfigError,
        match=re.escape("sweep: a sweep runs with jobs.run.sweep.run_sweep (genbatch run does), not run_job"),
    ):
        run_job(sweep_config(tmp_path))


def test_shards_of_two_runs_with_the_same_number_are_retried_each_on_its_own():
    """Runs share one queue and each numbers its shards from 0: one run's failures must not use up another's retries."""
    backend = FakeBackend(faults={("0#1", 0): RuntimeError("bad shard")})
    tasks = [
        replace(shard, run=RunBinding(f"/out/{run}", run, None, 0, None, generation_defaults()))
        for run in ("a", "b")
        for shard in fake_shards(1)
    ]
    dispatcher = Dispatcher(backend, 1, tasks, 1, on_progress=lambda *_: None, on_workers=lambda *_: None)
    outcome = dispatcher.run()
    assert backend.runs == [("0#1", 0)] * 4  # each shard tried twice (max_shard_retries: 1)
    assert sorted(f.shard.run.output_dir for f in outcome.failures) == ["/out/a", "/out/b"]
    assert outcome.retries == 2


# One Ray job for the whole sweep.

MANIFEST = {"id": ["a", "b", "c", "d", "e", "f"], "prompt": ["a fox", "a bird", "a tree", "a sun", "a cat", "a cloud"]}


def by_id(folder):
    table = read_output(folder)
    return {row[C.ID]: row for row in table.to_pylist()}


@pytest.mark.slow
def test_a_sweep_writes_what_standalone_runs_write_with_one_model_load(tmp_path, ray_session, capsys):
    manifest = write_manifest(tmp_path / "m.parquet", MANIFEST)
    config = JobConfig.model_validate(small_config(manifest, tmp_path / "sweep", sweep=AXES))
    output = tmp_path / "sweep"
    first_run = []  # the first run's job.json status as each shard of the sweep is written

    def shard_done(result):
        first_run.append(json.loads((output / FOLDERS[0] / "job.json").read_text())["status"])

    summary = run_sweep(config, "s.yaml", progress="off", hooks=JobHooks(on_shard_done=shard_done))
    assert summary.exit_code == 0 and summary.ok == 24 and [folder for folder, _ in summary.runs] == FOLDERS
    # Two shards per run, run by run: the first run says finished once its second shard is written.
    assert first_run == ["running"] + ["finished"] * 7
    record = json.loads((output / "sweep.json").read_text())
    assert record["runs"][3] == {
        "folder": FOLDERS[3],
        "settings": {"generation.guidance_scale": 7.5, "model.scheduler": "euler_a"},
        "rows": 6,
    }
    # One group, one actor: it loaded the model once and wrote every run's shards.
    [group] = record["groups"]
    assert group["runs"] == FOLDERS and len(group["workers"]) == 1
    pids = {json.loads(f.read_text())["pid"] for f in output.glob("*/stats/shard-*.json")}
    assert pids == {group["workers"][0]["pid"]}
    assert len(list(output.glob("*/data/shard-*.parquet"))) == 8
    runs = {folder: by_id(output / folder) for folder in FOLDERS}
    for folder, rows in runs.items():
        assert sorted(rows) == MANIFEST["id"]
        scheduler = folder.split("scheduler=")[1]
        assert {row[C.SCHEDULER] for row in rows.values()} == {scheduler}
        assert json.loads((output / folder / "job.json").read_text())["status"] == "finished"
    # The settings were applied per run: other guidance or scheduler, other pixels.
    assert runs[FOLDERS[0]]["a"][C.IMAGE] != runs[FOLDERS[1]]["a"][C.IMAGE]
    assert runs[FOLDERS[0]]["a"][C.IMAGE] != runs[FOLDERS[2]]["a"][C.IMAGE]

    # A standalone run of one combination (its own fresh actor) writes the same bytes and scores.
    alone_dir = tmp_path / "alone"
    alone = small_config(manifest, alone_dir, generation={"guidance_scale": 7.5}, model={"scheduler": "euler_a"})
    assert run_job(JobConfig.model_validate(alone), progress="off").exit_code == 0
    standalone = by_id(alone_dir)
    for row_id, row in standalone.items():
        swept = runs[FOLDERS[3]][row_id]
        assert swept[C.IMAGE] == row[C.IMAGE]
        assert swept[C.CLIP_SCORE] == row[C.CLIP_SCORE]
    # Same job: the standalone's job.json identity is the run folder's.
    identity = json.loads((alone_dir / "job.json").read_text())["identity"]
    assert json.loads((output / FOLDERS[3] / "job.json").read_text())["identity"] == identity

    # The sweep resumes: nothing to do. So does each run folder on its own, with the equivalent config.
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_config(manifest, output, sweep=AXES)))
    assert main(["run", str(path), "--quiet"]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "genbatch: nothing to do: all 4 runs are complete (24 ok, 0 failed of 24 rows)"
    )
    assert json.loads((output / "sweep.json").read_text()) == record  # what the first run recorded stays
    own = small_config(
        manifest, output / FOLDERS[3], generation={"guidance_scale": 7.5}, model={"scheduler": "euler_a"}
    )
    assert run_job(JobConfig.model_validate(own), progress="off").shards_run == 0

    # genbatch status summarises every run, then the total.
    assert is_sweep_folder(str(output))
    lines = format_sweep_status(sweep_status(str(output))).splitlines()
    assert lines[0] == f"sweep:    4 runs in {output}"
    assert [line.split()[:4] for line in lines[2:6]] == [[folder, "finished", "6", "/"] for folder in FOLDERS]
    assert lines[6] == "total:    24 / 24 rows done (100.0%): 24 ok, 0 failed; 4 finished"
    assert pq.read_table(output / FOLDERS[0] / "data" / "shard-00000.parquet").num_rows == 4
    assert main(["status", str(output), "--log-format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert [(run["folder"], run["state"], run["ok"]) for run in status["runs"]] == [(f, "finished", 6) for f in FOLDERS]
    assert (status["rows"], status["rows_done"], status["ok"], status["failed"]) == (24, 24, 24, 0)


def test_a_run_folder_that_holds_something_else_stops_the_sweep_before_anything_is_written(tmp_path):
    manifest = write_manifest(tmp_path / "m.parquet", MANIFEST)
    config = JobConfig.model_validate(small_config(manifest, tmp_path / "sweep", sweep=AXES))
    taken = tmp_path / "sweep" / FOLDERS[2]
    taken.mkdir(parents=True)
    (taken / "job.json").write_text("[]")
    with pytest.raises(OutputError) as error:
        run_sweep(config, "s.yaml", progress="off")
    assert str(error.value) == f"{taken}/job.json: not a genbatch job record; rerun with --overwrite to start over"
    assert sorted(path.name for path in (tmp_path / "sweep").rglob("*") if path.is_file()) == [
        ".genbatch.lock",
        ".genbatch.lock",
        ".genbatch.lock",
        "job.json",
    ]


def test_status_of_a_sweep_counts_the_rows_of_runs_not_started(tmp_path, capsys):
    output = tmp_path / "sweep"
    done = output / FOLDERS[0]
    done.mkdir(parents=True)
    record = {
        "status": "finished",
        "identity": {"seed": 0},
        "shards": 0,
        "manifest": {"rows": 6},
        "counts": {"ok": 5, "failed": 1},
        "images_per_s": 1.5,
        "started_at": "2026-12-01T09:00:00+00:00",
    }
    (done / "job.json").write_text(json.dumps(record))
    runs = [{"folder": folder, "settings": {}, "rows": 6} for folder in FOLDERS[:2]]
    (output / "sweep.json").write_text(json.dumps({"sweep": AXES, "runs": runs}))
    assert is_sweep_folder(str(output)) and not is_sweep_folder(str(done))
    assert format_sweep_status(sweep_status(str(output))).splitlines() == [
        f"sweep:    2 runs in {output}",
        "runs:     folder, state, rows done, ok, failed, images/s",
        f"          {FOLDERS[0]}     finished  6 / 6  5  1  1.50",
        f"          {FOLDERS[1]}  not started  0 / 6  0  0  -",
        "total:    6 / 12 rows done (50.0%): 5 ok, 1 failed; 1 finished, 1 not started",
    ]
    assert main(["status", str(output), "--log-format", "json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["runs"][1] == {
        "folder": FOLDERS[1],
        "state": "not started",
        "rows": 6,
        "rows_done": 0,
        "ok": 0,
        "failed": 0,
    }
    assert (status["rows"], status["rows_done"]) == (12, 6)
    # A sweep.json from before it recorded each run's rows: the total is not known, and not made up.
    (output / "sweep.json").write_text(json.dumps({"sweep": AXES, "runs": [{"folder": f} for f in FOLDERS[:2]]}))
    assert format_sweep_status(sweep_status(str(output))).splitlines()[3:] == [
        f"          {FOLDERS[1]}  not started  0 / ?  0  0  -",
        "total:    6 / ? rows done: 5 ok, 1 failed; 1 finished, 1 not started",
    ]


@pytest.mark.parametrize(
    ("runs", "problem"),
    [
        (["a"], "key 'runs[0]' should be an object, not \"a\""),
        ([{"settings": {}}], "key 'runs[0].folder' is missing"),
        ([{"folder": "a", "rows": "6"}], "key 'runs[0].rows' should be a whole number >= 0, not \"6\""),
    ],
    ids=["not an object", "no folder", "rows not a number"],
)
def test_a_sweep_file_status_cannot_read_is_one_line_naming_the_file_and_key(tmp_path, capsys, runs, problem):
    (tmp_path / "sweep.json").write_text(json.dumps({"sweep": AXES, "runs": runs}))
    assert main(["status", str(tmp_path)]) == 2
    assert capsys.readouterr() == ("", f"genbatch: error: {tmp_path}/sweep.json: {problem}\n")


TWO_POOLS = {"resources.batch_size": [1, 2], "generation.guidance_scale": [3.0, 7.5]}  # batch size: one pool each


def test_a_sweep_stopped_in_its_first_pool_says_which_runs_it_did_not_start(tmp_path, monkeypatch, capsys):
    """The first pool's runs write a shard each, then a SIGTERM stops the sweep (the pool is faked: no Ray)."""
    from jobs.run import sweep
    from jobs.run.lifecycle import GroupResult
    from jobs.run.records import JobSummary, record_end
    from workers.io.shard_stats import ShardStats, write_shard_stats

    manifest = write_manifest(tmp_path / "m.parquet", MANIFEST)  # 6 rows: 2 shards per run
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump(small_config(manifest, tmp_path / "sweep", sweep=TWO_POOLS), sort_keys=False))
    pools = []

    def first_pool_stopped(group, *args, **kwargs):
        pools.append([run.folder for run in group])
        summaries = []
        for run in group:
            stats = ShardStats(0, 4, 4, 0, 4, 2.0, 2.0, "worker-0", "node", "", 7, "2026-12-01T09:01:00+00:00", run.key)
            write_shard_stats(run.output, stats)
            summary = JobSummary(6, 4, 0, 2, 2, 2, 0, 3.0, 1.0, 2.0, run.output, interrupted=True, signal="SIGTERM")
            record_end(run.output, run.record, "interrupted", summary, DispatchOutcome(), [])
            summaries.append(summary)
        return GroupResult(summaries, [])

    monkeypatch.setattr(sweep, "run_group", first_pool_stopped)
    monkeypatch.setattr(sweep.cluster, "connect", lambda *args, **kwargs: None)
    assert main(["run", str(config), "--quiet"]) == 143
    folders = ["batch_size=1,guidance_scale=3.0", "batch_size=1,guidance_scale=7.5"]
    later = ["batch_size=2,guidance_scale=3.0", "batch_size=2,guidance_scale=7.5"]
    assert pools == [folders]
    out = capsys.readouterr().out.splitlines()
    assert out[:4] == [
        f"genbatch:   {folders[0]}: 4 ok, 0 failed, 2 not run of 6 rows (2.00 images/s)",
        f"genbatch:   {folders[1]}: 4 ok, 0 failed, 2 not run of 6 rows (2.00 images/s)",
        f"genbatch:   {later[0]}: 0 ok, 0 failed, 6 not run of 6 rows (not started)",
        f"genbatch:   {later[1]}: 0 ok, 0 failed, 6 not run of 6 rows (not started)",
    ]
    assert out[4].startswith("genbatch: interrupted: 8 ok, 0 failed of 24 rows, 16 not run in 4 runs, ")
    output = tmp_path / "sweep"
    record = json.loads((output / "sweep.json").read_text())
    assert [(run["folder"], run["rows"]) for run in record["runs"]] == [(folder, 6) for folder in folders + later]
    assert [path.name for path in sorted(output.glob("*/job.json"))] == ["job.json"] * 2  # the later runs: nothing
    # Status: the total counts the runs not started (24 rows, not 12).
    lines = format_sweep_status(sweep_status(str(output))).splitlines()
    assert [line.split("  ")[-5:] for line in lines[2:6]] == [
        ["interrupted", "4 / 6", "4", "0", "2.00"],
        ["interrupted", "4 / 6", "4", "0", "2.00"],
        ["not started", "0 / 6", "0", "0", "-"],
        ["not started", "0 / 6", "0", "0", "-"],
    ]
    assert lines[6] == "total:    8 / 24 rows done (33.3%): 8 ok, 0 failed; 2 interrupted, 2 not started"


@pytest.mark.slow
def test_a_model_axis_runs_one_pool_per_model_one_after_the_other(tmp_path, ray_session, tiny_dirs):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ["a", "b"], "prompt": ["a fox", "a bird"]})
    axes = {"model.id": ["tiny", str(tiny_dirs[0])]}  # the same weights under two names: two pools
    config = JobConfig.model_validate(small_config(manifest, tmp_path / "sweep", sweep=axes))
    summary = run_sweep(config, "s.yaml", progress="off")
    assert summary.exit_code == 0 and summary.ok == 4
    first, second = summary.groups
    assert first["runs"] == ["id=tiny"] and second["runs"] == [folder_name({"model.id": str(tiny_dirs[0])})]
    assert len(first["workers"]) == len(second["workers"]) == 1
    assert first["workers"][0]["pid"] != second["workers"][0]["pid"]
    images = [
        {row_id: row[C.IMAGE] for row_id, row in by_id(tmp_path / "sweep" / group["runs"][0]).items()}
        for group in (first, second)
    ]
    assert images[0] == images[1] and sorted(images[0]) == ["a", "b"]


@pytest.mark.parametrize(
    ("axes", "repeated"),
    [
        (
            {"generation.guidance_scale": [2, 3.0, 2.0]},
            "'generation.guidance_scale' lists 2.0 more than once (as 2 and 2.0)",
        ),
        ({"generation.steps": [4, 4.0]}, "'generation.steps' lists 4 more than once (as 4 and 4.0)"),
    ],
)
def test_values_that_validate_to_the_same_setting_are_one_repeated_value(tmp_path, capsys, axes, repeated):
    manifest = write_manifest(tmp_path / "m.parquet", {"id": ["a"], "prompt": ["a fox"]})
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(small_config(manifest, tmp_path / "o", sweep=axes)))
    assert main(["run", str(path), "--quiet"]) == 2
    assert capsys.readouterr().err == f"genbatch: error: {path}: sweep: {repeated}\n"
    assert not (tmp_path / "o").exists()  # nothing written, nothing run twice
