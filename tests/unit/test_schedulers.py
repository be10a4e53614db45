"""Every scheduler name: it runs, and a row's seed alone decides its image (same seed, same pixels)."""

from __future__ import annotations

import pytest
import torch

from workers.io.rows import RowSpec
from workers.models.loading import load_pipeline
from workers.models.schedulers import SCHEDULERS, build_scheduler
from workers.pipeline.generation import generate, to_uint8

EXPECTED_CLASSES = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "dpmpp_sde": "DPMSolverSDEScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler_trailing": "EulerDiscreteScheduler",
}


def row(seed: int, prompt: str = "a quiet lake at dawn") -> RowSpec:
    return RowSpec(
        id=seed, prompt=prompt, negative_prompt="", seed=seed, steps=4, guidance_scale=7.5, width=32, height=32
    )


# Flow-matching models' (workers.models.families): tests/jobs/test_families.py runs them on the DiT families.
FLOW_MATCH_CLASSES = {
    "flow_match_euler": "FlowMatchEulerDiscreteScheduler",
    "flow_match_euler_karras": "FlowMatchEulerDiscreteScheduler",
    "flow_match_euler_exponential": "FlowMatchEulerDiscreteScheduler",
    "flow_match_euler_beta": "FlowMatchEulerDiscreteScheduler",
    "flow_match_heun": "FlowMatchHeunDiscreteScheduler",
    "flow_dpmpp_2m": "DPMSolverMultistepScheduler",
}


def test_every_documented_name_is_offered():
    assert {name: entry[0] for name, entry in SCHEDULERS.items()} == EXPECTED_CLASSES | FLOW_MATCH_CLASSES


@pytest.mark.parametrize("name", sorted(EXPECTED_CLASSES))
def test_scheduler_runs_and_a_fixed_seed_reproduces_its_image(name, tiny_dirs):
    pipeline = load_pipeline("tiny", None, torch.device("cpu"), torch.float32)
    pipeline.scheduler = build_scheduler(name, pipeline.scheduler.config)  # as the actor does
    assert type(pipeline.scheduler).__name__ == EXPECTED_CLASSES[name]
    torch.manual_seed(123)  # the global RNG must not matter: move it between calls
    first = to_uint8(generate(pipeline, [row(5)]))
    torch.manual_seed(456)
    again = to_uint8(generate(pipeline, [row(5)]))
    batched = to_uint8(generate(pipeline, [row(6), row(5)]))
    other = to_uint8(generate(pipeline, [row(7)]))
    assert first.shape == (1, 32, 32, 3)
    assert torch.equal(first, again)
    assert (batched[1].int() - first[0].int()).abs().max() <= 1  # batch-invariant up to float rounding
    assert not torch.equal(first, other)
