"""Step caching (performance.cache): diffusers' cache hooks on the family's denoiser, and how many steps they skip.

Each option is one of diffusers' hooks, configured as a user of diffusers would configure it, so an image equals
a plain diffusers call with the same hook and settings:
- first_block (FirstBlockCacheConfig): after the first block, skip the others and reuse their residual when the
  first block's output moved less than `threshold` since the last computed step. The test is one number over the
  whole micro-batch, so whether a step is skipped, and so each image, depends on the image's batch neighbours.
- taylorseer (TaylorSeerCacheConfig): compute the attention blocks on the first `warmup_steps` steps and every
  `interval`-th after, and predict them from a Taylor series in between: a fixed schedule, image by image.
- magcache (MagCacheConfig): skip whole steps while the model's published residual magnitude ratios (per family)
  accumulate less than `threshold` of error: a fixed schedule for a given number of steps, image by image.

Hook state lives in the hooks between the denoiser's calls. The pipeline resets it when a call ends; a call that
raised would leave it behind, so it is reset before every call too: no micro-batch, run or job sees another's.
The skipped steps are read from the hooks' own state after each step (callback_on_step_end).

This module imports torch and diffusers only in its functions: the driver reads PARAMETERS to check a config.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

logger = logging.getLogger(__name__)

# The parameters each option takes (performance.cache_*); the config refuses the others.
PARAMETERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "first_block": ("cache_threshold",),
    "taylorseer": ("cache_warmup_steps", "cache_interval"),
    "magcache": ("cache_threshold", "cache_warmup_steps"),
}


@dataclass(frozen=True)
class CacheSettings:
    """performance.cache and its parameters; None: the hook's own default."""

    name: str
    threshold: float | None = None
    warmup_steps: int | None = None
    interval: int | None = None

    @classmethod
    def of(cls, fast) -> CacheSettings:
        """From workers.tasks.FastPaths."""
        return cls(fast.cache, fast.cache_threshold, fast.cache_warmup_steps, fast.cache_interval)


def hook_config(settings: CacheSettings, steps: int, dtype, mag_ratios: str | None):
    """The diffusers cache config for `settings`, for a denoising run of `steps` steps (MagCache's ratios are
    per step) and a model of `dtype` (TaylorSeer's factors keep the model's precision)."""
    from diffusers import FirstBlockCacheConfig, MagCacheConfig, TaylorSeerCacheConfig
    from diffusers.hooks import mag_cache

    given = {"threshold": settings.threshold} if settings.threshold is not None else {}
    if settings.name == "first_block":
        return FirstBlockCacheConfig(**given)
    if settings.name == "taylorseer":
        schedule = {"disable_cache_before_step": settings.warmup_steps} if settings.warmup_steps is not None else {}
        if settings.interval is not None:
            schedule["cache_interval"] = settings.interval
        return TaylorSeerCacheConfig(taylor_factors_dtype=dtype, **schedule)
    if settings.name == "magcache":
        assert mag_ratios is not None, "the family has no MagCache ratios"
        if settings.warmup_steps is not None:  # diffusers counts it as a fraction of the steps, rounded
            given["retention_ratio"] = settings.warmup_steps / steps
        return MagCacheConfig(num_inference_steps=steps, mag_ratios=getattr(mag_cache, mag_ratios), **given)
    raise ValueError(f"unknown performance.cache {settings.name!r}")


class StepCache:
    """One denoiser's cache hook, set up for each micro-batch's number of steps, counting what it skips."""

    def __init__(self, denoiser, settings: CacheSettings, mag_ratios: str | None):
        self.denoiser = denoiser  # the module itself, never a compiled wrapper: the hooks live on its blocks
        self.settings = settings
        self.mag_ratios = mag_ratios
        self.steps: int | None = None  # what the hook is configured for now
        self.skipped = 0  # denoiser passes the last call skipped

    def prepare(self, steps: int) -> None:
        """Configure the hook for a run of `steps` steps (MagCache's depends on them), with fresh state."""
        if self.steps is None or (self.settings.name == "magcache" and steps != self.steps):
            if self.steps is not None:
                self.denoiser.disable_cache()
            self.denoiser.enable_cache(hook_config(self.settings, steps, self.denoiser.dtype, self.mag_ratios))
            self.steps = steps
        self.denoiser._reset_stateful_cache()

    @contextlib.contextmanager
    def run(self, steps: int) -> Iterator[SkipCounter]:
        """Around one pipeline call of `steps` steps: yields the counter whose `on_step_end` the call must get.

        Pipelines that name their denoiser calls (`cache_context("cond")`, FLUX.1's) set their own context for
        each call; for those that do not (FLUX.1's image-to-image), the whole call is one context."""
        self.prepare(steps)
        counter = SkipCounter(self.settings.name, _hooks(self.denoiser, self.settings.name))
        self.skipped = 0
        try:
            with self.denoiser.cache_context("cond"):
                yield counter
            self.skipped = counter.skipped
        finally:
            self.denoiser._reset_stateful_cache()


class SkipCounter:
    """Counts the denoiser passes a cache hook skipped, from the hook's state after each step. A pass is skipped
    when the hook reused or predicted instead of computing (first_block: all blocks after the first; taylorseer:
    the attention blocks; magcache: every block). Under true CFG each step has two passes."""

    def __init__(self, name: str, hooks: list):
        self.name = name
        self.hooks = hooks
        self.skipped = 0

    def on_step_end(self, pipeline, step: int, timestep, callback_kwargs: dict) -> dict:
        for hook in self.hooks:
            for state in hook.state_manager._state_cache.values():
                self.skipped += int(_skipped(self.name, state))
        return {}


def _skipped(name: str, state) -> bool:
    if name == "taylorseer":  # predicted, not updated, on this step
        return state.last_update_step != state.current_step
    return not state.should_compute


def _hooks(denoiser, name: str) -> list:
    """The hooks whose state says whether a step was skipped: the leading block's (first_block, magcache), or
    one cached (not zero-filled) module's (taylorseer: all of them follow the same schedule)."""
    from diffusers.hooks import first_block_cache, mag_cache, taylorseer_cache

    hook_name = {
        "first_block": first_block_cache._FBC_LEADER_BLOCK_HOOK,
        "magcache": mag_cache._MAG_CACHE_LEADER_BLOCK_HOOK,
        "taylorseer": taylorseer_cache._TAYLORSEER_CACHE_HOOK,
    }[name]
    for module in denoiser.modules():
        registry = getattr(module, "_diffusers_hook", None)
        hook = None if registry is None else registry.get_hook(hook_name)
        if hook is None:
            continue
        if name != "taylorseer" or not hook.state_manager._init_kwargs.get("is_inactive"):
            return [hook]
    raise ValueError(f"performance.cache {name!r}: diffusers put no hook on {type(denoiser).__name__}")
