"""performance.compile and compile_cache: when an actor compiles, and how a fleet compiles only once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from jobs.config.schema import JobConfig
from jobs.runfolder.settings import worker_settings
from tests.conftest import small_config, worker_settings_for
from workers.models import loading
from workers.pipeline import compile_cache
from workers.pipeline.compile_cache import CompileKey
from workers.pipeline.fastpaths import COMPILE_PAYS_BACK_AFTER, choose_compile
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

CPU, CUDA = torch.device("cpu"), torch.device("cuda")  # a device object needs no GPU; nothing runs on it


def test_auto_compiles_on_a_gpu_only_when_the_job_is_big_enough_to_pay_it_back():
    assert 270 <= COMPILE_PAYS_BACK_AFTER <= 290  # 40.4 s / (1/2.62 - 1/4.19 s per image)
    assert choose_compile("auto", CPU, 10_000) == choose_compile("auto", CPU, None)
    assert not choose_compile("auto", CPU, 10_000).on
    assert choose_compile("auto", CUDA, COMPILE_PAYS_BACK_AFTER).on
    assert choose_compile("auto", CUDA, None).on  # an actor built alone does not know the job's size
    small = choose_compile("auto", CUDA, COMPILE_PAYS_BACK_AFTER - 1)
    assert not small.on
    assert small.reason == (
        f"off: {COMPILE_PAYS_BACK_AFTER - 1} images per worker cannot pay back ~40 s of compiling "
        f"(auto compiles from {COMPILE_PAYS_BACK_AFTER}; set performance.compile: true to compile anyway)"
    )
    # An explicit setting is obeyed, whatever the device and the job's size.
    assert choose_compile(True, CPU, 1).on and not choose_compile(False, CUDA, 10**6).on


def test_the_driver_tells_each_actor_its_share_of_the_images(tmp_path):
    raw = small_config("m.parquet", tmp_path, resources={"workers": 3})
    settings = worker_settings(JobConfig.model_validate(raw), str(tmp_path), "key", images_to_generate=1000)
    assert settings.images_per_worker == 334  # rounded up
    assert worker_settings(JobConfig.model_validate(raw), str(tmp_path), "key").images_per_worker is None


def test_compile_settings_are_validated(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    raw = small_config("m.parquet", tmp_path)
    performance = JobConfig.model_validate(raw).performance
    assert (performance.compile, performance.compile_cache) == ("auto", None)
    for value in (True, False, "auto"):
        assert JobConfig.model_validate({**raw, "performance": {"compile": value}}).performance.compile == value
    for bad in ("yes please", 2):
        with pytest.raises(ValueError, match="compile"):
            JobConfig.model_validate({**raw, "performance": {"compile": bad}})
    cache = JobConfig.model_validate({**raw, "performance": {"compile_cache": "~/kernels"}}).performance.compile_cache
    assert cache == str(tmp_path / "kernels")
    uri = JobConfig.model_validate({**raw, "performance": {"compile_cache": "s3://b/k"}}).performance.compile_cache
    assert uri == "s3://b/k"
    with pytest.raises(ValueError, match="must not be empty"):
        JobConfig.model_validate({**raw, "performance": {"compile_cache": " "}})


KEY = CompileKey(
    torch="2.13.0+cu128",
    diffusers="0.42.1",
    device="NVIDIA H100 80GB HBM3, CUDA 12.8",
    model="org/sd-1.5",
    revision=None,
    variant=None,
    dtype="bfloat16",
    batch_size=16,
    width=512,
    height=512,
    guidance=True,
)


def test_each_compiled_shape_and_library_has_a_file_of_its_own():
    name = KEY.file_name()
    assert name.startswith("torch-2.13.0_cu128-NVIDIA_H100_80GB_HBM3_CUDA_12.8-sd-1.5-bfloat16-b16-cfg-512x512-")
    assert name.endswith(".torch-cache") and "/" not in name
    changes = {
        "torch": "2.14.0",
        "diffusers": "0.43.0",
        "device": "NVIDIA L4, CUDA 12.8",
        "model": "other/sd-1.5",
        "revision": "v2",
        "variant": "fp16",
        "dtype": "float16",
        "batch_size": 8,
        "width": 768,
        "height": 768,
        "guidance": False,
    }
    names = {replace(KEY, **{field: value}).file_name() for field, value in changes.items()}
    assert len(names | {name}) == len(changes) + 1
    assert compile_cache.cache_file(None, KEY) == str(Path(os.environ["GENBATCH_CACHE"]) / "compile" / name)
    assert compile_cache.cache_file("s3://bucket/kernels", KEY) == f"s3://bucket/kernels/{name}"


class FakeCompiler:
    """torch.compiler's artifact API without compiling: what an actor saves and what it hands to torch."""

    def __init__(self, artifacts: bytes | None):
        self.artifacts = artifacts
        self.loaded: list[bytes] = []

    def save_cache_artifacts(self):
        return None if self.artifacts is None else (self.artifacts, _Info({"inductor": ["k1", "k2"]}))

    def load_cache_artifacts(self, data: bytes):
        self.loaded.append(data)
        return _Info({"inductor": ["k1"]}) if data.startswith(b"artifacts") else None


