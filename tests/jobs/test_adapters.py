"""LoRA adapters (model.loras fused per job, model.adapters chosen per row) against plain diffusers pipelines.

The LoRAs are built here with peft on the tiny models' denoiser and text encoder and saved with the pipeline's
`save_lora_weights`. One job per model carries both kinds (a fused LoRA and three adapters), so each model
starts one actor; the plain references load the same files with diffusers alone.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

import diffusers
import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from jobs.cli.main import main
from tests.conftest import read_output, worker_settings_for, write_config, write_manifest
from tests.reference import decode_png
from workers.io.rows import RowSpec
from workers.models.loading import pipeline_source
from workers.pipeline.batch import micro_batches
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

SIZE = 32
ROWS = {
    "id": ["r0", "r1", "r2", "r3", "r4"],
    "prompt": ["a red fox", "a lighthouse at dusk", "three green apples", "a blue door", "a snowy hill"],
    "seed": [3, 14, 15, 92, 65],
    "adapter": ["x", None, "y", "z", "x"],  # three adapters and the base model, x twice
}


@dataclass(frozen=True)
class Model:
    id: str
    pipeline: str  # its diffusers text-to-image class
    denoiser: str
    generation: dict

    def __str__(self) -> str:
        return self.id


MODELS = [
    Model("tiny", "StableDiffusionPipeline", "unet", {"steps": 2, "guidance_scale": 7.5}),
    Model("tiny-flux", "FluxPipeline", "transformer", {"steps": 2, "guidance_scale": 3.5}),
]


def plain_pipeline(model: Model):
    pipeline = getattr(diffusers, model.pipeline).from_pretrained(pipeline_source(model.id), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def build_loras(model: Model, specs: dict[Path, tuple[int, int]]) -> None:
    """Random LoRAs (path: (seed, rank)) on the model's denoiser attention and CLIP text encoder, each saved as
    diffusers saves LoRAs; one pipeline carries them all as named PEFT adapters."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    pipeline = plain_pipeline(model)
    denoiser = getattr(pipeline, model.denoiser)
    for i, (path, (seed, rank)) in enumerate(specs.items()):
        name = f"lora{i}"
        torch.manual_seed(seed)
        targets = ["to_q", "to_k", "to_v", "to_out.0"]
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
        denoiser.add_adapter(config, adapter_name=name)
        text = ["q_proj", "k_proj", "v_proj", "out_proj"]
        config = LoraConfig(r=rank, lora_alpha=rank, target_modules=text, init_lora_weights=False)
        pipeline.text_encoder.add_adapter(config, adapter_name=name)
        layers = {
            f"{model.denoiser}_lora_layers": get_peft_model_state_dict(denoiser, adapter_name=name),
            "text_encoder_lora_layers": get_peft_model_state_dict(pipeline.text_encoder, adapter_name=name),
        }
        layers = {key: convert_state_dict_to_diffusers(value) for key, value in layers.items()}
        type(pipeline).save_lora_weights(str(path.parent), weight_name=path.name, **layers)


def plain_image(pipeline, model: Model, prompt: str, seed: int) -> np.ndarray:
    image = pipeline(
        prompt,
        num_inference_steps=model.generation["steps"],
        guidance_scale=model.generation["guidance_scale"],
        width=SIZE,
        height=SIZE,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return np.asarray(image)


def with_loras(model: Model, fused: list[tuple[Path, float]], active: list[tuple[Path, float]]):
    """A plain pipeline with `fused` loaded and fused (then unloaded), and `active` loaded and set."""
    pipeline = plain_pipeline(model)
    if fused:
        names = [f"fused{i}" for i in range(len(fused))]
        for name, (path, _) in zip(names, fused, strict=True):
            pipeline.load_lora_weights(str(path), adapter_name=name)
        pipeline.set_adapters(names, [weight for _, weight in fused])
        pipeline.fuse_lora(adapter_names=names)
        pipeline.unload_lora_weights()
    if active:
        names = [f"active{i}" for i in range(len(active))]
        for name, (path, _) in zip(names, active, strict=True):
            pipeline.load_lora_weights(str(path), adapter_name=name)
        pipeline.set_adapters(names, [weight for _, weight in active])
    return pipeline


@pytest.fixture(scope="module", params=MODELS, ids=str)
def lora_files(request, tmp_path_factory):
    """A model and four LoRAs of it (f, a, b, c: each its own seed and rank), c also alone in a folder."""
    model = request.param
    tmp_path = tmp_path_factory.mktemp(f"loras-{model.id}")
    loras = {name: tmp_path / f"{name}.safetensors" for name in "fabc"}
    build_loras(
        model, {loras[name]: (seed, rank) for name, seed, rank in (("f", 1, 2), ("a", 2, 4), ("b", 3, 2), ("c", 4, 8))}
    )
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "c.safetensors").write_bytes(loras["c"].read_bytes())
    return model, loras


