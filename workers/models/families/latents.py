"""How a family's VAE turns images into the latents its denoiser sees, and back (reconstruct mode).

Each VAE normalises its latents its own way: Stable Diffusion and FLUX.1 scale and shift them (config
`scaling_factor`, `shift_factor`), Sana's DC-AE only scales, Qwen-Image's video VAE takes a per-channel mean
and std, FLUX.2's VAE a batch norm's running statistics over 2x2-patchified latents. The functions take
images in [-1, 1] (N, 3, H, W) and import torch only when called: families are read by the driver too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class LatentCodec:
    """`encode(vae, x)`: the denoiser's latents of images x in [-1, 1] (the posterior's mode, deterministic);
    `decode(vae, latents)`: images in [-1, 1]."""

    name: str
    encode: Callable
    decode: Callable


def _scale_shift(vae) -> tuple[float, float]:
    return vae.config.scaling_factor, getattr(vae.config, "shift_factor", None) or 0.0


def _encode_scaled(vae, x):
    scale, shift = _scale_shift(vae)
    return (vae.encode(x).latent_dist.mode() - shift) * scale


def _decode_scaled(vae, latents):
    scale, shift = _scale_shift(vae)
    return vae.decode(latents / scale + shift).sample


def _encode_dc_ae(vae, x):
    # AutoencoderDC is deterministic: its output is the latent itself, no distribution.
    return vae.encode(x).latent * vae.config.scaling_factor


def _decode_dc_ae(vae, latents):
    return vae.decode(latents / vae.config.scaling_factor).sample


def _channel_statistics(vae, like):
    """The per-channel mean and the reciprocal std, as QwenImage's pipelines compute them (the same rounding)."""
    import torch

    shape = (1, vae.config.z_dim, 1, 1, 1)
    mean = torch.tensor(vae.config.latents_mean).view(shape).to(like.device, like.dtype)
    inverse_std = 1.0 / torch.tensor(vae.config.latents_std).view(shape).to(like.device, like.dtype)
    return mean, inverse_std


def _encode_per_channel(vae, x):
    # A video VAE: one frame, (N, C, 1, H, W) latents, as QwenImageImg2ImgPipeline encodes its image.
    latents = vae.encode(x[:, :, None]).latent_dist.mode()
    mean, inverse_std = _channel_statistics(vae, latents)
    return (latents - mean) * inverse_std


def _decode_per_channel(vae, latents):
    mean, inverse_std = _channel_statistics(vae, latents)
    return vae.decode(latents / inverse_std + mean).sample[:, :, 0]


def _batch_norm_statistics(vae, like):
    import torch

    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(like.device, like.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(like.device, like.dtype)
    return mean, std


def _encode_batch_norm(vae, x):
    # As Flux2KleinPipeline._encode_vae_image: patchify 2x2 (C -> 4C), then normalise with the VAE's batch norm.
    latents = vae.encode(x).latent_dist.mode()
    n, c, h, w = latents.shape
    latents = latents.view(n, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4).reshape(n, c * 4, h // 2, w // 2)
    mean, std = _batch_norm_statistics(vae, latents)
    return (latents - mean) / std


def _decode_batch_norm(vae, latents):
    mean, std = _batch_norm_statistics(vae, latents)
    latents = latents * std + mean
    n, c, h, w = latents.shape
    latents = latents.reshape(n, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(n, c // 4, h * 2, w * 2)
    return vae.decode(latents).sample


SCALE_SHIFT = LatentCodec("scale_shift", _encode_scaled, _decode_scaled)
DC_AE = LatentCodec("dc_ae", _encode_dc_ae, _decode_dc_ae)
PER_CHANNEL = LatentCodec("per_channel", _encode_per_channel, _decode_per_channel)
BATCH_NORM = LatentCodec("batch_norm", _encode_batch_norm, _decode_batch_norm)
