"""Every bad manifest exits 2 with one line naming file, column and up to 5 row ids, and writes nothing."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.config.schema import JobConfig
from jobs.inputs.manifest import find_manifest_files, read_manifest, seed_column_warning
from jobs.run.planning import job_warnings
from tests.conftest import read_output, write_config, write_manifest


def run_bad(tmp_path, capsys, manifest, **config):
    output = tmp_path / "out"
    path = write_config(tmp_path / "job.yaml", manifest, output, **config)
    code = main(["run", str(path), "--quiet"])
    # Ray may forward earlier actors' logs into any test's stderr: look at genbatch's own lines.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("genbatch:")]
    assert code == 2
    assert len(lines) == 1, lines
    assert not output.exists(), "nothing may be written for bad input"
    return lines[0]


GOOD = {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"]}


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        (
            {"id": ["a", "b", "c", "d"], "prompt": ["ok", None, "", "  \t"]},
            "column 'prompt': null, empty or whitespace-only prompt in 3 rows (ids: 'b', 'c', 'd')",
        ),
        ({"prompt": [1, 2]}, "column 'prompt' must hold strings, found int64"),
        (
            {"id": ["a", "b", "a", "c", "c"], "prompt": list("vwxyz")},
            "column 'id': duplicates in 2 ids (ids: 'a', 'c')",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "seed": [1.0, 2.5, 3.0]},
            "column 'seed' must hold integers, found double",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "seed": ["1", "2", "3"]},
            "column 'seed' must hold integers, found string",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "seed": [1, -5, None]},
            "column 'seed': negative seed in 1 row (ids: 2)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "seed": pa.array([1, 2**63, 2**64 - 1], pa.uint64())},
            "column 'seed': seed above 9223372036854775807 in 2 rows (ids: 2, 3)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "steps": pa.array([0, 2**63, 4], pa.uint64())},
            "column 'steps': steps < 1 in 1 row (ids: 1)",
        ),
        (
            {"id": [1, 2], "prompt": list("xy"), "width": pa.array([2**63 + 8, 2**63 + 4], pa.uint64())},
            "column 'width': width not a positive multiple of 8 in 1 row (ids: 2)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "width": [64, 60, None]},
            "column 'width': width not a positive multiple of 8 in 1 row (ids: 2)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "height": [0, 64, 33]},
            "column 'height': height not a positive multiple of 8 in 2 rows (ids: 1, 3)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "steps": [0, 4, -1]},
            "column 'steps': steps < 1 in 2 rows (ids: 1, 3)",
        ),
        (
            {"id": [1, 2, 3], "prompt": list("xyz"), "guidance_scale": [-0.5, 1.0, float("nan")]},
            "column 'guidance_scale': negative or non-finite guidance_scale in 2 rows (ids: 1, 3)",
        ),
        ({"id": [1, None, 3], "prompt": list("xyz")}, "column 'id': null id in 1 row (file rows: 1)"),
        ({"id": [1.5, 2.5], "prompt": ["x", "y"]}, "column 'id' must hold strings or integers, found double"),
        ({"prompt": ["x"], "clip_score": [1.0]}, "column 'clip_score' is reserved for genbatch's output; rename it"),
        ({"text": ["x"]}, "no 'prompt' column (columns: text)"),
    ],
)
def test_bad_rows_and_columns(tmp_path, capsys, columns, expected):
    manifest = write_manifest(tmp_path / "prompts.parquet", columns)
    err = run_bad(tmp_path, capsys, manifest)
    assert err == f"genbatch: error: {manifest}: {expected}"


def test_at_most_five_ids_are_shown_with_the_full_count(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["ok"] + [""] * 9})
    err = run_bad(tmp_path, capsys, manifest)
    assert err.endswith("in 9 rows (ids: 1, 2, 3, 4, 5)")


def test_several_problems_name_the_first_and_count_the_rest(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["", "x"], "steps": [1, 0]})
    err = run_bad(tmp_path, capsys, manifest)
    assert "column 'prompt'" in err and err.endswith("(and 1 more problems)")


def test_missing_unreadable_and_empty_manifests(tmp_path, capsys):
    assert run_bad(tmp_path, capsys, tmp_path / "nope.parquet").endswith("nope.parquet: manifest not found")
    text = tmp_path / "prompts.parquet"
    text.write_text("a prompt\n")
    assert f"{text}: not a Parquet file" in run_bad(tmp_path, capsys, text)
    empty = write_manifest(tmp_path / "empty.parquet", pa.table({"prompt": pa.array([], pa.string())}))
    assert run_bad(tmp_path, capsys, empty).endswith(f"{empty}: manifest has no rows")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert run_bad(tmp_path, capsys, folder).endswith(f"{folder}: no Parquet files found")


def test_duplicate_ids_across_files_name_the_manifest(tmp_path, capsys):
    write_manifest(tmp_path / "m" / "part-0.parquet", {"id": ["a", "b"], "prompt": ["x", "y"]})
    write_manifest(tmp_path / "m" / "part-1.parquet", {"id": ["c", "a"], "prompt": ["x", "y"]})
    err = run_bad(tmp_path, capsys, tmp_path / "m")
    assert err.endswith(f"{tmp_path / 'm'}: column 'id': duplicates in 1 id (ids: 'a')")


def test_files_with_different_columns_are_refused(tmp_path, capsys):
    write_manifest(tmp_path / "m" / "a.parquet", {"prompt": ["x"]})
    write_manifest(tmp_path / "m" / "b.parquet", {"prompt": ["x"], "category": ["c"]})
    err = run_bad(tmp_path, capsys, tmp_path / "m")
    assert f"{tmp_path / 'm' / 'b.parquet'}: columns differ from {tmp_path / 'm' / 'a.parquet'}" in err


def test_bad_config_values_exit_2_before_reading_anything(tmp_path, capsys):
    manifest = write_manifest(tmp_path / "p.parquet", GOOD)
    err = run_bad(tmp_path, capsys, manifest, generation={"width": 100})
    assert err == f"genbatch: error: {tmp_path / 'job.yaml'}: generation.width: must be a multiple of 8, got 100"
    err = run_bad(tmp_path, capsys, manifest, model={"scheduler": "nope"})
    assert "model.scheduler: unknown scheduler 'nope'; choose one of: ddim, pndm, lms, euler" in err
    err = run_bad(tmp_path, capsys, manifest, model={"id": str(tmp_path / "missing-model")})
    assert err.endswith(f"model.id: model folder {tmp_path / 'missing-model'} does not exist")
    err = run_bad(tmp_path, capsys, manifest, typo=1)
    assert err.endswith("unknown key 'typo'")


def test_folder_and_glob_manifests_are_read_in_sorted_order(tmp_path):
    write_manifest(tmp_path / "m" / "b.parquet", {"prompt": ["b0", "b1"]})
    write_manifest(tmp_path / "m" / "sub" / "c.parquet", {"prompt": ["c0"]})
    write_manifest(tmp_path / "m" / "a.parquet", {"prompt": ["a0"]})
    (tmp_path / "m" / "notes.txt").write_text("ignored")
    manifest = read_manifest(str(tmp_path / "m"))
    assert [f.path for f in manifest.files] == [
        str(tmp_path / "m" / n) for n in ("a.parquet", "b.parquet", "sub/c.parquet")
    ]
    assert [f.first_row for f in manifest.files] == [0, 1, 3]
    assert manifest.rows == 4 and not manifest.has_id_column
    assert find_manifest_files(str(tmp_path / "m" / "*.parquet")) == [
        str(tmp_path / "m" / n) for n in ("a.parquet", "b.parquet")
    ]


def test_fingerprint_follows_the_contents(tmp_path):
    path = write_manifest(tmp_path / "p.parquet", GOOD)
    first = read_manifest(str(path)).fingerprint
    assert read_manifest(str(path)).fingerprint == first
    pq.write_table(pa.table({"id": ["a", "b", "c"], "prompt": ["x", "y", "CHANGED"]}), path)
    assert read_manifest(str(path)).fingerprint != first


@pytest.mark.parametrize(
    ("seeds", "expected"),
    [
        (None, None),
        ([None, None, None], None),
        ([1, 2, 3], "manifest column 'seed' sets every row's seed; the config's seed: 42 applies to none of them"),
        (
            [1, None, 3],
            "manifest column 'seed' sets the seed of 2 of 3 rows; the config's seed: 42 applies only to the other 1",
        ),
    ],
    ids=["no-column", "all-null", "every-row", "some-rows"],
)
def test_a_seed_column_that_overrides_the_config_seed_is_said(tmp_path, seeds, expected):
    columns = dict(GOOD) if seeds is None else {**GOOD, "seed": pa.array(seeds, pa.int64())}
    manifest = read_manifest(str(write_manifest(tmp_path / "m.parquet", columns, row_group_size=2)))
    assert manifest.seeded_rows == (0 if seeds is None else sum(s is not None for s in seeds))
    assert seed_column_warning(manifest, 42) == expected
    config = JobConfig.model_validate({"manifest": "m.parquet", "output": "out", "seed": 42})
    assert job_warnings(config, manifest) == ([expected] if expected else [])
    reconstruct = config.model_copy(update={"mode": "reconstruct"})
    assert job_warnings(reconstruct, manifest) == []  # a VAE round trip has no noise to seed


@pytest.mark.slow  # two whole jobs
def test_uint64_seeds_that_fit_in_int64_give_the_same_images_as_int64_seeds(tmp_path, ray_session):
    seeds = [0, 7, 2**63 - 1]
    hashes = {}
    for kind in (pa.int64(), pa.uint64()):
        rows = {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "seed": pa.array(seeds, kind)}
        manifest = write_manifest(tmp_path / f"{kind}.parquet", rows)
        output = tmp_path / f"out-{kind}"
        config = write_config(tmp_path / f"{kind}.yaml", manifest, output, generation={"steps": 1})
        assert main(["run", str(config), "--quiet"]) == 0
        table = read_output(output)
        assert table.column("seed").to_pylist() == seeds
        assert table.column("status").to_pylist() == ["ok"] * 3
        hashes[str(kind)] = table.column("image_sha256").to_pylist()
    assert hashes["uint64"] == hashes["int64"]
