"""End to end: a real job on the tiny models, checked against plain diffusers and transformers calls."""

from __future__ import annotations

import json
from importlib import metadata

import numpy as np
import pyarrow as pa
import pytest
import torch
from diffusers import StableDiffusionPipeline
from transformers import CLIPModel, CLIPProcessor

from jobs.cli.main import main
from tests.conftest import read_output, write_config, write_manifest
from tests.reference import decode_png, plain_diffusers_image, reference_cosine
from workers.io import columns as C
from workers.io.rows import derive_seed

LONG_PROMPT = "a very long prompt about " + "many colourful things " * 10 + "THE END"

MANIFEST = {
    "id": ["r0", "r1", "r2", "r3", "r4", "r5", "r6"],
    "prompt": [
        "a red fox",
        "a blue bird",
        LONG_PROMPT,
        "a green tree",
        "a yellow sun",
        "an orange cat",
        "a pink cloud",
    ],
    "category": ["animal", "animal", "long", "plant", "sky", "animal", "sky"],
    "negative_prompt": [None, "blurry", None, None, "dark", None, None],
    "seed": pa.array([None, 42, None, None, None, 7, None], pa.int64()),
    "steps": pa.array([None, None, None, 3, None, None, None], pa.int64()),
    "width": pa.array([None, None, None, 48, None, None, None], pa.int64()),
}
GENERATION = {"steps": 2, "guidance_scale": 7.5, "width": 32, "height": 32, "negative_prompt": ""}


def run_job(tmp_path, name, manifest, **config) -> tuple[int, object]:
    output = tmp_path / name
    path = write_config(tmp_path / f"{name}.yaml", manifest, output, generation=GENERATION, **config)
    return main(["run", str(path), "--quiet"]), output


@pytest.fixture(scope="module")
def job_dir(tmp_path_factory, ray_session):
    tmp_path = tmp_path_factory.mktemp("job")
    manifest = write_manifest(tmp_path / "prompts.parquet", MANIFEST)
    # Two CPU actors, set up as most of the session's jobs are, so that later jobs take them over
    # (jobs.pool.worker_reuse); actors reserving the declared (fake) GPU are tested below, and must run on CPU.
    code, output = run_job(
        tmp_path,
        "base",
        manifest,
        shard_size=3,
        resources={"workers": 2, "gpus_per_worker": 0, "cpus_per_worker": 1, "batch_size": 2},
    )
    assert code == 0
    return tmp_path, manifest, output


@pytest.fixture(scope="module")
def plain_pipeline(tiny_dirs):
    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1)
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_dirs[0], use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def clip_reference(tiny_dirs):
    return CLIPModel.from_pretrained(tiny_dirs[1]).eval(), CLIPProcessor.from_pretrained(tiny_dirs[1])


def expected_settings(row):
    steps = MANIFEST["steps"][row].as_py() or GENERATION["steps"]
    width = MANIFEST["width"][row].as_py() or GENERATION["width"]
    seed = MANIFEST["seed"][row].as_py()
    seed = derive_seed(0, MANIFEST["id"][row]) if seed is None else seed
    negative = MANIFEST["negative_prompt"][row] or ""
    return seed, steps, width, negative


def plain_images(plain_pipeline):
    images = []
    for row, prompt in enumerate(MANIFEST["prompt"]):
        seed, steps, width, negative = expected_settings(row)
        images.append(plain_diffusers_image(plain_pipeline, prompt, negative, seed, steps, 7.5, width, 32))
    return images


