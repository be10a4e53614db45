"""Every DiT model family end to end on its built-in tiny model, against plain diffusers calls of its pipelines.

One entry of CASES per family: a family plugs in by adding its case. Each family's jobs share one session
actor (jobs.pool.worker_reuse): only the batch size, the scheduler and the generation settings change between them.
"""

from __future__ import annotations

import io
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field

import diffusers
import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image
from transformers import CLIPModel, CLIPProcessor

from jobs.cli.main import main
from jobs.config.schema import load_config
from tests.conftest import read_output, small_config, worker_settings_for, write_config, write_manifest
from tests.reference import decode_png, reference_cosine
from workers.models.loading import pipeline_source
from workers.models.schedulers import build_scheduler

SIZE = 32
PROMPTS = {"id": ["a", "b", "c"], "prompt": ["a red fox", "a lighthouse at dusk", "three green apples"]}
PROMPTS["seed"] = [3, 14, 15]
CPU_ACTOR = {"workers": 1, "gpus_per_worker": 0, "cpus_per_worker": 1}


@dataclass(frozen=True)
class Case:
    """What the tests need to know of a family: its tiny model, its pipelines and what to run it with."""

    model: str
    text_to_image: str
    image_to_image: str | None
    generation: dict  # steps and guidance for the tests' jobs (and the plain calls)
    schedulers: tuple[str, str]  # two that apply, to sweep over (the first: the model's own kind)
    foreign_scheduler: str  # one that does not apply
    title: str  # the family's name in messages
    applicable: str  # the schedulers the refusal lists
    extra_call: dict = field(default_factory=dict)  # what genbatch passes besides (empty negative prompts, ...)
    # The VAE round trip by hand: (pipeline, images in [-1, 1]) -> (the denoiser's latents, decoded images).
    vae_round_trip: Callable = field(default=None)
    # Why a negative prompt is refused; "": where the family takes one, and for FLUX.1 (tested on its own below).
    negative_prompt_rule: str = ""
    defaults: tuple[int, float] | None = None  # the model's default steps and guidance_scale

    def __str__(self) -> str:
        return self.model


def scaled_round_trip(pipeline, x):
    """Stable Diffusion, FLUX.1, SD3, Z-Image: latents scaled and shifted by the VAE config's factors."""
    vae = pipeline.vae
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor or 0.0
    latent = (vae.encode(x).latent_dist.mode() - shift) * scale
    return latent, vae.decode(latent / scale + shift).sample


def flux2_round_trip(pipeline, x):
    """FLUX.2: the pipeline's own encoding (2x2 patches, batch-norm statistics), decoded as its __call__ does."""
    vae = pipeline.vae
    latent = pipeline._encode_vae_image(x, generator=None)
    mean = vae.bn.running_mean.view(1, -1, 1, 1)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
    return latent, vae.decode(pipeline._unpatchify_latents(latent * std + mean)).sample


def dc_ae_round_trip(pipeline, x):
    """Sana's DC-AE: a deterministic latent, scaled only (no shift), decoded as SanaPipeline does."""
    vae = pipeline.vae
    latent = vae.encode(x).latent * vae.config.scaling_factor
    return latent, vae.decode(latent / vae.config.scaling_factor).sample


def per_channel_round_trip(pipeline, x):
    """Qwen-Image's video VAE: one frame, each latent channel normalised by the config's mean and std, as
    QwenImageImg2ImgPipeline encodes and QwenImagePipeline decodes."""
    vae = pipeline.vae
    mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1)
    latent = (vae.encode(x[:, :, None]).latent_dist.mode() - mean) * inverse_std
    return latent, vae.decode(latent / inverse_std + mean).sample[:, :, 0]


