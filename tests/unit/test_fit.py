"""Will it fit? The weights are summed from safetensors headers alone, and a model too big for the cluster's
GPUs is refused with one line before any actor starts (jobs.config.weights, jobs.config.fit). No Ray here: the cluster's
nodes are given as `ray.nodes()` would give their resources."""

from __future__ import annotations

import json
import logging
import math
import struct
from pathlib import Path

import pytest

from jobs.config import fit
from jobs.config.preflight import check_before_start
from jobs.config.schema import JobConfig
from jobs.config.weights import LocalFiles, folder_tensors, read_header, weight_files
from jobs.errors import ConfigError
from jobs.pool import cluster
from tests.conftest import small_config, write_manifest

GB = 2**30  # jobs.config.fit counts GiB, as GPU memory is labelled
L4 = {"CPU": 8.0, "GPU": 1.0, "accelerator_type:L4": 1.0}  # 24 GB
H100 = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H100": 1.0}  # 80 or 94 GB
A100 = {"CPU": 16.0, "GPU": 1.0, "accelerator_type:A100": 1.0}  # 40 or 80 GB
BYTES = {"BF16": 2, "F16": 2, "F32": 4, "I64": 8, "U8": 1}


def header_only(path: Path, tensors: dict[str, tuple[str, tuple[int, ...]]]) -> Path:
    """A safetensors file with its header and no data: it claims what a real file of those tensors holds,
    so a 54 GB model costs a few hundred bytes. A reader that read tensor data would fail on it."""
    header, offset = {}, 0
    for name, (dtype, shape) in tensors.items():
        size = math.prod(shape) * BYTES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return path