def test_every_row_written_once_in_order_with_its_columns(job_dir):
    _, _, output = job_dir
    table = read_output(output)
    assert table.num_rows == 7
    assert table.column("id").to_pylist() == MANIFEST["id"]
    assert sorted(p.name for p in (output / "data").iterdir()) == [f"shard-0000{i}.parquet" for i in range(3)]
    assert table.column_names == ["id", "prompt", "category", "negative_prompt", *C.GENERATED]
    stored = {**C.GENERATED, C.IMAGE: C.STORED_IMAGE_TYPE}  # images are large_binary in memory only
    for name, data_type in stored.items():
        assert table.schema.field(name).type == data_type, name
    assert table.column("status").to_pylist() == ["ok"] * 7
    assert table.column("error").to_pylist() == [None] * 7
    # Pass-through columns are unchanged.
    for name in ("prompt", "category", "negative_prompt"):
        assert table.column(name).to_pylist() == MANIFEST[name]


def test_resolved_settings_are_recorded_per_row(job_dir):
    _, _, output = job_dir
    table = read_output(output)
    for row in range(7):
        seed, steps, width, _ = expected_settings(row)
        assert table.column("seed")[row].as_py() == seed
        assert table.column("steps")[row].as_py() == steps
        assert table.column("width")[row].as_py() == width
        assert table.column("height")[row].as_py() == 32
        assert table.column("guidance_scale")[row].as_py() == 7.5
        assert decode_png(table.column("image")[row]["bytes"].as_py()).shape == (32, width, 3)
    assert set(table.column("model").to_pylist()) == {"tiny"}
    assert set(table.column("clip_model").to_pylist()) == {"tiny"}
    assert set(table.column("scheduler").to_pylist()) == {"DDIMScheduler"}
    assert all(w.startswith("worker-") for w in table.column("worker").to_pylist())
    assert all(d > 0 for d in table.column("duration_s").to_pylist())
    assert all(i["path"] is None for i in table.column("image").to_pylist())


def test_images_match_a_plain_diffusers_call_within_one_level(job_dir, plain_pipeline):
    # The job ran at batch size 2; the plain calls run one image at a time: float rounding only.
    _, _, output = job_dir
    table = read_output(output)
    for row, expected in enumerate(plain_images(plain_pipeline)):
        written = decode_png(table.column("image")[row]["bytes"].as_py())
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1, row


def test_image_hashes_are_of_the_written_bytes(job_dir):
    import hashlib

    table = read_output(job_dir[2])
    for image, digest in zip(table.column("image").to_pylist(), table.column("image_sha256").to_pylist()):
        assert hashlib.sha256(image["bytes"]).hexdigest() == digest


def test_clip_scores_match_transformers_on_the_written_image(job_dir, clip_reference):
    model, processor = clip_reference
    table = read_output(job_dir[2])
    for row in range(7):
        image = decode_png(table.column("image")[row]["bytes"].as_py())
        expected = reference_cosine(model, processor, image, MANIFEST["prompt"][row])
        cosine = table.column("clip_cosine")[row].as_py()
        assert abs(cosine - expected) < 1e-4, row
        assert abs(table.column("clip_score")[row].as_py() - 100 * max(expected, 0)) < 1e-2


def test_long_prompts_are_truncated_keeping_the_end_token(job_dir, clip_reference):
    _, processor = clip_reference
    table = read_output(job_dir[2])
    assert table.column("prompt_truncated").to_pylist() == [row == 2 for row in range(7)]
    ids = processor.tokenizer(LONG_PROMPT, truncation=True)["input_ids"]
    assert len(ids) == 77 and ids[-1] == processor.tokenizer.eos_token_id
    assert len(processor.tokenizer(LONG_PROMPT)["input_ids"]) > 77