FLOW_MATCH_EULER = "flow_match_euler, flow_match_euler_karras, flow_match_euler_exponential, flow_match_euler_beta"
CASES = [
    Case(
        model="tiny-flux",
        text_to_image="FluxPipeline",
        image_to_image="FluxImg2ImgPipeline",
        generation={"steps": 2, "guidance_scale": 3.5},
        schedulers=("flow_match_euler", "flow_match_euler_karras"),
        foreign_scheduler="dpmpp_2m",
        title="FLUX.1",
        applicable=FLOW_MATCH_EULER,
        vae_round_trip=scaled_round_trip,
        defaults=(28, 3.5),
    ),
    Case(
        model="tiny-flux2",
        text_to_image="Flux2KleinPipeline",
        image_to_image=None,
        generation={"steps": 2, "guidance_scale": 4.0},  # klein base: CFG against the empty negative it makes
        schedulers=("flow_match_euler", "flow_match_euler_karras"),
        foreign_scheduler="dpmpp_2m",
        title="FLUX.2",
        applicable=FLOW_MATCH_EULER,
        vae_round_trip=flux2_round_trip,
        negative_prompt_rule="FLUX.2 takes no negative prompt",
        defaults=(50, 4.0),  # klein base (not distilled)
    ),
    Case(
        model="tiny-sd3",
        text_to_image="StableDiffusion3Pipeline",
        image_to_image="StableDiffusion3Img2ImgPipeline",
        generation={"steps": 2, "guidance_scale": 3.5},
        schedulers=("flow_match_euler", "flow_match_heun"),
        foreign_scheduler="euler_a",
        title="Stable Diffusion 3",
        applicable=f"{FLOW_MATCH_EULER}, flow_match_heun",
        extra_call={"negative_prompt": ""},
        vae_round_trip=scaled_round_trip,
        defaults=(28, 3.5),  # SD3.5-shaped (qk_norm)
    ),
    Case(
        model="tiny-qwen-image",
        text_to_image="QwenImagePipeline",
        image_to_image="QwenImageImg2ImgPipeline",
        generation={"steps": 2, "guidance_scale": 1.0},  # true_cfg_scale: the family's 4.0, with "" as negative
        schedulers=("flow_match_euler", "flow_match_euler_karras"),
        foreign_scheduler="flow_match_heun",
        title="Qwen-Image",
        applicable=FLOW_MATCH_EULER,
        extra_call={"negative_prompt": "", "true_cfg_scale": 4.0},
        vae_round_trip=per_channel_round_trip,
        defaults=(50, 1.0),
    ),
    Case(
        model="tiny-z-image",
        text_to_image="ZImagePipeline",
        image_to_image="ZImageImg2ImgPipeline",
        generation={"steps": 2, "guidance_scale": 3.0},
        schedulers=("flow_match_euler", "flow_match_euler_beta"),
        foreign_scheduler="unipc",
        title="Z-Image",
        applicable=FLOW_MATCH_EULER,
        extra_call={"negative_prompt": ""},
        vae_round_trip=scaled_round_trip,  # FLUX.1's VAE
        defaults=(9, 0.0),  # Z-Image-Turbo's
    ),
    Case(
        model="tiny-sana",
        text_to_image="SanaPipeline",
        image_to_image=None,
        generation={"steps": 2, "guidance_scale": 4.5},
        schedulers=("flow_dpmpp_2m", "flow_match_euler"),
        foreign_scheduler="dpmpp_2m",
        title="Sana",
        applicable=f"flow_dpmpp_2m, {FLOW_MATCH_EULER}, flow_match_heun",
        extra_call={"use_resolution_binning": False},  # genbatch makes the size asked, as for every family
        vae_round_trip=dc_ae_round_trip,
        defaults=(20, 4.5),
    ),
    Case(
        model="tiny-pixart",
        text_to_image="PixArtSigmaPipeline",
        image_to_image=None,
        generation={"steps": 2, "guidance_scale": 4.5},
        schedulers=("dpmpp_2m", "euler_a"),  # noise prediction: Stable Diffusion's schedulers
        foreign_scheduler="flow_match_euler",
        title="PixArt-Sigma",
        applicable=(
            "dpmpp_2m, ddim, pndm, lms, euler, euler_a, heun, dpmpp_2m_karras, dpmpp_sde, unipc, euler_trailing"
        ),
        extra_call={"negative_prompt": "", "use_resolution_binning": False, "clean_caption": False},
        vae_round_trip=scaled_round_trip,  # SD's VAE: scaled, no shift
        defaults=(20, 4.5),
    ),
]
# Every family's jobs, pixels and scores run in `make test`, and FLUX.1's reconstruct (in-process, cheap); the
# image-to-image, sweep and rescore jobs (another job each) and the other families' reconstruct only in
# `make test-long`, to keep the suite within its time.
FIRST = CASES[0].model