class _Info:
    def __init__(self, artifacts):
        self.artifacts = artifacts


@pytest.fixture
def fake_compiler(monkeypatch):
    fake = FakeCompiler(b"artifacts of the first actor")
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", fake.save_cache_artifacts)
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", fake.load_cache_artifacts)
    return fake


@pytest.mark.parametrize("folder", ["local", "memory://genbatch-compile-test"])
def test_artifacts_are_saved_whole_and_loaded_back(tmp_path, fake_compiler, folder):
    location = compile_cache.cache_file(str(tmp_path) if folder == "local" else folder, KEY)
    assert not compile_cache.load_artifacts(location)  # nothing there yet
    assert compile_cache.save_artifacts(location)
    if folder == "local":
        assert [p.name for p in tmp_path.iterdir()] == [KEY.file_name()]  # no temporary file left
    assert compile_cache.load_artifacts(location)
    assert fake_compiler.loaded == [b"artifacts of the first actor"]


def test_a_cache_that_fails_only_costs_compile_time(tmp_path, fake_compiler, caplog):
    location = str(tmp_path / KEY.file_name())
    Path(location).write_bytes(b"not torch's")
    assert not compile_cache.load_artifacts(location)
    assert "holds no compiled kernels this torch can use" in caplog.text
    fake_compiler.artifacts = None  # torch compiled nothing (or its caches are off)
    assert not compile_cache.save_artifacts(location)
    fake_compiler.artifacts = b"artifacts"
    (tmp_path / "file").write_text("")
    assert not compile_cache.save_artifacts(str(tmp_path / "file" / "kernels"))  # a file where a folder should be
    assert "cannot save compiled kernels" in caplog.text


def test_the_first_actor_saves_what_it_compiled_and_the_next_one_loads_it(
    tmp_path, tiny_dirs, fake_compiler, monkeypatch
):
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: fn)  # the wiring, not Inductor (see the slow test)
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), manifest)
    task = ShardTask(0, str(manifest), 0, 3, 0, has_id_column=False)
    cache = tmp_path / "kernels"
    infos = []
    for run in ("first", "second"):
        base = worker_settings_for(tmp_path / run, resources={"batch_size": 2})
        worker = GenerationWorker(replace(base, fast=replace(base.fast, compile=True, compile_cache=str(cache))), 0)
        infos.append(worker.ready())
        assert worker.batch_runner.pad_to == 2  # a compiled model sees one batch size
        assert len(list(cache.glob("*"))) == (0 if run == "first" else 1)  # saved after the first micro-batch
        result = list(worker.run_shard(task))[-1]
        assert result.startup is not None and result.startup.pid == os.getpid()
        assert len(list(cache.iterdir())) == 1
    assert [(i.compile, i.compile_cache_hit, i.compile_reason) for i in infos] == [
        (True, False, "on: performance.compile is true"),
        (True, True, "on: performance.compile is true"),
    ]
    assert fake_compiler.loaded == [b"artifacts of the first actor"]


