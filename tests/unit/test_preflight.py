"""Hub models are checked once, in the driver, before Ray or any actor starts: one actionable line, exit 2.

No test here touches the network: the one hub call is replaced by a fake that answers or raises."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import ClassVar

import httpx2
import huggingface_hub
import pytest
from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from jobs.cli.main import main
from jobs.config.preflight import HUB_TIMEOUT_S, check_models
from jobs.config.schema import load_config
from jobs.errors import ConfigError
from jobs.pool import cluster
from jobs.run.driver import run_job
from tests.conftest import write_config, write_manifest
from tests.helpers.hub_cache import cache_file


@pytest.fixture
def no_ray(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("Ray was started before the models were checked")

    monkeypatch.setattr(cluster, "connect", refuse)


@pytest.fixture
def online(monkeypatch):
    """The hub as the driver would ask it, with each call recorded and answered by `online.answer`."""

    class Hub:
        answer: Exception | None = None
        calls: ClassVar[list] = []

    def get_hf_file_metadata(url, **options):
        Hub.calls.append((url, options))
        if Hub.answer is not None:
            raise Hub.answer

    def hf_hub_download(repo_id, filename, **options):
        # What the driver fetches to know a pipeline's family (jobs.config.model_family): nothing here, as offline.
        raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id}/{filename} is not in the test hub")

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "get_hf_file_metadata", get_hf_file_metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    Hub.calls = []
    return Hub


def job_config(tmp_path: Path, **sections):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    return load_config(write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", **sections))


def http_error(kind: type, status: int) -> HfHubHTTPError:
    response = httpx2.Response(status, request=httpx2.Request("HEAD", "https://huggingface.co/x"))
    return kind(f"{status} Client Error", response=response)


def test_offline_a_model_missing_from_the_cache_fails_before_ray_starts(tmp_path, no_ray):
    config = job_config(tmp_path, model={"id": "genbatch-test/absent"})
    with pytest.raises(ConfigError) as caught:
        run_job(config, progress="off")
    assert str(caught.value) == (
        f"model.id: model 'genbatch-test/absent' is not in the Hugging Face cache ({os.environ['HF_HUB_CACHE']}) "
        "and HF_HUB_OFFLINE=1 forbids downloading it; fetch it first with `hf download genbatch-test/absent` "
        "on every node (same HF_HOME), or unset HF_HUB_OFFLINE"
    )
    assert not (tmp_path / "out").exists()


def test_offline_the_clip_model_is_checked_too_and_cached_models_pass(tmp_path, no_ray):
    cache_file("genbatch-test/preflight-sd", "model_index.json")
    config = job_config(tmp_path, model={"id": "genbatch-test/preflight-sd"}, clip={"model": "genbatch-test/no-clip"})
    with pytest.raises(ConfigError, match=r"^clip\.model: model 'genbatch-test/no-clip' is not in the Hugging Face"):
        check_models(config)
    cache_file("genbatch-test/no-clip", "config.json")
    check_models(config)


def test_the_cli_says_it_in_one_line_and_exits_2(tmp_path, capsys, no_ray):
    manifest = write_manifest(tmp_path / "p.parquet", {"prompt": ["a lighthouse"]})
    config = write_config(tmp_path / "job.yaml", manifest, tmp_path / "out", clip={"model": "genbatch-test/absent"})
    assert main(["run", str(config)]) == 2
    # Ray forwards the actor logs of earlier tests in this process to stderr whenever they arrive: not the CLI's.
    lines = capsys.readouterr().err.splitlines(keepends=True)
    err = "".join(line for line in lines if not re.match(r"(\x1b\[\d+m)?\(\w+ pid=\d+\)", line))
    assert err.startswith("genbatch: error: clip.model: model 'genbatch-test/absent' is not in the Hugging Face cache")
    assert err.count("\n") == 1 and "\x1b" not in err


def test_online_one_request_per_hub_model_without_retries(tmp_path, online):
    config = job_config(tmp_path, model={"id": "org/pipe", "revision": "v2"}, clip={"model": "org/clip"}, seed=3)
    check_models(config)
    assert online.calls == [
        (huggingface_hub.hf_hub_url("org/pipe", "model_index.json", revision="v2"), {"timeout": HUB_TIMEOUT_S}),
        (huggingface_hub.hf_hub_url("org/clip", "config.json"), {"timeout": HUB_TIMEOUT_S}),
    ]
    online.calls.clear()
    check_models(job_config(tmp_path))  # built-in models ask nothing
    assert online.calls == []


UNREACHABLE = (
    "could not reach the Hugging Face hub ({endpoint}) for model 'org/typo' at revision 'v9' ({error}): check the "
    "network (or HF_ENDPOINT); to run without the hub, fetch the model once with `hf download org/typo --revision v9` "
    "on every node and set HF_HUB_OFFLINE=1, or point model.id at a local folder"
)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (
            http_error(RepositoryNotFoundError, 404),
            "model 'org/typo' at revision 'v9' was not found on the Hugging Face hub: check the id "
            "(private models need `hf auth login` or HF_TOKEN)",
        ),
        (
            http_error(GatedRepoError, 403),
            "model 'org/typo' is gated: accept its terms on huggingface.co, then `hf auth login` (or set HF_TOKEN)",
        ),
        (
            http_error(RevisionNotFoundError, 404),
            "model 'org/typo' has no revision 'v9' on the Hugging Face hub: check the revision",
        ),
        (
            http_error(RemoteEntryNotFoundError, 404),
            "model 'org/typo' at revision 'v9' has no model_index.json on the Hugging Face hub: "
            "it is not a diffusers pipeline; check the id",
        ),
        (
            http_error(HfHubHTTPError, 503),
            "the Hugging Face hub answered HTTP 503 for model 'org/typo' at revision 'v9'; try again later",
        ),
        (
            http_error(HfHubHTTPError, 403),
            "the Hugging Face hub answered HTTP 403 for model 'org/typo' at revision 'v9'; "
            "check HF_TOKEN (or `hf auth login`)",
        ),
        (
            httpx2.ConnectError("\x1b[31m[Errno -3] Temporary failure\nin name resolution\x1b[0m"),
            UNREACHABLE.format(
                endpoint=constants.ENDPOINT, error="ConnectError: [Errno -3] Temporary failure in name resolution"
            ),
        ),
        (
            httpx2.ReadTimeout("timed out"),
            UNREACHABLE.format(endpoint=constants.ENDPOINT, error="ReadTimeout: timed out"),
        ),
    ],
    ids=["not-found", "gated", "revision", "not-a-pipeline", "server-error", "forbidden", "offline", "timeout"],
)
def test_online_hub_errors_become_one_actionable_line_before_ray_starts(tmp_path, online, no_ray, answer, message):
    online.answer = answer
    config = job_config(tmp_path, model={"id": "org/typo", "revision": "v9"})
    with pytest.raises(ConfigError) as caught:
        run_job(config, progress="off")
    assert str(caught.value) == f"model.id: {message}"
    assert len(online.calls) == 1
    assert not (tmp_path / "out").exists()


def test_online_a_clip_id_that_is_no_transformers_model_is_named(tmp_path, online):
    online.answer = http_error(RemoteEntryNotFoundError, 404)
    with pytest.raises(ConfigError) as caught:
        check_models(job_config(tmp_path, clip={"model": "org/sd"}))
    assert str(caught.value) == (
        "clip.model: model 'org/sd' has no config.json on the Hugging Face hub: it is not a transformers model; "
        "check the id"
    )


def test_online_an_unreachable_hub_is_fine_for_a_cached_model(tmp_path, online):
    cache_file("genbatch-test/preflight-cached", "model_index.json")
    online.answer = httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")
    check_models(job_config(tmp_path, model={"id": "genbatch-test/preflight-cached"}))
    assert len(online.calls) == 1