def core(cases=CASES):
    return [pytest.param(case, id=case.model) for case in cases]


def long_tier(cases=CASES):
    return [pytest.param(case, id=case.model, marks=pytest.mark.minutes) for case in cases]


def full(cases=CASES):
    marks = {case.model: () if case.model == FIRST else (pytest.mark.minutes,) for case in cases}
    return [pytest.param(case, id=case.model, marks=marks[case.model]) for case in cases]


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def plain_image(pipeline, case: Case, prompt: str, seed: int, **call) -> np.ndarray:
    """What a user gets from a plain call of the family's pipeline, as uint8 pixels."""
    arguments = {
        "num_inference_steps": case.generation["steps"],
        "guidance_scale": case.generation["guidance_scale"],
        "width": SIZE,
        "height": SIZE,
        **case.extra_call,
        **call,
    }
    if "image" in arguments:  # image-to-image takes its size from the image
        del arguments["width"], arguments["height"]
    # `prompt` by keyword: FLUX.2's first positional argument is a reference image.
    image = pipeline(prompt=prompt, generator=torch.Generator("cpu").manual_seed(seed), **arguments).images[0]
    return np.asarray(image)


def run(tmp_path, name: str, case: Case, manifest, **sections) -> tuple[int, object]:
    output = tmp_path / name
    generation = {"width": SIZE, "height": SIZE, **case.generation, **sections.pop("generation", {})}
    resources = {**CPU_ACTOR, "batch_size": 1, **sections.pop("resources", {})}
    config = write_config(
        tmp_path / f"{name}.yaml",
        manifest,
        output,
        model={"id": case.model},
        generation=generation,
        resources=resources,
        **sections,
    )
    return main(["run", str(config), "--quiet"]), output


@pytest.fixture(scope="module")
def family(request, tmp_path_factory, ray_session):
    """A family's case, the plain pipeline, and its base job (batch size 1) and batched job (3 rows a call,
    2 images per prompt), run on one actor."""
    case = request.param
    tmp_path = tmp_path_factory.mktemp(case.model)
    manifest = write_manifest(tmp_path / "prompts.parquet", PROMPTS)
    code, base = run(tmp_path, "base", case, manifest)
    assert code == 0
    code, batched = run(
        tmp_path, "batched", case, manifest, resources={"batch_size": 3}, generation={"images_per_prompt": 2}
    )
    assert code == 0
    torch.set_num_threads(1)  # as in the actors (cpus_per_worker: 1): the same reduction order
    pipeline = getattr(diffusers, case.text_to_image).from_pretrained(pipeline_source(case.model), use_safetensors=True)
    pipeline.set_progress_bar_config(disable=True)
    return case, pipeline, tmp_path, manifest, read_output(base), read_output(batched)


@pytest.mark.parametrize("family", core(), indirect=True)
def test_images_equal_a_plain_pipeline_call_exactly_alone_and_within_one_level_batched(family):
    case, pipeline, _, _, base, batched = family
    assert base.column("id").to_pylist() == PROMPTS["id"]
    assert set(base.column("model").to_pylist()) == {case.model}
    assert base.column("status").to_pylist() == ["ok"] * 3
    for row in base.to_pylist():
        expected = plain_image(pipeline, case, row["prompt"], row["seed"])
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected), row["id"]
    # Batched three to a call, each image is still its own seed's: within one 8-bit level of the lone call.
    alone = {row["id"]: decode_png(row["image"]["bytes"]).astype(int) for row in base.to_pylist()}
    firsts = [row for row in batched.to_pylist() if row["image_index"] == 0]
    assert [row["id"] for row in firsts] == PROMPTS["id"]
    for row in firsts:
        assert np.abs(decode_png(row["image"]["bytes"]).astype(int) - alone[row["id"]]).max() <= 1, row["id"]


