"""Models laid out in this session's HF_HUB_CACHE the way `hf download` leaves them (no network)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _snapshot(repo_id: str) -> Path:
    """The snapshot folder of `repo_id` at COMMIT, with `refs/main` naming it."""
    repo = Path(os.environ["HF_HUB_CACHE"]) / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def put_in_hub_cache(repo_id: str, folder: Path) -> None:
    """Lay `folder` out as model `repo_id`."""
    shutil.copytree(folder, _snapshot(repo_id), dirs_exist_ok=True)


def cache_file(repo_id: str, name: str) -> None:
    """One file of model `repo_id`."""
    snapshot = _snapshot(repo_id)
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot / name).write_text("{}")