def adapters_section(loras: dict[str, Path]) -> dict:
    """x: a; y: b at 0.5; z: a at 0.5 with c (given as the folder holding it)."""
    return {
        "x": [{"path": str(loras["a"])}],
        "y": [{"path": str(loras["b"]), "weight": 0.5}],
        "z": [{"path": str(loras["a"]), "weight": 0.5}, {"path": str(loras["c"].parent / "folder")}],
    }


def job_sections(model: Model, loras: dict[str, Path]) -> dict:
    return {
        "model": {
            "id": model.id,
            "loras": [{"path": str(loras["f"]), "weight": 0.7}],
            "adapters": adapters_section(loras),
        },
        "generation": {"width": SIZE, "height": SIZE, **model.generation},
        "clip": {"model": None},
        "resources": {"batch_size": 1},
    }


@pytest.fixture(scope="module")
def lora_job(lora_files, tmp_path_factory, ray_session):
    """One job per model: LoRA f fused for every row, adapters x, y and z chosen per row, one row per pipeline
    call; the LoRA files, the config and the job's output."""
    model, loras = lora_files
    tmp_path = tmp_path_factory.mktemp(model.id)
    manifest = write_manifest(tmp_path / "prompts.parquet", ROWS)
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", **job_sections(model, loras))
    assert main(["run", str(config), "--quiet"]) == 0
    torch.set_num_threads(1)  # as in the actor (cpus_per_worker: 1): the same reduction order
    return model, loras, config, tmp_path / "out"


def test_fused_lora_and_per_row_adapters_give_the_pixels_of_plain_pipelines(lora_job):
    model, loras, _, output = lora_job
    table = read_output(output)
    assert table.column("status").to_pylist() == ["ok"] * 5
    assert table.column("adapter").to_pylist() == ROWS["adapter"]  # the column is part of the output
    fused = [(loras["f"], 0.7)]
    adapters = {
        None: [],
        "x": [(loras["a"], 1.0)],
        "y": [(loras["b"], 0.5)],
        "z": [(loras["a"], 0.5), (loras["c"], 1.0)],
    }
    rows = {row["id"]: row for row in table.to_pylist()}
    made = set()
    for name, active in adapters.items():
        pipeline = with_loras(model, fused, active)  # one plain run per adapter, and one for the base model
        for i, row_id in enumerate(ROWS["id"]):
            if ROWS["adapter"][i] == name:
                expected = plain_image(pipeline, model, ROWS["prompt"][i], ROWS["seed"][i])
                assert np.array_equal(decode_png(rows[row_id]["image"]["bytes"]), expected), (row_id, name)
                made.add(row_id)
    assert made == set(ROWS["id"])
    # The LoRAs did change the pixels: the model without them gives another image.
    bare = plain_image(plain_pipeline(model), model, ROWS["prompt"][1], ROWS["seed"][1])
    assert not np.array_equal(decode_png(rows["r1"]["image"]["bytes"]), bare)