@pytest.mark.parametrize("family", core(), indirect=True)
def test_images_per_prompt_gives_each_image_its_own_seed(family):
    case, pipeline, _, _, _, batched = family
    assert batched.num_rows == 6
    assert batched.column("id").to_pylist() == [i for i in PROMPTS["id"] for _ in range(2)]
    assert batched.column("image_index").to_pylist() == [0, 1] * 3
    second = batched.to_pylist()[1]
    assert second["seed"] != PROMPTS["seed"][0]
    expected = plain_image(pipeline, case, second["prompt"], second["seed"])
    assert np.abs(decode_png(second["image"]["bytes"]).astype(int) - expected.astype(int)).max() <= 1


@pytest.mark.parametrize("family", core(), indirect=True)
def test_clip_scores_equal_transformers_on_the_written_images(family, tiny_dirs):
    _, _, _, _, base, _ = family
    model, processor = CLIPModel.from_pretrained(tiny_dirs[1]).eval(), CLIPProcessor.from_pretrained(tiny_dirs[1])
    for row in base.to_pylist():
        expected = reference_cosine(model, processor, decode_png(row["image"]["bytes"]), row["prompt"])
        assert row["clip_cosine"] == pytest.approx(expected, abs=1e-4), row["id"]


@pytest.mark.parametrize("family", long_tier(), indirect=True)
def test_image_to_image_equals_a_plain_call_of_the_family_image_to_image_pipeline(family):
    case, pipeline, tmp_path, _, base, _ = family
    if case.image_to_image is None:
        pytest.skip(f"{case.title} has no image-to-image pipeline")
    inits = [row["image"]["bytes"] for row in base.to_pylist()]
    manifest = write_manifest(
        tmp_path / "img2img.parquet", {**PROMPTS, "init_image": pa.array(inits), "strength": [0.5, 0.75, 1.0]}
    )
    code, output = run(tmp_path, "img2img", case, manifest)
    assert code == 0
    img2img = getattr(diffusers, case.image_to_image).from_pipe(pipeline)
    for row, init, strength in zip(read_output(output).to_pylist(), inits, [0.5, 0.75, 1.0]):
        image = Image.open(io.BytesIO(init)).convert("RGB")
        expected = plain_image(img2img, case, row["prompt"], row["seed"], image=image, strength=strength)
        assert np.array_equal(decode_png(row["image"]["bytes"]), expected), row["id"]


@pytest.mark.parametrize("family", long_tier(), indirect=True)
def test_a_sweep_over_schedulers_and_guidance_runs_each_as_a_plain_call(family):
    case, pipeline, tmp_path, manifest, base, _ = family
    sweep = {"model.scheduler": list(case.schedulers), "generation.guidance_scale": [case.generation["guidance_scale"]]}
    code, output = run(tmp_path, "sweep", case, manifest, sweep=sweep)
    assert code == 0
    own = pipeline.scheduler
    guidance = case.generation["guidance_scale"]
    for name in case.schedulers:
        table = read_output(output / f"guidance_scale={guidance},scheduler={name}")
        assert set(table.column("scheduler").to_pylist()) == {name}
        first = table.to_pylist()[0]
        pipeline.scheduler = build_scheduler(name, own.config)
        try:
            expected = plain_image(pipeline, case, first["prompt"], first["seed"])
        finally:
            pipeline.scheduler = own
        assert np.array_equal(decode_png(first["image"]["bytes"]), expected), name
    # The model's own kind of scheduler, named, gives the images of the model's own scheduler.
    own_kind = read_output(output / f"guidance_scale={guidance},scheduler={case.schedulers[0]}")
    assert own_kind.column("image_sha256").to_pylist() == base.column("image_sha256").to_pylist()


@pytest.mark.parametrize("family", long_tier(), indirect=True)
def test_rescore_adds_a_score_to_a_family_run(family):
    case, _, tmp_path, _, _, _ = family
    base = tmp_path / "base"
    assert main(["rescore", str(base), "--set", "scores.pickscore.model=tiny-pickscore"]) == 0
    table = read_output(base)
    assert table.column("pickscore").null_count == 0
    assert json.loads((base / "job.json").read_text())["config"]["model"]["id"] == case.model