def dit_pipeline(folder: Path, transformer_params: float, text_params: float, dtype: str = "BF16") -> Path:
    """A Qwen-Image-like pipeline folder of header-only files: a transformer of square Linear weights
    (3072 wide), a text encoder, a VAE, and weightless scheduler and tokenizer folders."""
    rows = int(transformer_params / 3072 / 3072)
    index = {
        "_class_name": "QwenImagePipeline",
        "transformer": ["diffusers", "QwenImageTransformer2DModel"],
        "text_encoder": ["transformers", "Qwen2_5_VLForConditionalGeneration"],
        "vae": ["diffusers", "AutoencoderKLQwenImage"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "tokenizer": ["transformers", "Qwen2Tokenizer"],
    }
    folder.mkdir(parents=True)
    (folder / "model_index.json").write_text(json.dumps(index))
    blocks = {f"blocks.{i}.ff.weight": (dtype, (3072, 3072)) for i in range(rows)}
    header_only(folder / "transformer" / "diffusion_pytorch_model.safetensors", blocks)
    header_only(folder / "text_encoder" / "model.safetensors", {"embed.weight": (dtype, (int(text_params), 1))})
    header_only(folder / "vae" / "diffusion_pytorch_model.safetensors", {"conv.weight": (dtype, (1000, 1000))})
    for weightless in ("scheduler", "tokenizer"):
        (folder / weightless).mkdir()
        (folder / weightless / "config.json").write_text("{}")
    return folder


def job(model_id: Path | str, **sections) -> JobConfig:
    """A 1024x1024 GPU job of one image per micro-batch, without CFG or CLIP, unless `sections` say otherwise."""
    base = {
        "model": {"id": str(model_id)},
        "generation": {"width": 1024, "height": 1024, "guidance_scale": 1.0},
        "clip": {"model": None},
        "resources": {"workers": 1, "gpus_per_worker": 1, "batch_size": 1},
    }
    for key, value in sections.items():
        base[key] = {**base.get(key, {}), **value}
    return JobConfig.model_validate(small_config("prompts.parquet", "out", **base))


def test_header_sums_equal_the_tensors_nbytes_of_the_tiny_pipeline(tiny_dirs):
    import torch
    from safetensors.torch import load_file

    SAFETENSORS_DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64"}

    pipeline, clip = tiny_dirs
    for folder in [pipeline / name for name in ("unet", "vae", "text_encoder")] + [clip]:
        files = weight_files(LocalFiles(folder))
        assert files is not None
        tensors = {name: tensor for path in files for name, tensor in load_file(folder / path).items()}
        infos = folder_tensors(LocalFiles(folder))
        assert infos is not None
        assert {t.name: (t.dtype, t.shape) for t in infos} == {
            name: (SAFETENSORS_DTYPES[t.dtype], tuple(t.shape)) for name, t in tensors.items()
        }
        assert sum(t.nbytes for t in infos) == sum(t.numel() * t.element_size() for t in tensors.values())


def test_the_estimate_of_a_local_folder_is_its_weights_in_the_jobs_dtype_plus_the_stated_margin(tiny_dirs):
    from safetensors.torch import load_file

    pipeline, clip = tiny_dirs

    def bytes_as(folder: Path, size: int) -> int:
        tensors = load_file(folder / weight_files(LocalFiles(folder))[0]).values()  # type: ignore[index]
        return sum(t.numel() * (size if t.is_floating_point() else t.element_size()) for t in tensors)

    config = job(pipeline, clip={"model": str(clip)}, generation={"width": 64, "height": 64, "guidance_scale": 7.5})
    estimate = fit.estimate_job(config)
    # fp32 files, run in bf16: half the bytes; CLIP stays fp32; the scheduler and tokenizer hold nothing.
    assert {part.name: part.running_bytes for part in estimate.parts} == {
        "text_encoder": bytes_as(pipeline / "text_encoder", 2),
        "unet": bytes_as(pipeline / "unet", 2),
        "vae": bytes_as(pipeline / "vae", 2),
        "clip.model": bytes_as(clip, 4),
    }
    assert estimate.unknown == ()
    # CFG doubles the denoiser's batch; one image is decoded at a time (vae_slicing auto).
    assert estimate.activation_bytes == 64 * 64 * (2 * 512 + 3072)
    assert estimate.margin_bytes == 1.5 * GB + 0.1 * estimate.weights_bytes + estimate.activation_bytes
    assert fit.estimate_job(job(pipeline, model={"dtype": "fp32"})).weights_bytes == pytest.approx(
        2 * sum(bytes_as(pipeline / name, 2) for name in ("text_encoder", "unet", "vae"))
    )


def test_a_54_gb_model_is_read_from_its_header_alone(tmp_path):
    path = header_only(tmp_path / "big.safetensors", {"w": ("BF16", (27_000_000_000,)), "step": ("I64", (1,))})
    assert path.stat().st_size < 200  # no data behind the header: reading any of it would fail
    assert [(t.name, t.nbytes) for t in read_header(path)] == [("w", 54_000_000_000), ("step", 8)]


def test_sharded_weights_are_summed_from_their_index_and_a_variant_is_preferred(tmp_path):
    folder = tmp_path / "transformer"
    header_only(folder / "diffusion_pytorch_model-00001-of-00002.safetensors", {"a.weight": ("F32", (10, 10))})
    header_only(folder / "diffusion_pytorch_model-00002-of-00002.safetensors", {"b.weight": ("F32", (5, 4))})
    weight_map = {"a.weight": "diffusion_pytorch_model-00001-of-00002.safetensors"}
    weight_map["b.weight"] = "diffusion_pytorch_model-00002-of-00002.safetensors"
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    files = LocalFiles(tmp_path)
    assert sum(t.nbytes for t in folder_tensors(files, "transformer") or []) == 4 * (100 + 20)
    header_only(folder / "diffusion_pytorch_model.fp16.safetensors", {"a.weight": ("F16", (3, 3))})
    assert [t.shape for t in folder_tensors(files, "transformer", "fp16") or []] == [(3, 3)]
    assert len(folder_tensors(files, "transformer", "bf16") or []) == 2  # no such variant: the plain files


def test_a_model_too_big_for_the_largest_gpu_is_refused_in_one_line(tmp_path):
    # 21.5 G transformer parameters (40.0 GiB in bf16) + a 2.4 G text encoder: 44.5 GiB of weights; with the
    # margin (1.5 GiB + 10% + the activations of one 1024x1024 image, 3.5 GiB) ~54 GB.
    config = job(dit_pipeline(tmp_path / "qwen", 21.5e9, 2.4e9))
    estimate = fit.estimate_job(config)
    assert estimate.weights_bytes == pytest.approx(44.515 * GB, rel=1e-4)
    assert estimate.need_bytes == pytest.approx(1.1 * estimate.weights_bytes + 1.5 * GB + 1024**2 * (512 + 3072))
    with pytest.raises(ConfigError) as refused:
        fit.check_fit(config, estimate, [L4, {"CPU": 64.0}])
    assert str(refused.value) == (
        "model needs ~54 GB per worker in bf16; the cluster's largest GPU has 24 GB: "
        "use a smaller model, or larger GPUs"
    )
    fit.check_fit(config, estimate, [L4, H100])  # the H100 holds it


def test_the_refusal_offers_fp8_where_quantizing_the_transformer_would_make_it_fit(tmp_path):
    # 9.5 GiB of bf16 Linear weights + an 8.9 GiB text encoder: ~25 GB unquantized; loaded (18.4 GiB) it
    # fits a 24 GB GPU, and fp8 halves the transformer once loaded (~20 GB).
    config = job(dit_pipeline(tmp_path / "flux", 5.1e9, 4.8e9))
    with pytest.raises(ConfigError) as refused:
        fit.check_fit(config, fit.estimate_job(config), [L4])
    assert str(refused.value) == (
        "model needs ~25 GB per worker in bf16; the cluster's largest GPU has 24 GB: "
        "use performance.quantize: fp8, a smaller model, or larger GPUs"
    )
    quantized = job(tmp_path / "flux", performance={"quantize": "fp8"})
    estimate = fit.estimate_job(quantized)
    rows = int(5.1e9 / 3072 / 3072)
    assert {p.name: p.running_bytes for p in estimate.parts}["transformer"] == rows * (3072 * 3072 + 3072 * 4)
    fit.check_fit(quantized, estimate, [L4])


def test_uncertain_numbers_warn_instead_of_refusing(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="jobs.config.fit")
    config = job(dit_pipeline(tmp_path / "qwen", 21.5e9, 2.4e9))
    estimate = fit.estimate_job(config)
    fit.check_fit(config, estimate, [A100])  # 40 or 80 GB: it may fit
    fit.check_fit(config, estimate, [{"GPU": 4.0, "accelerator_type:X999": 1.0}, L4])  # a GPU of unknown size
    fit.check_fit(config, estimate, [{"GPU": 1.0}])  # a GPU without a type
    assert [record.getMessage() for record in caplog.records] == [
        "model needs ~54 GB per worker in bf16; workers on A100 (40 or 80 GB) GPUs may not have room to load it",
        "could not tell whether the model fits (model needs ~54 GB per worker in bf16): GPU memory unknown for "
        "GPUs of type X999",
        "model needs ~54 GB per worker in bf16; workers on L4 (24 GB) GPUs may not have room to load it",
        "could not tell whether the model fits (model needs ~54 GB per worker in bf16): GPU memory unknown for "
        "a node with 1 GPU(s) of a type Ray does not name",
    ]
    caplog.clear()
    tiny = job("tiny")  # a built-in: ~5 GB, all of it margin, fits any GPU worth naming
    fit.check_fit(tiny, fit.estimate_job(tiny), [{"GPU": 1.0}])
    assert caplog.records == []


def test_a_hub_model_not_in_the_cache_is_sized_as_unknown(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="jobs.config.fit")
    config = job("black-forest-labs/FLUX.1-dev")
    estimate = fit.estimate_job(config)
    assert estimate.parts == () and estimate.unknown == (
        "model.id black-forest-labs/FLUX.1-dev: not in the Hugging Face cache, so its weight sizes are unknown "
        "until the actors download it",
    )
    fit.check_fit(config, estimate, [H100])
    assert caplog.records[0].getMessage().startswith("sizes uncertain: model.id black-forest-labs/FLUX.1-dev: ")


def test_a_hub_model_not_in_the_cache_is_sized_from_its_headers_on_the_hub(tmp_path, monkeypatch):
    """Online, the headers are read with range requests (parse_safetensors_file_metadata), never the tensors."""
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import SafetensorsFileMetadata
    from huggingface_hub.utils import TensorInfo as HubTensor

    local = dit_pipeline(tmp_path / "remote", 21.5e9, 2.4e9)  # what the hub holds, read through the fakes below
    asked: list[str] = []

    class FakeApi:
        def list_repo_files(self, repo_id, revision=None):
            return [str(path.relative_to(local)) for path in local.rglob("*") if path.is_file()]

        def parse_safetensors_file_metadata(self, repo_id, filename, revision=None):
            asked.append(filename)
            tensors = {
                t.name: HubTensor(dtype=t.dtype, shape=list(t.shape), data_offsets=(0, t.nbytes))  # type: ignore[arg-type]
                for t in read_header(local / filename)
            }
            return SafetensorsFileMetadata(metadata={}, tensors=tensors)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(fit, "_HUB_FILES", {})
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, path, revision=None: str(local / path))
    estimate = fit.estimate_job(job("Qwen/Qwen-Image"))
    assert estimate.unknown == ()
    assert estimate.weights_bytes == pytest.approx(44.515 * GB, rel=1e-4)
    assert sorted(asked) == [
        "text_encoder/model.safetensors",
        "transformer/diffusion_pytorch_model.safetensors",
        "vae/diffusion_pytorch_model.safetensors",
    ]
    fit.estimate_job(job("Qwen/Qwen-Image", generation={"width": 512}))  # a sweep's next run: asked once
    assert len(asked) == 3

    def no_network(self, repo_id, revision=None):
        raise OSError("network unreachable")

    monkeypatch.setattr(FakeApi, "list_repo_files", no_network)
    fit._HUB_FILES.clear()
    assert fit.estimate_job(job("Qwen/Qwen-Image")).unknown == (
        "model.id Qwen/Qwen-Image: could not read its weight sizes from the hub (OSError)",
    )


