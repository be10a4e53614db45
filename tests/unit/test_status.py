"""`genbatch status` against what is on disk: a rescore under way or stopped half way, and job.json files
that are not what genbatch writes. Folders are written directly (no Ray): shard files with their footers,
stats files and job.json, as a finished run leaves them."""

from __future__ import annotations

import json
from dataclasses import replace

import pyarrow as pa
import pytest

from jobs.cli.main import main
from jobs.pool.dispatch import DispatchOutcome
from jobs.report.leaderboard import sweep_runs
from jobs.run import rescore
from jobs.runfolder.jobfile import identity_key, read_job_file, write_job_file
from jobs.runfolder.lock import OutputLock
from jobs.runfolder.shard_files import is_sweep_folder
from jobs.runfolder.status import format_status, job_status, sweep_status
from tests.conftest import small_config
from workers.io import columns as C
from workers.io import layout
from workers.io.shard_stats import ShardStats, write_shard_stats
from workers.io.writer import ShardFooter, read_footer, write_shard

IDENTITY = {"seed": 0}
SHARD_ROWS = [4, 4, 3]  # 11 rows; the last shard's last row failed
FINISHED = {
    "status": "finished",
    "identity": IDENTITY,
    "shards": len(SHARD_ROWS),
    "manifest": {"rows": sum(SHARD_ROWS)},
    "counts": {"rows": 11, "ok": 10, "failed": 1, "not_run": 0},
    "images_per_s": 2.5,
    "started_at": "2026-12-01T09:00:00+00:00",
    "finished_at": "2026-12-01T09:05:00+00:00",
    "workers": [],
}


def written_run(tmp_path, **record) -> str:
    """A finished run's folder: its shards (footers under its job key), their stats files, job.json."""
    run = tmp_path / "run"
    key = identity_key(IDENTITY)
    for index, rows in enumerate(SHARD_ROWS):
        failed = 1 if index == len(SHARD_ROWS) - 1 else 0
        statuses = [C.STATUS_OK] * (rows - failed) + ["error"] * failed
        table = pa.table({C.ID: [f"r{index}-{row}" for row in range(rows)], C.STATUS: statuses})
        write_shard(table, str(run), ShardFooter(key, index, rows, rows - failed, failed))
        stats = ShardStats(
            index, rows, rows - failed, failed, rows, 2.0, rows / 2, "worker-0", "node", "10.0.0.1", 7,
            f"2026-12-01T09:0{index + 1}:00+00:00", key,
        )  # fmt: skip
        write_shard_stats(str(run), stats)
    config = small_config(tmp_path / "m.parquet", run)
    (run / "job.json").write_text(json.dumps({**FINISHED, "config": config, **record}))
    return str(run)


def rescore_like_an_actor(output: str, index: int, new_key: str) -> None:
    """What the rescoring actor leaves on disk for a shard: its file and its stats under the new job key."""
    path = layout.shard_path(output, index)
    footer = read_footer(path)
    assert footer is not None
    write_shard(pa.table({C.ID: ["x"] * footer.rows}), output, replace(footer, job_key=new_key))
    stats_path = layout.stats_path(output, index)
    with open(stats_path) as handle:
        stats = json.load(handle)
    with open(stats_path, "w") as handle:
        json.dump({**stats, "job_key": new_key}, handle)