@pytest.mark.parametrize("family", full(), indirect=True)
def test_reconstruct_round_trips_through_the_family_vae_with_its_shift_and_scale(family, tmp_path):
    """In-process (one actor is all reconstruct needs): MSE, PSNR and latent statistics against the VAE by hand."""
    from workers.tasks import ShardTask
    from workers.worker import GenerationWorker

    case, pipeline, _, _, base, _ = family
    inits = [row["image"]["bytes"] for row in base.to_pylist()]
    manifest = write_manifest(tmp_path / "images.parquet", {"id": PROMPTS["id"], "init_image": pa.array(inits)})
    settings = worker_settings_for(
        tmp_path / "out", mode="reconstruct", model={"id": case.model}, generation={"width": SIZE, "height": SIZE}
    )
    worker = GenerationWorker(settings, 0)
    assert worker.load_error is None, worker.load_error
    result = list(worker.run_shard(ShardTask(0, str(manifest), 0, 3, 0, has_id_column=True)))[-1]
    import pyarrow.parquet as pq

    table = pq.read_table(result.file)
    for row, init in zip(table.to_pylist(), inits):
        pixels = np.asarray(Image.open(io.BytesIO(init)).convert("RGB"))
        x = torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1)[None] / 127.5 - 1
        with torch.no_grad():
            latent, decoded = case.vae_round_trip(pipeline, x)
        expected = ((decoded[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
        written = decode_png(row["image"]["bytes"])
        assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1, row["id"]
        assert row["latent_mean"] == pytest.approx(float(latent.mean()), abs=1e-5)
        assert row["latent_std"] == pytest.approx(float(latent.std()), abs=1e-5)
        mse = float(((written.astype(float) - pixels.astype(float)) / 255).__pow__(2).mean())
        assert row["recon_mse"] == pytest.approx(mse, rel=1e-9)


# Config-time behaviour: no actor, no Ray.


def config_file(tmp_path, model_id: str, drop: tuple[str, ...] = (), **sections):
    """A small job config for `model_id` (its generation keys in `drop` left unset), written to job.yaml."""
    import yaml

    raw = small_config(tmp_path / "m.parquet", tmp_path / "out", **{"model": {"id": model_id}, **sections})
    raw["generation"] = {key: value for key, value in raw["generation"].items() if key not in drop}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_defaults_come_from_the_family_and_the_model_config(tmp_path, model_cache):
    """FLUX.1-dev-shaped tiny-flux: 28 steps, guidance 3.5; a schnell-shaped copy (no guidance embedding):
    4 steps, guidance 0; Stable Diffusion keeps genbatch's 30 and 7.5, and its identity has no new keys."""
    from jobs.inputs.manifest import Manifest
    from jobs.runfolder.resume import job_identity

    unset = {"drop": ("steps", "guidance_scale")}
    flux = load_config(config_file(tmp_path, "tiny-flux", **unset))
    assert (flux.generation.steps, flux.generation.guidance_scale) == (28, 3.5)
    assert (flux.generation.true_cfg_scale, flux.generation.max_sequence_length) == (1.0, 512)
    schnell = shutil.copytree(pipeline_source("tiny-flux"), tmp_path / "schnell")
    transformer = json.loads((schnell / "transformer" / "config.json").read_text())
    (schnell / "transformer" / "config.json").write_text(json.dumps(transformer | {"guidance_embeds": False}))
    fast = load_config(config_file(tmp_path, str(schnell), **unset))
    assert (fast.generation.steps, fast.generation.guidance_scale) == (4, 0.0)
    sd = load_config(config_file(tmp_path, "tiny", **unset))
    assert (sd.generation.steps, sd.generation.guidance_scale) == (30, 7.5)
    manifest = Manifest("m", (), ("prompt",), False, 1, "f")
    assert set(job_identity(sd, manifest)["generation"]) == {
        "steps", "guidance_scale", "width", "height", "negative_prompt", "images_per_prompt", "strength",
        "init_image_policy",
    }  # fmt: skip
    # Set by the user, a value stays; a sweep's run for another model gets that model's defaults.
    assert load_config(config_file(tmp_path, "tiny-flux"), ["generation.steps=5"]).generation.steps == 5
    from jobs.config.sweep_plan import expand_sweep

    both = load_config(config_file(tmp_path, "tiny", sweep={"model.id": ["tiny", "tiny-flux"]}, **unset))
    runs = {run.config.model.id: run.config.generation for run in expand_sweep(both, "job.yaml")}
    assert (runs["tiny"].steps, runs["tiny-flux"].steps, runs["tiny-flux"].guidance_scale) == (30, 28, 3.5)


@pytest.mark.parametrize("case", core())
def test_a_scheduler_of_another_kind_is_refused_naming_those_that_apply(case, tmp_path, capsys, model_cache):
    path = config_file(tmp_path, case.model, model={"id": case.model, "scheduler": case.foreign_scheduler})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: model.scheduler: scheduler {case.foreign_scheduler!r} does not apply to "
        f"{case.title} models; choose one of: {case.applicable}"
    )


def test_flow_schedulers_are_refused_for_stable_diffusion(tmp_path, capsys, model_cache):
    path = config_file(tmp_path, "tiny", model={"id": "tiny", "scheduler": "flow_match_euler"})
    assert main(["run", str(path)]) == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .endswith(
            "model.scheduler: scheduler 'flow_match_euler' does not apply to Stable Diffusion 1/2 models; "
            "choose one of: ddim, pndm, lms, euler, euler_a, heun, dpmpp_2m, dpmpp_2m_karras, dpmpp_sde, unipc, "
            "euler_trailing"
        )
    )


def test_negative_prompts_where_flux_takes_none_are_refused(tmp_path, capsys, model_cache):
    path = config_file(tmp_path, "tiny-flux", generation={"negative_prompt": "blurry"})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: generation.negative_prompt: FLUX.1 takes a negative prompt only with "
        "generation.true_cfg_scale > 1"
    )
    manifest = write_manifest(
        tmp_path / "m.parquet",
        {"id": ["a", "b", "c"], "prompt": ["x", "y", "z"], "negative_prompt": ["", None, "dark"]},
    )
    path = config_file(tmp_path, "tiny-flux")
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: column 'negative_prompt': FLUX.1 takes a negative prompt only with "
        "generation.true_cfg_scale > 1, and 1 row has one (ids: c); remove the column or its values"
    )
    # With true CFG on, the same manifest is accepted (the job is not run here).
    config = load_config(path, ["generation.true_cfg_scale=4"])
    from jobs.config.model_family import check_manifest
    from jobs.inputs.manifest import read_manifest

    check_manifest(config, read_manifest(str(manifest)))