def test_cpu_jobs_skip_the_check_and_read_no_header(tmp_path):
    folder = dit_pipeline(tmp_path / "qwen", 1e6, 1e6)
    (folder / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not safetensors")
    config = job(folder, resources={"gpus_per_worker": 0})
    assert check_before_start(config) is None
    fit.check_fit(config, None, [L4])
    with pytest.raises(ConfigError, match=r"^model.id: .*diffusion_pytorch_model.safetensors: not a safetensors file"):
        check_before_start(job(folder))


def test_run_job_refuses_before_any_actor_starts_and_records_the_estimate(tmp_path, monkeypatch):
    from jobs.run.driver import run_job

    manifest = write_manifest(tmp_path / "prompts.parquet", {"id": [0], "prompt": ["a cat"]})
    config = JobConfig.model_validate(
        {**job(dit_pipeline(tmp_path / "qwen", 21.5e9, 2.4e9)).model_dump(), "manifest": str(manifest)}
    )
    config.output.path = str(tmp_path / "out")
    monkeypatch.setattr(cluster, "connect", lambda *args, **kwargs: None)
    monkeypatch.setattr(cluster, "actor_resources", lambda config: cluster.ActorResources(1.0, 1.0))
    monkeypatch.setattr(cluster, "live_nodes", lambda: [L4])
    monkeypatch.setattr(cluster, "start_worker", lambda *args, **kwargs: pytest.fail("an actor was started"))
    with pytest.raises(ConfigError, match=r"^model needs ~54 GB per worker in bf16; the cluster's largest GPU has 24"):
        run_job(config, progress="off")
    record = json.loads((tmp_path / "out" / "job.json").read_text())
    assert record["status"] == "failed"
    assert record["estimate"]["need_gb"] == 53.97
    assert record["estimate"]["parts_gb"] == {"transformer": 40.04, "text_encoder": 4.47, "vae": 0.0}