def test_job_json_records_each_lora_by_its_sha256_and_weight(lora_job):
    _, loras, _, output = lora_job
    record = json.loads((output / "job.json").read_text())
    model = record["identity"]["model"]

    def sha(path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()

    assert model["loras"] == [{"path": str(loras["f"]), "weight": 0.7, "sha256": sha(loras["f"])}]
    assert [(entry["weight"], entry["sha256"]) for entry in model["adapters"]["z"]] == [
        (0.5, sha(loras["a"])),
        (1.0, sha(loras["c"])),
    ]
    assert model["adapters"]["z"][1]["path"].endswith("folder/c.safetensors")
    assert set(model["adapters"]) == {"x", "y", "z"}
    assert [entry["path"] for entry in record["config"]["model"]["loras"]] == [str(loras["f"])]


def test_a_changed_adapter_file_is_refused_on_resume(lora_job, capsys):
    model, loras, config, output = lora_job
    before = loras["b"].read_bytes()
    try:
        build_loras(model, {loras["b"]: (99, 2)})  # the same path, other weights
        capsys.readouterr()
        assert main(["run", str(config), "--quiet"]) == 2
        error = capsys.readouterr().err.strip().splitlines()[-1]  # after the seed column's warning
        expected = (
            f"genbatch: error: {output}: holds a job with other settings (model.adapters.y[0].sha256: "
            f"{hashlib.sha256(before).hexdigest()!r} -> {hashlib.sha256(loras['b'].read_bytes()).hexdigest()!r}); "
            "rerun with --overwrite to replace it, or choose another output folder"
        )
        assert error == expected
    finally:
        loras["b"].write_bytes(before)


def test_an_unknown_adapter_is_a_manifest_error_naming_rows_and_known_names(lora_job, tmp_path, capsys):
    model, loras, _, _ = lora_job
    manifest = write_manifest(
        tmp_path / "bad.parquet",
        {"id": ["k1", "k2", "k3"], "prompt": ["a", "b", "c"], "adapter": ["x", "w", "v"]},
    )
    config = write_config(
        tmp_path / "bad.yaml",
        manifest,
        tmp_path / "out",
        model={"id": model.id, "adapters": {"x": [{"path": str(loras["a"])}], "y": [{"path": str(loras["b"])}]}},
    )
    capsys.readouterr()
    assert main(["run", str(config), "--quiet"]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: column 'adapter': 'v', 'w' are not in model.adapters (2 rows, ids: k2, k3); "
        "known: x, y"
    )
    assert not (tmp_path / "out").exists()


def test_micro_batches_never_mix_adapters():
    rows = [
        RowSpec(
            id=i,
            prompt="p",
            negative_prompt="",
            seed=i,
            steps=2,
            guidance_scale=1.0,
            width=8,
            height=8,
            adapter=adapter,
        )
        for i, adapter in enumerate(["x", None, "x", "y", None, "x"])
    ]
    batches = micro_batches(rows, list(range(6)), batch_size=2)
    assert [sorted(batch) for batch in batches] == [[0, 2], [5], [1, 4], [3]]


@pytest.mark.minutes  # Inductor builds C++ kernels: minutes on a small CPU (make test-long)
def test_switching_adapters_on_a_compiled_model_recompiles_nothing_and_keeps_the_pixels(lora_files, tmp_path):
    model, loras = lora_files
    manifest = write_manifest(tmp_path / "prompts.parquet", ROWS)
    task = ShardTask(0, str(manifest), 0, len(ROWS["id"]), 0, has_id_column=True)
    plain = worker_settings_for(tmp_path / "plain", **job_sections(model, loras))
    compiled = replace(
        plain,
        output_dir=str(tmp_path / "compiled"),
        fast=replace(plain.fast, compile=True, compile_cache=str(tmp_path / "kernels")),
    )

    def images(settings) -> list[np.ndarray]:
        worker = GenerationWorker(settings, 0)
        assert worker.load_error is None
        result = list(worker.run_shard(task))[-1]
        table = pq.read_table(result.file)
        assert table.column("status").to_pylist() == ["ok"] * len(ROWS["id"]), table.column("error").to_pylist()
        return [decode_png(image["bytes"]) for image in table.column("image").to_pylist()]

    expected = images(plain)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    # Rows run grouped by adapter (x, none, y, z): three switches after the first compile, and any guard that
    # failed on a switch would recompile, which this turns into a row error.
    with torch._dynamo.config.patch(error_on_recompile=True):
        got = images(compiled)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1  # it did compile
    assert not torch._dynamo.utils.counters["recompiles"]
    for row_id, a, b in zip(ROWS["id"], expected, got, strict=True):
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2, row_id


def test_each_family_says_whether_its_pipeline_has_the_lora_loader():
    from workers.models.families import FAMILIES

    for family in FAMILIES:
        assert family.lora == hasattr(getattr(diffusers, family.text_to_image), "load_lora_weights"), family.name
    without = replace(FAMILIES[0], lora=False)
    assert without.lora_problem("model.adapters") == (
        "model.adapters: Stable Diffusion 1/2 pipelines (StableDiffusionPipeline) have no LoRA loader in diffusers; "
        "remove the key"
    )


def test_a_lora_file_s_bytes_and_weight_key_the_reused_actors_and_the_compiled_kernels(tmp_path):
    from jobs.pool import worker_reuse
    from workers.pipeline.compile_cache import compile_key

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(b"first")  # hashed only: nothing loads it here

    def keys(**model):
        settings = worker_settings_for(tmp_path / "out", model={"id": "tiny", **model})
        compiled = compile_key(settings, torch.device("cpu"), torch.float32).file_name()
        return worker_reuse.key_of(None, None, settings), compiled

    plain = keys()
    fused = keys(loras=[{"path": str(lora), "weight": 0.8}])
    reweighted = keys(loras=[{"path": str(lora), "weight": 0.5}])
    named = keys(adapters={"style": [{"path": str(lora)}]})
    lora.write_bytes(b"other")
    changed = keys(loras=[{"path": str(lora), "weight": 0.8}])
    for at in (0, 1):  # the reuse key, then the compile-cache file
        assert len({plain[at], fused[at], reweighted[at], named[at], changed[at]}) == 5
    assert ".torch-cache" in plain[1] and plain[1] == keys()[1]  # no LoRA: the name it had before LoRAs existed


def test_the_report_lists_each_lora_with_its_weight_and_sha256():
    from jobs.report.summary import lora_settings

    entry = {"path": "/loras/style.safetensors", "weight": 0.8, "sha256": "ab" * 32}
    hub = {
        "path": "ByteDance/SDXL-Lightning",
        "weight_name": "lightning.safetensors",
        "weight": 1.0,
        "sha256": "cd" * 32,
    }
    assert lora_settings({"id": "tiny"}) == {}
    assert lora_settings({"loras": [entry, hub], "adapters": {"x": [entry]}}) == {
        "loras": "style.safetensors x0.8 (abababababab), lightning.safetensors x1.0 (cdcdcdcdcdcd)",
        "adapters": "x: style.safetensors x0.8 (abababababab)",
    }