def test_a_negative_prompt_for_flux2_which_takes_none_is_refused(tmp_path, capsys, model_cache):
    path = config_file(tmp_path, "tiny-flux2", generation={"negative_prompt": "blurry"})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: generation.negative_prompt: FLUX.2 takes no negative prompt"
    )


def test_true_cfg_and_sequence_length_are_refused_where_the_family_has_none(tmp_path, capsys, model_cache):
    path = config_file(tmp_path, "tiny", generation={"true_cfg_scale": 4.0})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: generation.true_cfg_scale: Stable Diffusion 1/2 has no true CFG (its "
        "guidance_scale is classifier-free guidance); remove the key"
    )
    path = config_file(tmp_path, "tiny-flux", generation={"max_sequence_length": 1024})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: generation.max_sequence_length: FLUX.1 reads at most 512 tokens, got 1024"
    )


def test_a_model_of_an_unknown_family_is_refused_before_any_actor_starts(tmp_path, capsys, tiny_dirs):
    folder = shutil.copytree(tiny_dirs[0], tmp_path / "kandinsky")
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(index | {"_class_name": "KandinskyV22Pipeline"}))
    path = config_file(tmp_path, str(folder))
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: model.id: {folder}: pipeline class 'KandinskyV22Pipeline' is not a model family "
        "genbatch knows; it knows: Stable Diffusion 1/2 (StableDiffusionPipeline), SDXL (StableDiffusionXLPipeline), "
        "FLUX.1 (FluxPipeline), Stable Diffusion 3 (StableDiffusion3Pipeline), Qwen-Image (QwenImagePipeline), "
        "Z-Image (ZImagePipeline), Sana (SanaPipeline), FLUX.2 (Flux2KleinPipeline), PixArt-Sigma (PixArtSigmaPipeline)"
    )


