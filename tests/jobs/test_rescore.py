"""`genbatch rescore`: new score columns for a finished run's images, without regenerating them."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.config.schema import load_config
from jobs.errors import RescoreError
from jobs.inputs.manifest import read_manifest
from jobs.inputs.planner import plan_shards
from jobs.pool import cluster
from jobs.pool.dispatch import JobHooks
from jobs.run.rescore import rescore_run
from jobs.runfolder.jobfile import identity_key, read_job_file
from jobs.runfolder.resume import job_identity, plan_resume
from jobs.runfolder.status import job_status
from tests.conftest import read_output, write_config, write_manifest
from tests.helpers.runs import record_only_run
from tests.reference import decode_png, reference_aesthetic, reference_pickscore
from workers import rescoring
from workers.io import columns as C
from workers.io import layout
from workers.io.writer import read_footer, write_shard
from workers.models import tiny

PROMPTS = ["a red fox", "a blue bird", "a green tree", "a grey " * 20 + "THE END", "a yellow sun", "an orange cat"]
NEW_SCORES = ["scores.pickscore.model=tiny-pickscore", "scores.aesthetic={model: tiny, head: tiny}"]
SHARDS = 2  # 6 rows, shard_size 4


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, ray_session):
    """A finished tiny run without scores (2 shards), and its table; tests rescore copies of it."""
    folder = tmp_path_factory.mktemp("rescore")
    manifest = write_manifest(folder / "m.parquet", {"id": [f"r{i}" for i in range(6)], "prompt": PROMPTS})
    config = write_config(folder / "job.yaml", manifest, folder / "run")
    assert main(["run", str(config), "--quiet"]) == 0
    return config, folder / "run", read_output(folder / "run")


def copy_of(finished_run, tmp_path):
    config, run, before = finished_run
    shutil.copytree(run, tmp_path / "run")
    return config, tmp_path / "run", before


def check_rescored(config, run, before: pa.Table):
    """Rows, ids, pixels and every earlier column unchanged; new columns equal to independent recomputation;
    footers verify under the new job's key, stats follow them."""
    after = read_output(run)
    assert after.column_names == [*before.column_names, C.PICKSCORE, C.AESTHETIC]
    for name in before.column_names:  # the image column's bytes included
        assert after.column(name).equals(before.column(name)), name
    for row, prompt in enumerate(after.column(C.PROMPT).to_pylist()):
        pixels = decode_png(after.column(C.IMAGE)[row]["bytes"].as_py())
        pickscore = after.column(C.PICKSCORE)[row].as_py()
        if prompt:  # float32 of a batched vs a single forward (see test_scores)
            assert pickscore == pytest.approx(reference_pickscore(tiny.tiny_pickscore_dir(), pixels, prompt), abs=1e-3)
        else:
            assert pickscore is None
        aesthetic = reference_aesthetic(tiny.tiny_clip_dir(), tiny.tiny_aesthetic_head(), pixels)
        assert after.column(C.AESTHETIC)[row].as_py() == pytest.approx(aesthetic, abs=1e-5)
    new_config = load_config(config, NEW_SCORES)
    identity = job_identity(new_config, read_manifest(new_config.manifest, "generate"))
    key = identity_key(identity)
    record = json.loads((run / "job.json").read_text())
    assert record["identity"] == identity and record["config"]["scores"] == new_config.scores.model_dump(mode="json")
    for index in range(SHARDS):
        footer = read_footer(str(run / "data" / layout.shard_file_name(index)))
        assert footer is not None and footer.job_key == key
        stats = json.loads((run / "stats" / layout.stats_file_name(index)).read_text())
        assert stats["job_key"] == key
    status = job_status(str(run))
    assert (status.shards_done, status.rows_done, status.ok) == (SHARDS, 6, 6)
    # What `genbatch run` checks: every rescored shard is complete for the new job.
    manifest = read_manifest(new_config.manifest, "generate")
    plan = plan_resume(str(run), plan_shards(manifest, new_config.shard_size, 1), key, retry_failed=False)
    assert (sorted(plan.complete), plan.todo) == ([0, 1], [])
    assert (plan.complete[0].rows, plan.complete[0].ok, plan.complete[0].failed) == (4, 4, 0)


