from pathlib import Path

import pytest
import yaml

from jobs.config.schema import JobConfig, load_config
from jobs.errors import ConfigError
from tests.conftest import write_config


def test_full_config_loads_with_every_documented_key(tmp_path):
    path = write_config(
        tmp_path / "job.yaml",
        "m.parquet",
        "out",
        model={"id": "tiny", "revision": None, "scheduler": "euler_a", "dtype": "fp32"},
        generation={"negative_prompt": "blurry"},
        resources={"cpus_per_worker": None},
    )
    config = load_config(path)
    assert config.model.scheduler == "euler_a"
    assert config.generation.negative_prompt == "blurry"
    assert config.resources.cpus_per_worker is None
    assert config.shard_size == 4


def test_defaults_match_the_documented_values(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("manifest: m.parquet\noutput: out\n")
    config = load_config(path)
    assert (config.seed, config.shard_size) == (0, 256)
    assert (config.model.id, config.model.scheduler, config.model.dtype) == ("tiny", None, "auto")
    assert (config.generation.steps, config.generation.guidance_scale) == (30, 7.5)
    assert (config.generation.width, config.generation.height) == (512, 512)
    assert config.clip.model == "tiny"
    assert (config.resources.workers, config.resources.gpus_per_worker, config.resources.batch_size) == (1, 1, 8)


def test_set_overrides_parse_values_as_yaml_and_reach_nested_keys(tmp_path):
    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    config = load_config(
        path,
        ["generation.steps=30", "resources.workers=8", "clip.model=null", "generation.negative_prompt=ugly, blurry"],
    )
    assert config.generation.steps == 30
    assert config.resources.workers == 8
    assert config.clip.model is None
    assert config.generation.negative_prompt == "ugly, blurry"


BAD_WORKERS = "resources.workers: must be auto, a whole number >= 1, or {min: M, max: N}"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["generation.stepz=3"], "unknown key 'generation.stepz'"),
        (["colour=red"], "unknown key 'colour'"),
        (["model.scheduler=heunx"], "model.scheduler: unknown scheduler 'heunx'"),
        (["generation.width=100"], "generation.width: must be a multiple of 8, got 100"),
        (["generation.height=36"], "generation.height: must be a multiple of 8, got 36"),
        (["generation.steps=0"], "generation.steps: Input should be greater than or equal to 1"),
        (["generation.guidance_scale=-1"], "generation.guidance_scale: Input should be greater than or equal to 0"),
        (["model.id=./no/such/model"], "model.id: model folder ./no/such/model does not exist"),
        (["clip.model=/no/such/clip"], "clip.model: CLIP folder /no/such/clip does not exist"),
        (["model.id=tinyy"], "model.id: no folder 'tinyy' and not a Hugging Face id (org/name)"),
        (["clip.model=clip"], "clip.model: no folder 'clip' and not a Hugging Face id (org/name)"),
        (["model.id=org/my model"], "model.id: no folder 'org/my model' and not a Hugging Face id (org/name)"),
        (["model.id=org--a/b"], "model.id: no folder 'org--a/b' and not a Hugging Face id (org/name)"),
        (["model.id=org/-name"], "model.id: no folder 'org/-name' and not a Hugging Face id (org/name)"),
        (["model.id=/name"], "model.id: model folder /name does not exist"),
        (['output=""'], "output.path: must not be empty"),
        (["output.path=' '"], "output.path: must not be empty"),
        (['manifest=""'], "manifest: must not be empty"),
        (["generation.steps"], "expected dotted.key=value"),
        (["generation.steps.x=1"], "generation.steps is not a section"),
        (["resources.workers=0"], f"{BAD_WORKERS}, got 0"),
        (["resources.workers=many"], f"{BAD_WORKERS}, got 'many'"),
        (["resources.workers=2.5"], f"{BAD_WORKERS}, got 2.5"),
        (["resources.workers=true"], f"{BAD_WORKERS}, got True"),
        (["resources.workers={min: 0}"], "resources.workers: min must be a whole number >= 1, got 0"),
        (["resources.workers={max: -1}"], "resources.workers: max must be a whole number >= 1, got -1"),
        (["resources.workers={min: 4, max: 2}"], "resources.workers: max must be >= min, got min 4 and max 2"),
        (["resources.workers={min: 1, most: 3}"], "resources.workers: unknown key 'most' in {min: M, max: N}"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(tmp_path, overrides, message):
    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_workers_is_a_number_auto_or_bounds(tmp_path):
    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    forms = {
        "3": (3, 3, 3),  # fixed
        "auto": ("auto", 1, None),
        "{min: 2, max: 8}": ({"min": 2, "max": 8}, 2, 8),
        "{max: 8}": ({"min": 1, "max": 8}, 1, 8),
        "{min: 2}": ({"min": 2, "max": None}, 2, None),
        "{min: 2, max: 2}": ({"min": 2, "max": 2}, 2, 2),  # the same as 2
    }
    for text, (dumped, low, high) in forms.items():
        resources = load_config(path, [f"resources.workers={text}"]).resources
        assert resources.model_dump(mode="json")["workers"] == dumped  # as job.json records it
        assert (resources.worker_range().min, resources.worker_range().max) == (low, high)
        assert resources.worker_range().elastic == (low != high)
    path.write_text(path.read_text().replace("workers: 1", "workers:\n    min: 2\n    max: 4"))
    assert load_config(path).resources.worker_range().max == 4


def test_missing_required_keys_and_files_are_named(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="missing key 'manifest'; missing key 'output'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(path)


def test_home_in_local_paths_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    path = write_config(tmp_path / "job.yaml", "~/prompts.parquet", "~/runs/a")
    config = load_config(path)
    assert config.manifest == str(tmp_path / "home" / "prompts.parquet")
    assert config.output.path == str(tmp_path / "home" / "runs" / "a")
    assert load_config(path, ["output=s3://bucket/~a"]).output.path == "s3://bucket/~a"


def test_existing_model_folder_and_hub_ids_are_accepted(tmp_path, monkeypatch):
    folder = tmp_path / "my-model"
    folder.mkdir()
    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    assert load_config(path, [f"model.id={folder}"]).model.id == str(folder)
    monkeypatch.chdir(tmp_path)
    assert load_config(path, ["model.id=my-model", "clip.model=my-model"]).model.id == "my-model"
    # A hub id is checked against the hub when the job starts, not here.
    for ref in ("org/name", "stabilityai/stable-diffusion-2-1-base", "openai/clip-vit-large-patch14", "a_b/c.d-2"):
        config = load_config(path, [f"model.id={ref}", f"clip.model={ref}"])
        assert (config.model.id, config.clip.model) == (ref, ref)


def test_shipped_configs_are_valid_and_read_as_written():
    for path in sorted(Path("configs").glob("*.yaml")):
        written = yaml.safe_load(path.read_text())
        if isinstance(written["output"], str):  # `output: DIR` is short for `output: {path: DIR}`
            written["output"] = {"path": written["output"]}
        # load_config raises on a config that is not valid; a valid one keeps every value the file sets.
        assert load_config(path).model_dump(mode="json", exclude_unset=True) == written, path
    assert {p.name for p in Path("configs").glob("*.yaml")} >= {"tiny.yaml", "sd15.yaml", "sd21-base.yaml", "sdxl.yaml"}
    assert yaml.safe_load(Path("configs/tiny.yaml").read_text())["model"]["id"] == "tiny"


def test_worker_settings_repeat_no_default_of_the_config(tmp_path):
    """Each default is written once, in jobs.config.schema: the actor-side dataclasses have none, and every
    field is filled from the config (a non-default value in each section reaches the actor)."""
    from dataclasses import MISSING, fields

    from jobs.runfolder.settings import worker_settings
    from tests.conftest import small_config
    from workers.tasks import FastPaths, GenerationDefaults, ImageEncoding, WorkerSettings

    for cls in (GenerationDefaults, ImageEncoding, FastPaths, WorkerSettings):
        assert [f.name for f in fields(cls) if f.default is not MISSING or f.default_factory is not MISSING] == []
    raw = small_config(
        "m.parquet",
        {"path": str(tmp_path), "image_format": "webp", "quality": 70},
        generation={"strength": 0.3, "init_image_policy": "error", "negative_prompt": "blur"},
        performance={"compile": True, "writer_threads": 3},
        mode="reconstruct",
    )
    settings = worker_settings(JobConfig.model_validate(raw), str(tmp_path), "key")
    assert (settings.defaults.strength, settings.defaults.init_image_policy) == (0.3, "error")
    assert settings.defaults.negative_prompt == "blur"
    assert (settings.encoding.image_format, settings.encoding.quality, settings.encoding.png_compress_level) == (
        "webp",
        70,
        1,
    )
    assert (settings.fast.compile, settings.fast.writer_threads, settings.mode) == (True, 3, "reconstruct")