def test_builtin_facts_match_the_built_models(model_cache):
    """What the families declare of their built-ins (read by the driver without building them) is what the
    built folders hold."""
    from workers.models import families

    for family in families.FAMILIES:
        for ref, files in family.builtins.items():
            folder = pipeline_source(ref)
            index = json.loads(open(f"{folder}/model_index.json", encoding="utf-8").read())
            assert index["_class_name"] in family.class_names, ref
            for name, facts in files.items():
                config = json.loads(open(f"{folder}/{name}", encoding="utf-8").read())
                assert {key: config[key] for key in facts} == facts, (ref, name)


def test_compile_and_quantize_act_on_the_transformer(model_cache):
    from workers.models.loading import load_pipeline
    from workers.pipeline.fastpaths import apply_fast_paths
    from workers.tasks import FastPaths

    pipeline = load_pipeline("tiny-flux", None, torch.device("cpu"), torch.float32)
    fast = FastPaths(
        compile=True,
        compile_cache=None,
        channels_last=True,
        quantize="int8",
        quantize_min_features=16,
        vae_slicing=False,
        vae_tiling=False,
        cache="none",
        cache_threshold=None,
        cache_warmup_steps=None,
        cache_interval=None,
        clip_preprocess="processor",
        writer_threads=0,
    )
    settings = worker_settings_for("unused", model={"id": "tiny-flux"})
    applied = apply_fast_paths(pipeline, fast, torch.device("cpu"), 2, settings.defaults)
    # No channels_last for a transformer; the per-image embedding and modulation layers are left out.
    assert applied[0].startswith("quantize int8: ") and applied[1:] == ["compile"]
    assert isinstance(pipeline.transformer, torch._dynamo.eval_frame.OptimizedModule)


def test_a_hub_model_in_the_cache_gets_its_family_defaults_and_checks(tmp_path, capsys, model_cache):
    """The family of a hub id comes from the Hugging Face cache before any actor starts (offline, as here)."""
    from tests.helpers.hub_cache import put_in_hub_cache

    put_in_hub_cache("genbatch-test/flux-in-the-cache", pipeline_source("tiny-flux"))
    path = config_file(tmp_path, "genbatch-test/flux-in-the-cache", drop=("steps", "guidance_scale"))
    config = load_config(path)
    assert (config.generation.steps, config.generation.guidance_scale) == (28, 3.5)
    assert main(["run", str(path), "--set", "model.scheduler=ddim"]) == 2
    assert "model.scheduler: scheduler 'ddim' does not apply to FLUX.1 models" in capsys.readouterr().err


@pytest.mark.parametrize("case", core())
def test_unset_steps_and_guidance_are_the_models_defaults(case, tmp_path, model_cache):
    config = load_config(config_file(tmp_path, case.model, drop=("steps", "guidance_scale")))
    assert (config.generation.steps, config.generation.guidance_scale) == case.defaults


def test_the_denoiser_runs_twice_per_step_where_the_family_guides():
    """CFG starts above guidance_scale 1 for most, above 0 for Z-Image; true CFG needs true_cfg_scale > 1."""
    from workers.models.families import FAMILIES

    twice = {family.name: family.batch_multiplier for family in FAMILIES}
    assert (twice["z-image"](0.5, None), twice["z-image"](0.0, None)) == (2, 1)
    assert (twice["sana"](4.5, None), twice["sana"](1.0, None), twice["flux2"](4.0, None)) == (2, 1, 2)
    assert (twice["qwen-image"](1.0, 4.0), twice["qwen-image"](4.0, 1.0)) == (2, 1)


@pytest.mark.parametrize("case", core([case for case in CASES if case.negative_prompt_rule]))
def test_negative_prompts_are_refused_where_the_family_takes_none(case, tmp_path, capsys, model_cache):
    path = config_file(tmp_path, case.model, generation={"negative_prompt": "blurry"})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {path}: generation.negative_prompt: {case.negative_prompt_rule}"
    )
    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": ["a", "b"], "prompt": ["x", "y"], "negative_prompt": ["", "dark"]}
    )
    path = config_file(tmp_path, case.model)
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: column 'negative_prompt': {case.negative_prompt_rule}, and 1 row has one "
        "(ids: b); remove the column or its values"
    )


