"""Scheduler names users write in configs, mapped to diffusers classes and their settings.

Class names are strings so the driver can validate names without importing diffusers.
"""

from __future__ import annotations

# For UNet models trained to predict noise (Stable Diffusion 1/2, SDXL).
UNET_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "heun": ("HeunDiscreteScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    # SDE noise comes from a Brownian tree seeded per image (see `seed_noise_sampler`); needs torchsde.
    "dpmpp_sde": ("DPMSolverSDEScheduler", {}),
    "unipc": ("UniPCMultistepScheduler", {}),
    # Timesteps counted from the end of the schedule: what few-step distilled models and LoRAs (SDXL-Lightning,
    # Hyper-SD) are trained for; the models' own configs space them from the start ("leading").
    "euler_trailing": ("EulerDiscreteScheduler", {"timestep_spacing": "trailing"}),
}

# For flow-matching models (FLUX, SD3, Qwen-Image, ...): Euler on the model's own sigma schedule, or with
# its sigmas respaced (Karras, exponential, beta); Heun only where the pipeline passes no sigmas of its own.
FLOW_MATCH_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "flow_match_euler": ("FlowMatchEulerDiscreteScheduler", {}),
    "flow_match_euler_karras": ("FlowMatchEulerDiscreteScheduler", {"use_karras_sigmas": True}),
    "flow_match_euler_exponential": ("FlowMatchEulerDiscreteScheduler", {"use_exponential_sigmas": True}),
    "flow_match_euler_beta": ("FlowMatchEulerDiscreteScheduler", {"use_beta_sigmas": True}),
    "flow_match_heun": ("FlowMatchHeunDiscreteScheduler", {}),
}

# DPM-Solver++ on flow sigmas, for flow models whose pipeline passes no sigmas (Sana's own kind of scheduler).
FLOW_SOLVER_SCHEDULERS: dict[str, tuple[str, dict]] = {
    "flow_dpmpp_2m": (
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 2,
            "prediction_type": "flow_prediction",
            "use_flow_sigmas": True,
        },
    ),
}

# Every name a config may give; which apply to a model is its family's (workers.models.families).
SCHEDULERS: dict[str, tuple[str, dict]] = {**UNET_SCHEDULERS, **FLOW_MATCH_SCHEDULERS, **FLOW_SOLVER_SCHEDULERS}


def build_scheduler(name: str, base_config):
    """A scheduler of the named kind, built from the model's own scheduler config."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    if class_name.startswith("FlowMatch") and "flow_shift" in base_config and "shift" not in base_config:
        # A DPM-Solver flow config (Sana's) names its timestep shift `flow_shift`; the model was trained with it.
        overrides = {"shift": base_config["flow_shift"], **overrides}
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def seed_noise_sampler(scheduler, seeds: list[int]) -> None:
    """Give SDE schedulers one noise seed per image of the batch.

    DPMSolverSDEScheduler draws its Brownian-tree noise from `noise_sampler_seed`, not from the
    pipeline's generators; left unset it takes a seed from torch's global RNG, and an image would
    change from run to run. With one seed per image, each image depends only on its own row's seed.
    """
    if hasattr(scheduler, "noise_sampler_seed"):
        scheduler.noise_sampler_seed = list(seeds)
        scheduler.noise_sampler = None
