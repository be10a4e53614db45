"""The built-in tiny DiT pipelines: each is built from fixed seeds, saved as safetensors in the diffusers folder
format, reloads through `from_pretrained` with its family's pipeline class, and generates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from workers.models import loading, tiny_dit
from workers.models.tiny_dit.tokenizers import QWEN_IMAGE_DROP_TOKENS, QWEN_IMAGE_SYSTEM_PREFIX

NAMES = sorted(tiny_dit.TINY_DITS)
# Longer than every text encoder's limit: CLIP 77, T5 512, Qwen-Image 1024 + 34, Gemma 300 (+ instruction).
LONG_PROMPT = "a watercolour painting of a red fox in the snow, " * 60
# Sana's and PixArt's default resolution binning would turn 32 px into their smallest bin (256 px and up).
CALL_OPTIONS = {name: {"use_resolution_binning": False} for name in ("tiny-sana", "tiny-pixart")}
IMAGE_TO_IMAGE = {
    "tiny-flux": "FluxImg2ImgPipeline",
    "tiny-sd3": "StableDiffusion3Img2ImgPipeline",
    "tiny-qwen-image": "QwenImageImg2ImgPipeline",
    "tiny-z-image": "ZImageImg2ImgPipeline",
}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny models' matrices are far too small for threads to pay; on a busy 2-core machine torch's thread
    # pool makes them 10-20x slower.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def pipelines():
    """Each family's pipeline, built once into the session's cache and loaded as a user's model would be."""
    from diffusers import DiffusionPipeline

    loaded = {}

    def load(name: str):
        if name not in loaded:
            loaded[name] = DiffusionPipeline.from_pretrained(loading.pipeline_source(name), use_safetensors=True)
        return loaded[name]

    return load


def test_the_names_are_built_in_models():
    assert NAMES == [
        "tiny-flux", "tiny-flux2", "tiny-pixart", "tiny-qwen-image", "tiny-sana", "tiny-sd3", "tiny-z-image",
    ]  # fmt: skip
    for name in NAMES:
        assert loading.is_builtin(name)
        assert not loading.is_hub_model(name) and not loading.unknown_model_ref(name)


@pytest.mark.parametrize("name", NAMES)
def test_folder_holds_safetensors_and_reloads_with_its_pipeline_class(name, pipelines):
    import diffusers

    folder = Path(loading.pipeline_source(name))
    assert folder.name == f"{name}-v{tiny_dit.TINY_DITS[name].version}"
    expected = tiny_dit.TINY_DITS[name].pipeline
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == expected
    weights = {path.suffix for path in folder.rglob("*") if path.suffix in {".safetensors", ".bin", ".pt", ".pth"}}
    assert weights == {".safetensors"}
    pipeline = pipelines(name)
    assert type(pipeline) is getattr(diffusers, expected)
    assert hasattr(pipeline, "transformer") and not hasattr(pipeline, "unet")


@pytest.mark.parametrize("name", NAMES)
def test_two_builds_from_scratch_are_identical(name, tmp_path):
    tiny_dit.TINY_DITS[name].save(tmp_path)
    cached = Path(loading.pipeline_source(name))
    built = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    assert built == sorted(path.relative_to(cached) for path in cached.rglob("*") if path.is_file())
    for path in built:
        assert (tmp_path / path).read_bytes() == (cached / path).read_bytes(), path


def built_tokenizer(tokenizer):
    """A freshly built copy of the tokenizer a pipeline was saved with, picked by its class."""
    from workers.models import tiny
    from workers.models.tiny_dit import tokenizers

    builders = {
        "CLIPTokenizer": tiny.build_tokenizer,
        "T5Tokenizer": tokenizers.build_t5_tokenizer,
        "Qwen2Tokenizer": tokenizers.build_qwen_tokenizer,
        "GemmaTokenizer": tokenizers.build_gemma_tokenizer,
    }
    return builders[type(tokenizer).__name__]()


@pytest.mark.parametrize("name", NAMES)
def test_reloaded_tokenizers_encode_as_built(name, pipelines):
    pipeline = pipelines(name)
    for attribute in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        reloaded = getattr(pipeline, attribute, None)
        if reloaded is None:
            continue
        built = built_tokenizer(reloaded)
        sample = "A red fox, 3 birds & <unk> snow!\n" + LONG_PROMPT
        assert reloaded(sample).input_ids == built(sample).input_ids
        assert reloaded.all_special_tokens == built.all_special_tokens
        assert (reloaded.pad_token_id, reloaded.model_max_length) == (built.pad_token_id, built.model_max_length)
        assert reloaded.chat_template == built.chat_template
        # A prompt past the limit is cut, not refused: the pipelines truncate to their own maximum.
        limit = min(reloaded.model_max_length, 512)
        assert len(reloaded(LONG_PROMPT, max_length=limit, truncation=True).input_ids) == limit
        assert len(reloaded(LONG_PROMPT).input_ids) > limit


def test_qwen_template_prefix_is_the_34_tokens_qwen_image_drops(pipelines):
    tokenizer = pipelines("tiny-qwen-image").tokenizer
    assert len(tokenizer(QWEN_IMAGE_SYSTEM_PREFIX).input_ids) == QWEN_IMAGE_DROP_TOKENS == 34
    assert pipelines("tiny-qwen-image").prompt_template_encode_start_idx == QWEN_IMAGE_DROP_TOKENS


@pytest.mark.parametrize("name", NAMES)
def test_two_steps_at_32_px_from_a_long_prompt(name, pipelines):
    pipeline = pipelines(name)
    options = {"height": 32, "width": 32, "num_inference_steps": 2, "output_type": "np"}

    def generate(prompt):
        generator = torch.Generator().manual_seed(7)
        return pipeline(prompt=prompt, generator=generator, **options, **CALL_OPTIONS.get(name, {})).images

    images = generate(LONG_PROMPT)
    assert images.shape == (1, 32, 32, 3)
    assert np.isfinite(images).all() and 0 <= images.min() and images.max() <= 1
    assert np.array_equal(images, generate(LONG_PROMPT))  # seeded
    assert not np.array_equal(images, generate("a cat"))  # the prompt reaches the transformer


@pytest.mark.parametrize("name", sorted(IMAGE_TO_IMAGE))
def test_image_to_image_shares_the_weights(name, pipelines):
    from diffusers import AutoPipelineForImage2Image
    from PIL import Image

    pipeline = pipelines(name)
    img2img = AutoPipelineForImage2Image.from_pipe(pipeline)
    assert type(img2img).__name__ == IMAGE_TO_IMAGE[name]
    assert img2img.transformer is pipeline.transformer
    init = Image.fromarray(np.arange(32 * 32 * 3, dtype=np.uint8).reshape(32, 32, 3))
    images = img2img(
        prompt="a fox",
        image=init,
        strength=0.5,
        height=32,
        width=32,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        output_type="np",
    ).images
    assert images.shape == (1, 32, 32, 3) and np.isfinite(images).all()