def test_a_cpu_actor_by_default_does_not_compile_and_says_how_soon_it_made_images(tmp_path, tiny_dirs):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a", "b", "c"]}), manifest)
    worker = GenerationWorker(worker_settings_for(tmp_path / "out", resources={"batch_size": 2}), 0)
    info = worker.ready()
    assert (info.compile, info.compile_cache_hit) == (False, None)
    assert info.compile_reason == "off: auto compiles on GPUs only, this actor runs on cpu"
    assert worker.batch_runner.pad_to is None
    results = [e for e in worker.run_shard(ShardTask(0, str(manifest), 0, 3, 0, has_id_column=False))]
    startup = results[-1].startup
    assert startup.pid == os.getpid() and 0 < startup.first_batch_seconds < startup.first_image_seconds
    assert startup.first_image_seconds > info.load_seconds  # counted from the actor's start, loading included
    again = list(worker.run_shard(ShardTask(0, str(manifest), 0, 3, 0, has_id_column=False)))[-1]
    assert again.startup == startup  # measured once per actor


@pytest.mark.parametrize(
    "device",
    [CPU, pytest.param(CUDA, marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU"))],
)
def test_weights_are_read_onto_the_device_in_the_dtype_not_moved_or_cast_after(monkeypatch, tiny_dirs, device):
    """On a GPU no copy of the whole model is built in host memory: the pipeline that the real loader returns
    (before load_pipeline's `.to(device)`) already holds every weight on the device, in the actor's dtype."""
    from diffusers import StableDiffusionPipeline

    real_from_pretrained = StableDiffusionPipeline.from_pretrained
    as_read = []

    def from_pretrained(*args, **kwargs):
        pipeline = real_from_pretrained(*args, **kwargs)
        modules = [c for c in pipeline.components.values() if isinstance(c, torch.nn.Module)]
        as_read.append({(p.device.type, p.dtype) for module in modules for p in module.parameters()})
        return pipeline

    monkeypatch.setattr(StableDiffusionPipeline, "from_pretrained", from_pretrained)
    pipeline = loading.load_pipeline("tiny", None, device, torch.bfloat16)
    assert as_read == [{(device.type, torch.bfloat16)}]
    assert pipeline.unet.device.type == device.type


# Run as a script by the test below: one fresh actor process on an empty local torch cache (a new node).
CHILD = """
import json, sys
from dataclasses import replace
import pyarrow.parquet as pq
from tests.conftest import worker_settings_for
from workers.tasks import ShardTask
from workers.worker import GenerationWorker

manifest, output, cache = sys.argv[1:]
base = worker_settings_for(output, resources={"batch_size": 2})
worker = GenerationWorker(replace(base, fast=replace(base.fast, compile=True, compile_cache=cache)), 0)
result = list(worker.run_shard(ShardTask(0, manifest, 0, 3, 0, has_id_column=False)))[-1]
images = [image["bytes"].hex() for image in pq.read_table(result.file).column("image").to_pylist()]
print(json.dumps({"hit": worker.info.compile_cache_hit, "first_image": result.startup.first_image_seconds,
                  "first_batch": result.startup.first_batch_seconds, "images": images}))
"""


def run_fresh_actor(tmp_path: Path, name: str, manifest: Path, cache: Path) -> dict:
    env = {
        **os.environ,
        "PYTHONPATH": os.getcwd(),
        "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / f"inductor-{name}"),  # nothing compiled on this "node" yet
    }
    args = [sys.executable, "-c", CHILD, str(manifest), str(tmp_path / name), str(cache)]
    done = subprocess.run(args, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.minutes  # Inductor builds C++ kernels twice: minutes on a small CPU (make test-long)
def test_a_fresh_actor_reuses_kernels_compiled_by_another_and_makes_the_same_bytes(tmp_path, tiny_dirs):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a red cube", "a blue ball", "a green cone"]}), manifest)
    cache = tmp_path / "kernels"
    cold = run_fresh_actor(tmp_path, "cold", manifest, cache)
    assert len(list(cache.iterdir())) == 1
    warm = run_fresh_actor(tmp_path, "warm", manifest, cache)
    assert (cold["hit"], warm["hit"]) == (False, True)
    assert warm["images"] == cold["images"] and len(cold["images"]) == 3  # byte for byte
    assert warm["first_batch"] < cold["first_batch"] and warm["first_image"] < cold["first_image"]