def test_job_file_records_config_manifest_versions_and_counts(job_dir):
    _, _, output = job_dir
    record = json.loads((output / "job.json").read_text())
    assert record["status"] == "finished"
    assert record["counts"] == {
        "rows": 7,
        "ok": 7,
        "failed": 0,
        "not_run": 0,
        "shards": 3,
        "shards_run": 3,
        "shards_failed": 0,
        "shard_retries": 0,
        "workers_replaced": 0,
    }
    generation = {**GENERATION, "images_per_prompt": 1, "strength": 0.8, "init_image_policy": "resize"}
    assert record["identity"]["generation"] == generation and record["identity"]["shard_size"] == 3
    assert record["identity"]["mode"] == "generate"
    # The settings of other families (workers.models.families) are recorded as not applying; the identity leaves
    # them out.
    assert record["config"]["generation"] == {**generation, "true_cfg_scale": None, "max_sequence_length": None}
    assert record["config"]["shard_size"] == 3
    assert record["manifest"]["rows"] == 7 and len(record["manifest"]["fingerprint"]) == 64
    assert record["warnings"] == [
        "manifest column 'seed' sets the seed of 2 of 7 rows; the config's seed: 0 applies only to the other 5"
    ]
    assert record["versions"]["torch"] == metadata.version("torch")
    assert {"diffusers", "transformers", "ray", "pyarrow"} <= set(record["versions"])
    assert record["started_at"] <= record["finished_at"]
    # Workers that became ready before the job ended; both may not have (the job does not wait).
    assert 1 <= len(record["workers"]) <= 2 and {w["device"] for w in record["workers"]} == {"cpu"}


@pytest.mark.slow  # more whole jobs
def test_batch_size_one_is_pixel_identical_to_plain_diffusers_and_shards_do_not_matter(
    job_dir, plain_pipeline, ray_session
):
    tmp_path, manifest, base_output = job_dir
    code, output = run_job(
        tmp_path,
        "batch1",
        manifest,
        shard_size=5,
        resources={"workers": 1, "gpus_per_worker": 1, "cpus_per_worker": 1, "batch_size": 1},
    )
    assert code == 0
    (worker,) = json.loads((output / "job.json").read_text())["workers"]
    assert worker["device"] == "cpu"  # it reserved the one declared GPU, which torch cannot see
    table, base = read_output(output), read_output(base_output)
    assert table.column("id").to_pylist() == MANIFEST["id"]
    assert len(list((output / "data").glob("*.parquet"))) == 2
    for row, expected in enumerate(plain_images(plain_pipeline)):
        written = decode_png(table.column("image")[row]["bytes"].as_py())
        assert np.array_equal(written, expected), row
        other = decode_png(base.column("image")[row]["bytes"].as_py())
        assert np.abs(written.astype(int) - other.astype(int)).max() <= 1, row


@pytest.mark.slow  # more whole jobs
def test_scheduler_by_name_and_clip_disabled(job_dir, tiny_dirs, ray_session):
    from diffusers import EulerAncestralDiscreteScheduler

    tmp_path, manifest, _ = job_dir
    code, output = run_job(
        tmp_path, "euler", manifest, model={"id": "tiny", "scheduler": "euler_a"}, clip={"model": None}
    )
    assert code == 0
    table = read_output(output)
    assert set(table.column("scheduler").to_pylist()) == {"euler_a"}
    for name in ("clip_score", "clip_cosine", "prompt_truncated", "clip_model"):
        assert table.column(name).null_count == 7, name
    # A stochastic scheduler is still reproducible from the row's seed.
    pipeline = StableDiffusionPipeline.from_pretrained(tiny_dirs[0], use_safetensors=True)
    pipeline.scheduler = EulerAncestralDiscreteScheduler.from_config(pipeline.scheduler.config)
    pipeline.set_progress_bar_config(disable=True)
    seed, steps, width, negative = expected_settings(0)
    expected = plain_diffusers_image(pipeline, MANIFEST["prompt"][0], negative, seed, steps, 7.5, width, 32)
    assert np.abs(decode_png(table.column("image")[0]["bytes"].as_py()).astype(int) - expected).max() <= 1