@pytest.mark.slow
def test_rescore_adds_score_columns_and_a_rerun_with_them_has_nothing_to_do(finished_run, tmp_path, capsys):
    config, run, before = copy_of(finished_run, tmp_path)
    args = ["rescore", str(run), *(part for setting in NEW_SCORES for part in ("--set", setting))]
    assert main(args) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .startswith("genbatch: rescored 2 of 2 shards (6 rows, 6 images scored; columns: pickscore, aesthetic) in ")
    )
    check_rescored(config, run, before)
    # The same job with the scores in its config: nothing to do.
    rerun = load_config(config, [f"output={run}", *NEW_SCORES])
    from jobs.run.driver import run_job

    summary = run_job(rerun, progress="off")
    assert (summary.shards_run, summary.ok) == (0, 6)
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines()[0] == "genbatch: nothing to do: all 2 shards already carry these scores"
    assert main([*args, "--log-format", "json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    summary = json.loads(line)
    assert (summary["event"], summary["shards"], summary["rescored"], summary["output"]) == ("summary", 2, 0, str(run))


def test_the_rescore_command_says_what_it_recovered_from(monkeypatch, capsys):
    from jobs.run import rescore

    done = rescore.RescoreSummary("out", 3, 3, 9, 9, ("pickscore",), (), 2.0, retries=2, replaced_workers=1)
    monkeypatch.setattr(rescore, "rescore_run", lambda *args, **kwargs: done)
    assert main(["rescore", "out", "--set", "scores.pickscore.model=tiny-pickscore"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        "genbatch: rescored 3 of 3 shards (9 rows, 9 images scored; columns: pickscore) in 2.0s",
        "genbatch: recovered: 2 shard retries, 1 workers replaced",
        "genbatch: output: out",
    ]
    assert main(["rescore", "out", "--set", "scores.pickscore.model=tiny-pickscore", "--log-format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == {
        "event": "summary",
        "output": "out",
        "shards": 3,
        "rescored": 3,
        "rows": 9,
        "images_scored": 9,
        "columns": ["pickscore"],
        "dropped": [],
        "seconds": 2.0,
        "retries": 2,
        "replaced_workers": 1,
    }


@pytest.mark.slow
def test_an_interrupted_rescore_goes_on_from_the_shards_it_rescored(finished_run, tmp_path):
    from jobs.run.rescore import rescored_config
    from jobs.runfolder.resume import scores_identity
    from jobs.runfolder.settings import score_models
    from workers.rescoring import RescoreWorker
    from workers.tasks import RescoreSettings

    config, run, before = copy_of(finished_run, tmp_path)
    # What the first rescore did before it was stopped: shard 1 only, by the actor class in-process.
    record = read_job_file(str(run))
    new_config = rescored_config(str(run / "job.json"), record, NEW_SCORES)
    old_key = identity_key(record.identity)
    new_key = identity_key({**record.identity, **scores_identity(new_config)})
    settings = RescoreSettings(
        score_models(new_config), (C.PICKSCORE, C.AESTHETIC), 2, "processor", str(run), old_key, new_key, 1, None
    )
    worker = RescoreWorker(settings, 0)
    first = worker.rescore_shard(1)
    shard_1 = (run / "data" / layout.shard_file_name(1)).read_bytes()
    # An attempt after one whose answer was lost (its actor died after the write) rewrites nothing.
    again = worker.rescore_shard(1)
    assert (first.skipped, again.skipped, again.scored, again.ok) == (False, True, first.scored, first.ok)
    assert (run / "data" / layout.shard_file_name(1)).read_bytes() == shard_1
    summary = rescore_run(str(run), NEW_SCORES)
    assert (summary.rescored, summary.rows) == (1, 4)  # shard 0 (4 rows); shard 1 was skipped
    assert (run / "data" / layout.shard_file_name(1)).read_bytes() == shard_1
    check_rescored(config, run, before)


@pytest.mark.slow
def test_setting_a_scorer_to_null_drops_its_column_and_restores_the_job(finished_run, tmp_path, monkeypatch):
    _, run, before = copy_of(finished_run, tmp_path)
    original_key = read_footer(str(run / "data" / layout.shard_file_name(0))).job_key
    rescore_run(str(run), ["scores.pickscore.model=tiny"])
    assert read_output(run).column_names == [*before.column_names, C.PICKSCORE]

    def refuse(*args, **kwargs):
        raise AssertionError("dropping a column starts no actor and decodes no image")

    # Dropping a column rewrites only tables and footers, on the driver.
    for module, name in ((cluster, "connect"), (rescoring, "_same_size_batches"), (rescoring, "_decode")):
        monkeypatch.setattr(module, name, refuse)
    summary = rescore_run(str(run), ["scores.pickscore=null"])
    assert (summary.rescored, summary.images_scored, summary.columns, summary.dropped) == (2, 0, (), (C.PICKSCORE,))
    assert read_output(run).equals(before)  # the image bytes and every other column included
    # Without scores the identity is the original run's again.
    assert read_footer(str(run / "data" / layout.shard_file_name(0))).job_key == original_key


def test_rescore_refuses_settings_that_change_images(tmp_path, capsys):
    run = record_only_run(tmp_path)
    assert main(["rescore", str(run), "--set", "scores.pickscore.model=tiny", "--set", "generation.steps=3"]) == 2
    assert capsys.readouterr().err == (
        "genbatch: error: --set 'generation.steps=3': rescore changes only scores.* keys; other settings change the "
        "images (run the job again with genbatch run)\n"
    )


def test_rescore_needs_a_finished_run(tmp_path, capsys):
    run = record_only_run(tmp_path, shards=1)
    assert main(["rescore", str(run), "--set", "scores.pickscore.model=tiny"]) == 2
    shard = run / "data" / layout.shard_file_name(0)
    assert capsys.readouterr().err == (
        f"genbatch: error: {shard}: missing or incomplete; rescore needs a finished run "
        "(finish it with genbatch run first)\n"
    )
    assert not (run / "data").exists() or not any((run / "data").iterdir())  # nothing written


def test_rescore_of_a_folder_without_a_run_and_bad_scores_are_one_line(tmp_path, capsys):
    assert main(["rescore", str(tmp_path), "--set", "scores.pickscore.model=tiny"]) == 2
    assert capsys.readouterr().err == (
        f"genbatch: error: {tmp_path}: no job.json: not the output folder of a genbatch run\n"
    )
    run = record_only_run(tmp_path)
    assert main(["rescore", str(run), "--set", "scores.aesthetic.model=tiny"]) == 2
    assert capsys.readouterr().err == f"genbatch: error: {run / 'job.json'}: missing key 'scores.aesthetic.head'\n"


@pytest.mark.slow
def test_a_rescored_run_is_what_a_run_with_the_scores_writes(finished_run, tmp_path):
    config, run, _ = copy_of(finished_run, tmp_path)
    rescore_run(str(run), NEW_SCORES)
    sets = [part for setting in [f"output={tmp_path / 'fresh'}", *NEW_SCORES] for part in ("--set", setting)]
    assert main(["run", str(config), "--quiet", *sets]) == 0  # scores computed by the generating actor, on Ray
    fresh, rescored = read_output(tmp_path / "fresh"), read_output(run)
    assert fresh.column_names == rescored.column_names
    for name in fresh.column_names:
        if name != C.DURATION_S:  # the one column that is a measurement
            assert fresh.column(name).equals(rescored.column(name)), name  # same pixels, same batches: same bits
    for index in range(SHARDS):
        name = layout.shard_file_name(index)
        assert (
            read_footer(str(tmp_path / "fresh" / "data" / name)).job_key
            == read_footer(str(run / "data" / name)).job_key
        )


def test_the_rescoring_actor_refuses_a_shard_of_another_job(tmp_path, model_cache):
    from workers.errors import ShardError
    from workers.io.writer import ShardFooter, write_shard
    from workers.rescoring import RescoreWorker
    from workers.tasks import RescoreSettings, ScoreModels

    table = pa.table({"id": ["a"], C.STATUS: [C.STATUS_OK]})
    write_shard(table, str(tmp_path), ShardFooter("another-job", 0, 1, 1, 0))
    scores = ScoreModels(pickscore="tiny", aesthetic=None, aesthetic_head=None)
    settings = RescoreSettings(scores, (C.PICKSCORE,), 2, "processor", str(tmp_path), "old", "new", 1, None)
    worker = RescoreWorker(settings, 0)
    assert worker.ready().device == "cpu"
    with pytest.raises(ShardError) as caught:
        worker.rescore_shard(0)
    assert (
        str(caught.value)
        == f"{tmp_path / 'data' / 'shard-00000.parquet'}: not a complete shard of the run being rescored"
    )


@pytest.fixture(scope="module")
def cleanly_rescored(finished_run, tmp_path_factory) -> pa.Table:
    """The table a rescore with NEW_SCORES writes when nothing goes wrong."""
    _, run, _ = copy_of(finished_run, tmp_path_factory.mktemp("clean"))
    summary = rescore_run(str(run), NEW_SCORES)
    assert (summary.rescored, summary.retries, summary.replaced_workers) == (SHARDS, 0, 0)
    return read_output(run)


@pytest.mark.slow  # kills an actor, starts its replacement
def test_an_actor_killed_mid_rescore_is_replaced_and_its_shard_retried(finished_run, cleanly_rescored, tmp_path):
    config, run, before = copy_of(finished_run, tmp_path)
    killed: list[int] = []

    def kill_the_first_worker(info) -> None:  # before it is given its first shard: that shard is charged a retry
        if not killed:
            killed.append(info.pid)
            os.kill(info.pid, signal.SIGKILL)

    summary = rescore_run(str(run), NEW_SCORES, hooks=JobHooks(on_worker_ready=kill_the_first_worker))
    assert killed and (summary.replaced_workers, summary.retries) == (1, 1)
    assert (summary.rescored, summary.rows, summary.images_scored) == (SHARDS, 6, 6)
    assert read_output(run).equals(cleanly_rescored)  # the same bits as a rescore without the kill
    assert sorted(path.name for path in (run / "data").iterdir()) == [layout.shard_file_name(i) for i in range(SHARDS)]
    check_rescored(config, run, before)


@pytest.mark.slow
def test_a_shard_failing_every_retry_fails_the_rescore_and_the_others_are_kept(finished_run, tmp_path, caplog):
    _, run, _ = copy_of(finished_run, tmp_path)
    # Shard 0 complete by its footer, but one stored image is not an image: rescoring it raises on each attempt.
    path = str(run / "data" / layout.shard_file_name(0))
    table = pq.read_table(path)
    images = table.column(C.IMAGE).to_pylist()
    images[1] = {**images[1], "bytes": b"not an image"}
    position = table.column_names.index(C.IMAGE)
    table = table.set_column(position, table.field(C.IMAGE), pa.array(images, type=table.field(C.IMAGE).type))
    write_shard(table, str(run), read_footer(path))
    broken = (run / "data" / layout.shard_file_name(0)).read_bytes()
    record = (run / "job.json").read_text()
    retries = json.loads(record)["config"]["resources"]["max_shard_retries"]
    with caplog.at_level(logging.WARNING, logger="jobs.pool.dispatch"), pytest.raises(RescoreError) as caught:
        rescore_run(str(run), NEW_SCORES)
    assert str(caught.value).startswith("shard 0 could not be rescored: UnidentifiedImageError: ")
    assert str(caught.value).endswith("; the 1 shards rescored are kept: rerun to go on")
    assert f"shard 0 failed {retries + 1} times, giving up" in caplog.text
    assert caplog.text.count("shard 0 failed (attempt") == retries
    # Shard 1 is rescored and kept; shard 0 is as it was, so a rerun goes on from shard 1. job.json keeps the old
    # identity and says a rescore is under way (genbatch status shows it; report and export refuse the run).
    assert (run / "data" / layout.shard_file_name(0)).read_bytes() == broken
    new_key = read_footer(str(run / "data" / layout.shard_file_name(1))).job_key
    assert new_key != read_footer(path).job_key
    after = json.loads((run / "job.json").read_text())
    assert after.pop("rescoring")["job_key"] == new_key
    assert after == json.loads(record)


@pytest.mark.slow
def test_status_after_a_rescore_stopped_by_a_signal_is_rescoring_interrupted(finished_run, tmp_path):
    from jobs.runfolder.status import format_status

    _, run, _ = copy_of(finished_run, tmp_path)

    def stop(result) -> None:  # as a SIGTERM does, once the first shard is rescored
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        rescore_run(str(run), NEW_SCORES, hooks=JobHooks(on_shard_done=stop))
    record = json.loads((run / "job.json").read_text())
    new_key = record["rescoring"]["job_key"]
    footers = [read_footer(str(run / "data" / layout.shard_file_name(index))) for index in range(SHARDS)]
    rescored = sum(footer.job_key == new_key for footer in footers)  # the second shard may have been written too
    assert rescored >= 1
    status = job_status(str(run))
    assert (status.state, status.shards_done, status.rows_done, status.ok) == ("rescoring", SHARDS, 6, 6)
    assert format_status(status).splitlines()[0] == (
        f"job:      rescoring (interrupted): {rescored} / {SHARDS} shards rescored "
        f"(rescore started {record['rescoring']['started_at']})"
    )
