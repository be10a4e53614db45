"""Where an image came from: the library versions that decide its pixels, and the device that made it."""

from __future__ import annotations

from importlib import metadata

# Packages whose versions change pixels or scores; a resume under other versions is refused (jobs.runfolder.resume).
PIXEL_PACKAGES = ("genbatch", "torch", "diffusers", "transformers")


def pixel_versions() -> dict[str, str | None]:
    return installed_versions(PIXEL_PACKAGES)


def installed_versions(names) -> dict[str, str | None]:
    """Each package's installed version; None for one that is not installed."""
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def device_description(device) -> str:
    """`cpu`, or the GPU's model with the CUDA (or ROCm) version torch was built with."""
    import torch

    if device.type != "cuda":
        return device.type
    name = torch.cuda.get_device_name(device)
    if torch.version.hip:
        return f"{name}, ROCm {torch.version.hip}"
    return f"{name}, CUDA {torch.version.cuda}"