def test_the_token_limit_is_the_text_encoders_not_the_default(tmp_path, capsys, model_cache):
    """SD3 reads 256 T5 tokens unless told more, up to T5's 512; Qwen-Image 512, up to 1024."""
    for model, default, limit, title in (
        ("tiny-sd3", 256, 512, "Stable Diffusion 3"),
        ("tiny-qwen-image", 512, 1024, "Qwen-Image"),
    ):
        assert load_config(config_file(tmp_path, model)).generation.max_sequence_length == default
        path = config_file(tmp_path, model, generation={"max_sequence_length": limit})
        assert load_config(path).generation.max_sequence_length == limit
        path = config_file(tmp_path, model, generation={"max_sequence_length": limit + 1})
        assert main(["run", str(path)]) == 2
        assert capsys.readouterr().err.strip() == (
            f"genbatch: error: {path}: generation.max_sequence_length: {title} reads at most {limit} tokens, "
            f"got {limit + 1}"
        )


def test_flux2_dev_loads_as_itself_and_sana_euler_keeps_the_model_shift(model_cache):
    """A family's other text-to-image class (FLUX.2 dev) loads as itself, its image-to-image classes as the
    text-to-image one; a flow-matching Euler scheduler built from Sana's flow DPM-Solver config keeps its shift."""
    from workers.models.families import for_class_name

    flux2, flux = for_class_name("Flux2Pipeline"), for_class_name("FluxImg2ImgPipeline")
    assert (flux2.text_to_image_for("Flux2Pipeline"), flux2.text_to_image_for("Flux2KleinPipeline")) == (
        "Flux2Pipeline",
        "Flux2KleinPipeline",
    )
    assert flux.text_to_image_for("FluxImg2ImgPipeline") == "FluxPipeline"
    own = json.loads(open(f"{pipeline_source('tiny-sana')}/scheduler/scheduler_config.json", encoding="utf-8").read())
    assert own["flow_shift"] == 3.0
    assert build_scheduler("flow_match_euler", own).config.shift == 3.0
    assert build_scheduler("flow_dpmpp_2m", own).config.flow_shift == 3.0


def test_online_the_driver_fetches_a_hub_pipelines_index_and_applies_its_family(tmp_path, monkeypatch, model_cache):
    """A hub model not in the cache: preflight fetches its model_index.json and transformer/config.json (small
    files, no weights) so that the family's defaults are resolved, and recorded, before any actor starts."""
    import huggingface_hub
    from huggingface_hub import constants

    from jobs.config.model_family import resolved_again
    from jobs.config.preflight import check_models
    from tests.helpers.hub_cache import put_in_hub_cache

    repo = "genbatch-test/flux-on-the-hub"
    fetched = []

    def hf_hub_download(repo_id, filename, **options):
        fetched.append(filename)
        put_in_hub_cache(repo_id, pipeline_source("tiny-flux"))  # as a download would leave it
        return huggingface_hub.try_to_load_from_cache(repo_id, filename)

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", lambda url, **options: None)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    config = load_config(config_file(tmp_path, repo, drop=("steps", "guidance_scale"), clip={"model": "tiny"}))
    assert (config.generation.steps, config.generation.guidance_scale) == (30, 7.5)  # not known yet
    check_models(config)
    assert fetched == ["model_index.json"]  # transformer/config.json came with it
    resolved = resolved_again(config)
    assert (resolved.generation.steps, resolved.generation.guidance_scale) == (28, 3.5)
    assert resolved.generation.max_sequence_length == 512


def test_init_images_for_a_family_without_image_to_image_are_refused(tmp_path, capsys, model_cache):
    manifest = write_manifest(
        tmp_path / "m.parquet", {"id": ["a", "b"], "prompt": ["x", "y"], "init_image": [None, b"1"]}
    )
    path = config_file(tmp_path, "tiny-sana", generation={"steps": 2, "guidance_scale": 4.5})
    assert main(["run", str(path)]) == 2
    assert capsys.readouterr().err.strip() == (
        f"genbatch: error: {manifest}: column 'init_image': Sana has no image-to-image pipeline, and 1 row has one "
        "(ids: b); remove the column or its values"
    )