def test_status_of_a_rescore_stopped_half_way_says_so_until_a_rerun_finishes_it(tmp_path, monkeypatch, capsys):
    worker = {"name": "worker-0", "device": "cpu", "load_seconds": 1.25, "compile": False, "first_image_seconds": 3}
    run = written_run(tmp_path, workers=[worker])

    def stopped_after_one_shard(config, settings, todo, *args):
        rescore_like_an_actor(settings.output_dir, todo[0].index, settings.new_key)
        raise KeyboardInterrupt  # as a SIGTERM stops it

    monkeypatch.setattr(rescore, "score_on_actors", stopped_after_one_shard)
    with pytest.raises(KeyboardInterrupt):
        rescore.rescore_run(run, ["scores.pickscore.model=tiny-pickscore"])
    started = json.loads((tmp_path / "run" / "job.json").read_text())["rescoring"]["started_at"]
    # Not "finished": 1 of the 3 shards has the new scores. Every shard and row is still there.
    stopped = job_status(run)
    assert format_status(stopped).splitlines()[:3] == [
        f"job:      rescoring (interrupted): 1 / 3 shards rescored (rescore started {started})",
        "rows:     11 / 11 done (100.0%): 10 ok, 1 failed",
        "shards:   3 / 3 written",
    ]
    assert main(["status", run, "--log-format", "json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["state"], shown["shards_done"], shown["rows_done"]) == ("rescoring", 3, 11)
    assert shown["rescore"] == {"shards_rescored": 1, "interrupted": True, "started_at": started}
    with OutputLock(run):  # while the rescore runs, it holds the output lock
        assert format_status(job_status(run)).splitlines()[0] == (
            f"job:      rescoring: 1 / 3 shards rescored (rescore started {started})"
        )

    def the_rest(config, settings, todo, *args):
        assert [task.index for task in todo] == [1, 2]
        for task in todo:
            rescore_like_an_actor(settings.output_dir, task.index, settings.new_key)
        return DispatchOutcome()

    monkeypatch.setattr(rescore, "score_on_actors", the_rest)
    rescore.rescore_run(run, ["scores.pickscore.model=tiny-pickscore"])
    assert "rescoring" not in json.loads((tmp_path / "run" / "job.json").read_text())
    lines = format_status(job_status(run)).splitlines()
    assert lines[:3] == [
        "job:      finished (started 2026-12-01T09:00:00+00:00)",
        "rows:     11 / 11 done (100.0%): 10 ok, 1 failed",
        "shards:   3 / 3 written",
    ]
    assert lines[-1] == "          worker-0  cpu  1.2  off  -  3.0"  # job.json's workers, as the run recorded them


def test_a_rescore_stopped_after_its_last_shard_is_finished_by_a_rerun_with_nothing_to_rescore(tmp_path, monkeypatch):
    run = written_run(tmp_path)
    new_key = None

    def all_shards(config, settings, todo, *args):
        nonlocal new_key
        new_key = settings.new_key
        for task in todo:
            rescore_like_an_actor(settings.output_dir, task.index, settings.new_key)
        raise KeyboardInterrupt  # after the last shard, before job.json got the new identity

    monkeypatch.setattr(rescore, "score_on_actors", all_shards)
    with pytest.raises(KeyboardInterrupt):
        rescore.rescore_run(run, ["scores.pickscore.model=tiny-pickscore"])
    assert job_status(run).state_text == "rescoring (interrupted): 3 / 3 shards rescored"
    monkeypatch.setattr(rescore, "score_on_actors", lambda *args: pytest.fail("no shard is left to rescore"))
    assert rescore.rescore_run(run, ["scores.pickscore.model=tiny-pickscore"]).rescored == 0
    record = json.loads((tmp_path / "run" / "job.json").read_text())
    assert "rescoring" not in record and identity_key(record["identity"]) == new_key
    assert (job_status(run).state, job_status(run).shards_done) == ("finished", 3)


TIME = "an ISO 8601 time with its UTC offset"
BAD_RECORDS = [
    ({"counts": None}, "key 'counts' is missing"),
    ({"counts": {"ok": "10", "failed": 1}}, "key 'counts.ok' should be a whole number >= 0, not \"10\""),
    ({"counts": {"ok": 10}}, "key 'counts.failed' is missing"),
    ({"workers": {"name": "worker-0"}}, "key 'workers' should be a list, not an object"),
    ({"workers": ["worker-0"]}, "key 'workers[0]' should be an object, not \"worker-0\""),
    ({"workers": [{"load_seconds": "slow"}]}, "key 'workers[0].load_seconds' should be a number, not \"slow\""),
    ({"workers": [{"name": "w", "compile": "yes"}]}, "key 'workers[0].compile' should be a boolean, not \"yes\""),
    ({"manifest": None}, "key 'manifest' is missing"),
    ({"manifest": {"rows": -1}}, "key 'manifest.rows' should be a whole number >= 0, not -1"),
    ({"manifest": [11]}, "key 'manifest' should be an object, not a list"),
    ({"status": 1}, "key 'status' should be a string, not 1"),
    ({"started_at": "yesterday"}, f"key 'started_at' should be {TIME}, not \"yesterday\""),
    (
        {"status": "running", "resumed_at": "2026-12-01T09:00"},  # no UTC offset
        f"key 'resumed_at' should be {TIME}, not \"2026-12-01T09:00\"",
    ),
    ({"images_per_s": "fast"}, "key 'images_per_s' should be a number, not \"fast\""),
    (
        {"config": {"generation": {"images_per_prompt": 0}}},
        "key 'config.generation.images_per_prompt' should be a whole number >= 1, not 0",
    ),
    ({"config": {"generation": "x" * 50}}, "key 'config.generation' should be an object, not a string"),
    ({"rescoring": True}, "key 'rescoring' should be an object, not true"),
    ({"rescoring": {"started_at": "2026-12-01T10:00:00+00:00"}}, "key 'rescoring.job_key' is missing"),
]  # fmt: skip


@pytest.mark.parametrize(("change", "problem"), BAD_RECORDS, ids=[problem.split("'")[1] for _, problem in BAD_RECORDS])
def test_a_job_file_status_cannot_read_is_one_line_naming_the_file_and_key(tmp_path, capsys, change, problem):
    run = written_run(tmp_path, **change)
    if change.get("status") == "running":
        with OutputLock(run):  # a live run: its rate is measured from resumed_at
            assert main(["status", run]) == 2
    else:
        assert main(["status", run]) == 2
    assert capsys.readouterr() == ("", f"genbatch: error: {run}/job.json: {problem}\n")


def test_a_shard_whose_rescoring_attempt_died_before_its_stats_gets_them_when_a_retry_skips_it(tmp_path, model_cache):
    """Else the finished rescore's status would count that shard as not written (its stats, another job's)."""
    from workers.rescoring import RescoreWorker
    from workers.tasks import RescoreSettings, ScoreModels

    run = written_run(tmp_path)
    old_key, new_key = identity_key(IDENTITY), "the-rescored-job"
    rescore_like_an_actor(run, 1, new_key)
    stats_path = tmp_path / "run" / "stats" / layout.stats_file_name(1)
    stats_path.write_text(json.dumps({**json.loads(stats_path.read_text()), "job_key": old_key}))  # the attempt died
    scores = ScoreModels(pickscore="tiny", aesthetic=None, aesthetic_head=None)
    settings = RescoreSettings(scores, (C.PICKSCORE,), 2, "processor", run, old_key, new_key, 1, None)
    result = RescoreWorker(settings, 0).rescore_shard(1)
    assert (result.skipped, result.images, result.scored) == (True, 4, 4)
    assert json.loads(stats_path.read_text())["job_key"] == new_key
    assert json.loads((tmp_path / "run" / "stats" / layout.stats_file_name(0)).read_text())["job_key"] == old_key


def test_a_job_file_of_an_older_version_reads_and_is_written_back_as_it_was(tmp_path):
    """Keys it lacks stay absent, keys this version does not know are kept, values keep their JSON types."""
    run = tmp_path / "run"
    run.mkdir()
    older = {
        **FINISHED,
        "counts": {"ok": 10, "failed": 1},  # before not_run, shard_retries, ...
        "workers": [{"name": "worker-0", "device": "cpu", "load_seconds": 3, "pid": 7, "later": {"x": [1]}}],
        "resumed_at": None,
        "a_key_of_another_version": [1, "two"],
    }
    (run / "job.json").write_text(json.dumps(older))
    record = read_job_file(str(run))
    assert record is not None and (record.counts.ok, record.workers[0].load_seconds) == (10, 3)
    write_job_file(str(run), record)
    assert json.loads((run / "job.json").read_text()) == older


def test_a_folder_of_two_runs_is_a_sweep_for_status_as_for_report_also_without_sweep_json(tmp_path):
    sweep = tmp_path / "sweep"
    for folder in ("b", "a"):
        (sweep / folder).mkdir(parents=True)
        (sweep / folder / "job.json").write_text(json.dumps({**FINISHED, "shards": 0}))
    assert is_sweep_folder(str(sweep)) and sweep_runs(sweep) == [str(sweep / "a"), str(sweep / "b")]
    status = sweep_status(str(sweep))
    assert [(run.folder, run.state, run.rows) for run in status.runs] == [("a", "finished", 11), ("b", "finished", 11)]
    (sweep / "b" / "job.json").unlink()  # one run and no sweep.json: a folder holding a run, not a sweep
    assert not is_sweep_folder(str(sweep)) and sweep_runs(sweep) == []