def test_a_rerun_of_a_finished_job_rewrites_nothing_and_a_changed_one_is_refused(job_dir, capsys):
    tmp_path, manifest, output = job_dir

    def written():  # every output file and its modification time; the run lock is not output
        return {p.name: p.stat().st_mtime_ns for p in output.rglob("*") if p.is_file() and p.name != ".genbatch.lock"}

    before = written()
    base = {"shard_size": 3, "resources": {"workers": 2, "gpus_per_worker": 0.5, "cpus_per_worker": 1}}
    # Workers and batch size do not decide the output: this is the same job, already complete.
    code, _ = run_job(tmp_path, "base", manifest, **base)
    assert code == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "genbatch: nothing to do: all 3 shards are complete (7 ok, 0 failed of 7 rows)"
    )
    assert written() == before
    # Other steps, another shard size or another model would change the output: refused, untouched.
    path = write_config(tmp_path / "changed.yaml", manifest, output, generation={**GENERATION, "steps": 3}, **base)
    assert main(["run", str(path), "--quiet", "--set", "shard_size=2", "--set", "clip.model=null"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genbatch:")]
    assert err == [
        f"genbatch: error: {output}: holds a job with other settings (clip.model: 'tiny' -> None; "
        "generation.steps: 2 -> 3; shard_size: 3 -> 2); rerun with --overwrite to replace it, "
        "or choose another output folder"
    ]
    assert written() == before


@pytest.mark.slow  # actors of its own that fail to load
def test_workers_that_cannot_load_the_model_fail_the_job_clearly(job_dir, capsys, ray_session):
    tmp_path, manifest, _ = job_dir
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    code, output = run_job(tmp_path, "broken", manifest, model={"id": str(empty)})
    assert code == 2
    err = capsys.readouterr().err
    assert "no worker could load the models" in err
    assert not list((output / "data").glob("*.parquet"))
    assert json.loads((output / "job.json").read_text())["status"] == "failed"


@pytest.mark.slow  # an actor of its own that fails to load
def test_a_pool_that_never_loaded_counts_its_rows_not_run_and_prints_a_summary(tmp_path, capsys, ray_session):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a", "b", "c"]})
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    output = tmp_path / "out"
    config = write_config(tmp_path / "job.yaml", manifest, output, model={"id": str(empty)})
    assert main(["run", str(config), "--log-format", "json"]) == 2
    stdout, stderr = capsys.readouterr()
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    last_progress = [record for record in records if record.get("event") == "progress"][-1]
    assert (last_progress["rows_done"], last_progress["failed"]) == (0, 0)  # nothing ran, so nothing failed
    assert records[-1]["event"] == "error" and "no worker could load the models" in records[-1]["message"]
    (summary,) = [json.loads(line) for line in stdout.splitlines()]
    assert (summary["event"], summary["status"], summary["exit_code"]) == ("summary", "failed", 2)
    counts = ("rows", "ok", "failed", "not_run", "shards_failed")
    assert [summary[key] for key in counts] == [3, 0, 0, 3, 0]
    record = json.loads((output / "job.json").read_text())
    assert record["status"] == "failed" and record["failed_shards"] == []
    assert [record["counts"][key] for key in counts] == [3, 0, 0, 3, 0]
    assert not list((output / "data").glob("*.parquet"))


def test_resources_no_node_can_host_are_refused(job_dir, capsys, ray_session):
    tmp_path, manifest, _ = job_dir
    code, _ = run_job(tmp_path, "greedy", manifest, resources={"gpus_per_worker": 4})
    assert code == 2
    assert "no Ray node can host a worker needing 1 CPU and 4 GPU" in capsys.readouterr().err


def test_more_workers_than_the_nodes_can_hold_are_warned_about_once(tmp_path, caplog, ray_session):
    from jobs.config.schema import load_config
    from jobs.pool import cluster

    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    # The session's one node: 2 CPUs and 1 (fake) GPU.
    for workers, gpus, expected in ((3, 0, 2), (2, 1, 1), (2, 0.5, None)):
        caplog.clear()
        config = load_config(path, [f"resources.workers={workers}", f"resources.gpus_per_worker={gpus}"])
        cluster.actor_resources(config)
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        if expected is None:
            assert warnings == []
        else:
            assert warnings == [
                f"resources.workers is {workers}, but the cluster's nodes can hold at most {expected} workers of "
                f"1 CPU and {gpus:g} GPU at once; the other {workers - expected} wait for a free slot "
                "(lower resources.workers, or add nodes)"
            ]


@pytest.mark.slow  # more whole jobs
def test_a_row_with_non_finite_output_fails_alone_and_the_job_exits_1(job_dir, capsys, ray_session):
    tmp_path = job_dir[0]
    # A huge guidance scale overflows the tiny model's latents to NaN: that row must be an error,
    # not a black PNG, and must not take its neighbours down with it.
    rows = {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "guidance_scale": [None, 1e30, None]}
    manifest = write_manifest(tmp_path / "nan.parquet", rows)
    code, output = run_job(tmp_path, "nan", manifest)
    assert code == 1
    assert capsys.readouterr().out.startswith("genbatch: done: 2 ok, 1 failed of 3 rows in 1 shards")
    table = read_output(output)
    assert table.column("id").to_pylist() == ["a", "b", "c"]
    assert table.column("status").to_pylist() == ["ok", "error", "ok"]
    assert table.column("error").to_pylist() == [None, "non-finite output: the image has NaN or Inf values", None]
    for name in ("image", "image_sha256", "clip_score", "clip_cosine"):
        assert table.column(name).is_null().to_pylist() == [False, True, False], name
    counts = json.loads((output / "job.json").read_text())["counts"]
    assert (counts["ok"], counts["failed"], counts["shards_failed"]) == (2, 1, 0)


def test_report_and_compare_read_a_real_run(job_dir, capsys):
    _, _, output = job_dir
    assert main(["report", str(output)]) == 0
    report = json.loads((output / "report" / "report.json").read_text())
    scores = read_output(output).column("clip_score").to_numpy()
    assert report["rows"] == 7 and report["group_by"] == "category"
    assert report["clip_score"]["mean"] == pytest.approx(float(np.mean(scores.astype(np.float64))), abs=1e-9)
    assert set(report["groups"]["category"]) == {"animal", "long", "plant", "sky"}
    assert (report["settings"]["dtype"], report["settings"]["scheduler"]) == ("float32", "DDIMScheduler")  # CPU, auto
    assert main(["compare", str(output), str(output), "-o", str(output / "self")]) == 0
    same = json.loads((output / "self" / "compare.json").read_text())
    assert (same["pairs"], same["mean_delta"], same["ties"]) == (7, 0.0, 7)
    assert (same["run_a"]["dtype"], same["changed_settings"]) == ("float32", [])


@pytest.mark.slow  # more whole jobs
def test_webp_output_and_a_format_change_is_refused_on_resume(job_dir, capsys, ray_session):
    tmp_path = job_dir[0]
    manifest = write_manifest(tmp_path / "webp.parquet", {"prompt": ["x", "y", "z"]})
    output = {"path": str(tmp_path / "webp"), "image_format": "webp", "quality": 90}

    def run(output_section):
        path = write_config(tmp_path / "webp.yaml", manifest, output_section, generation=GENERATION)
        return main(["run", str(path), "--quiet"])

    assert run(output) == 0
    table = read_output(tmp_path / "webp")
    images = [image["bytes"] for image in table.column("image").to_pylist()]
    assert all(data[:4] == b"RIFF" and data[8:12] == b"WEBP" for data in images)
    assert [decode_png(data).shape for data in images] == [(32, 32, 3)] * 3  # PIL reads any format
    record = json.loads((tmp_path / "webp" / "job.json").read_text())
    assert len(record["first_image_seconds"]) == 1 and record["first_image_seconds"][0] > 0
    assert run({**output, "image_format": "png"}) == 2
    assert "output.image_format: 'webp' -> 'png'" in capsys.readouterr().err
