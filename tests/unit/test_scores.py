"""PickScore and aesthetic columns: computed in the actor, checked against plain transformers/torch calls."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from transformers import CLIPModel

from jobs.config.preflight import check_models
from jobs.config.schema import JobConfig, load_config
from jobs.errors import ConfigError
from jobs.inputs.manifest import read_manifest
from jobs.runfolder.jobfile import identity_key
from jobs.runfolder.resume import job_identity
from tests.conftest import small_config, worker_settings_for, write_config
from tests.reference import reference_aesthetic, reference_pickscore
from workers.errors import ScorerLoadError
from workers.io import columns as C
from workers.io.hf_features import hf_features
from workers.models import tiny
from workers.scoring.scorers import build_scorers, head_shapes, load_aesthetic_head
from workers.tasks import ScoreModels, ShardTask

SCORES = {"pickscore": {"model": "tiny-pickscore"}, "aesthetic": {"model": "tiny", "head": "tiny"}}
LONG_PROMPT = "a long prompt " * 12 + "THE END"  # 180 characters: one token each in the tiny vocabulary
PROMPTS = ["a red fox", "a blue bird", LONG_PROMPT, "", "a green tree"]


@pytest.fixture(scope="module")
def scored_shard(tmp_path_factory, model_cache):
    """One shard made in-process by the actor class with both scorers on (no Ray: it is the actor's own code)."""
    from workers.worker import GenerationWorker

    folder = tmp_path_factory.mktemp("scored")
    manifest = folder / "m.parquet"
    widths = [32, 32, 32, 32, 48]  # the 48-wide row is its own micro-batch, resized and cropped by the processor
    pq.write_table(pa.table({"prompt": PROMPTS, "width": widths}), manifest)
    settings = worker_settings_for(folder / "out", scores=SCORES, resources={"batch_size": 2})
    worker = GenerationWorker(settings, 0)
    worker.ready()
    *_, result = worker.run_shard(ShardTask(0, str(manifest), 0, len(PROMPTS), 0, has_id_column=False))
    return worker, pq.read_table(result.file)


def _pixels(table: pa.Table, row: int) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(table.column(C.IMAGE)[row]["bytes"].as_py())).convert("RGB"))


def test_pickscore_column_is_the_model_cards_formula_on_the_written_image(scored_shard):
    _, table = scored_shard
    assert table.schema.field(C.PICKSCORE).type == pa.float32()
    folder = tiny.tiny_pickscore_dir()
    assert float(CLIPModel.from_pretrained(folder).logit_scale.detach().exp()) == pytest.approx(100.0, rel=1e-4)
    scores = table.column(C.PICKSCORE).to_pylist()
    for row, prompt in enumerate(PROMPTS):
        if not prompt:
            assert scores[row] is None  # nothing to score the image against
            continue
        expected = reference_pickscore(folder, _pixels(table, row), prompt)
        # float32 of a batched vs a single forward: rounding of order 1e-6 relative on scores of order 10-100
        assert scores[row] == pytest.approx(expected, rel=1e-4, abs=1e-3), row
    assert len(set(scores) - {None}) == 4  # distinct images and prompts give distinct scores


def test_aesthetic_column_is_the_laion_mlp_on_the_normalised_image_embedding(scored_shard):
    _, table = scored_shard
    assert table.schema.field(C.AESTHETIC).type == pa.float32()
    scores = table.column(C.AESTHETIC).to_pylist()
    for row in range(len(PROMPTS)):  # a row without a prompt still has an aesthetic score
        expected = reference_aesthetic(tiny.tiny_clip_dir(), tiny.tiny_aesthetic_head(), _pixels(table, row))
        assert scores[row] == pytest.approx(expected, abs=1e-5), row  # float32 rounding of a 5-layer MLP


def test_score_columns_come_last_and_are_typed_for_datasets(scored_shard):
    _, table = scored_shard
    assert table.column_names[-2:] == [C.PICKSCORE, C.AESTHETIC]
    features = hf_features(table.schema)
    assert features[C.PICKSCORE] == features[C.AESTHETIC] == {"dtype": "float32", "_type": "Value"}


def test_a_scorer_on_the_clip_model_shares_the_loaded_one(scored_shard):
    worker, _ = scored_shard
    pickscore, aesthetic = worker.scorers
    assert aesthetic.model is worker.scorer.model  # scores.aesthetic.model == clip.model: no second copy
    assert pickscore.model is not worker.scorer.model


def test_each_clip_is_loaded_once_and_clip_model_not_again(model_cache):
    from workers.models.loading import load_clip

    device = torch.device("cpu")
    clip = ("tiny", *load_clip("tiny", device))
    loads = []

    def counting_load(ref, where):
        loads.append(ref)
        return load_clip(ref, where)

    both_on_clip = ScoreModels(pickscore="tiny", aesthetic="tiny", aesthetic_head="tiny")
    scorers = build_scorers(both_on_clip, device, clip, load=counting_load)
    assert loads == [] and all(scorer.model is clip[1] for scorer in scorers)
    both_on_pickscore = ScoreModels(pickscore="tiny-pickscore", aesthetic="tiny-pickscore", aesthetic_head="tiny")
    first, second = build_scorers(both_on_pickscore, device, clip, load=counting_load)
    assert loads == ["tiny-pickscore"] and first.model is second.model


def _head_file(path, input_dim: int, change=None):
    tensors = {name: torch.zeros(shape) for name, shape in head_shapes(input_dim).items()}
    if change:
        change(tensors)
    save_file(tensors, path)
    return str(path)


def test_a_head_for_another_clip_is_refused_naming_the_file_and_tensor(tmp_path, model_cache):
    laion = _head_file(tmp_path / "laion.safetensors", 768)
    config = JobConfig.model_validate(
        small_config("m.parquet", "out", scores={"aesthetic": {"model": "tiny", "head": laion}})
    )
    with pytest.raises(ConfigError) as caught:
        check_models(config)
    assert str(caught.value) == (
        f"scores.aesthetic.head: {laion}: not an aesthetic head for CLIP 'tiny': layers.0.weight has shape "
        "[1024, 768], expected [1024, 32] (the head's input must be the CLIP's projection_dim, 32)"
    )
    with pytest.raises(ScorerLoadError) as loading:  # the actor checks again, before it reads a tensor
        load_aesthetic_head(laion, 32, "tiny", torch.device("cpu"))
    assert str(loading.value) == str(caught.value).removeprefix("scores.aesthetic.head: ")


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda t: t.pop("layers.7.bias"), "no tensor layers.7.bias"),
        (lambda t: t.update({"layers.4.weight": torch.zeros(64, 129)}), "layers.4.weight has shape [64, 129]"),
        (lambda t: t.update({"layers.8.weight": torch.zeros(1)}), "unexpected tensor layers.8.weight"),
    ],
)
def test_a_head_with_other_tensors_is_refused(tmp_path, change, problem):
    head = _head_file(tmp_path / "head.safetensors", 32, change)
    with pytest.raises(ScorerLoadError) as caught:
        load_aesthetic_head(head, 32, "tiny", torch.device("cpu"))
    assert str(caught.value).startswith(f"{head}: not an aesthetic head for CLIP 'tiny': {problem}")


def test_a_file_that_is_not_safetensors_is_one_line(tmp_path):
    head = tmp_path / "head.safetensors"
    head.write_bytes(b"\x00" * 3)
    config = JobConfig.model_validate(
        small_config("m.parquet", "out", scores={"aesthetic": {"model": "tiny", "head": str(head)}})
    )
    with pytest.raises(ConfigError) as caught:
        check_models(config)
    assert str(caught.value).startswith(f"scores.aesthetic.head: {head}: not a readable safetensors file (")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["scores.pickscore.modle=tiny"], "unknown key 'scores.pickscore.modle'"),
        (["scores.hps={model: tiny}"], "unknown key 'scores.hps'"),
        (["scores.pickscore={}"], "missing key 'scores.pickscore.model'"),
        (["scores.aesthetic={model: tiny}"], "missing key 'scores.aesthetic.head'"),
        (["scores.pickscore.model=/no/such/pickscore"], "scores.pickscore.model: PickScore folder /no/such/pickscore"),
        (["scores.aesthetic={model: clip, head: tiny}"], "scores.aesthetic.model: no folder 'clip' and not a Hugging"),
        (
            ["scores.aesthetic={model: tiny, head: /m/sac+logos+ava1-l14-linearMSE.pth}"],
            "scores.aesthetic.head: /m/sac+logos+ava1-l14-linearMSE.pth is not a .safetensors file; heads are loaded "
            "from safetensors only (README: The output, Scores, says how to convert the published .pth)",
        ),
        (
            ["scores.aesthetic={model: tiny, head: /no/head.safetensors}"],
            "scores.aesthetic.head: file /no/head.safetensors does not exist",
        ),
    ],
)
def test_bad_scores_config_is_one_line_naming_the_key(tmp_path, overrides, message):
    path = write_config(tmp_path / "job.yaml", "m.parquet", "out")
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_scores_are_part_of_the_job_identity_and_absent_ones_change_nothing(tmp_path):
    manifest = tmp_path / "m.parquet"
    pq.write_table(pa.table({"prompt": ["a"]}), manifest)
    plain = JobConfig.model_validate(small_config(manifest, "out"))
    identity = job_identity(plain, read_manifest(str(manifest), "generate"))
    assert "scores" not in identity  # jobs without scores keep the key they had before scores existed
    scored = JobConfig.model_validate(small_config(manifest, "out", scores={"pickscore": {"model": "tiny"}}))
    with_scores = job_identity(scored, read_manifest(str(manifest), "generate"))
    assert with_scores == {**identity, "scores": {"pickscore": {"model": "tiny"}}}
    assert identity_key(with_scores) != identity_key(identity)


def test_a_hub_scorer_not_in_the_offline_cache_is_one_line_naming_its_key():
    config = JobConfig.model_validate(
        small_config("m.parquet", "out", scores={"pickscore": {"model": "genbatch-test/no-pickscore"}})
    )
    with pytest.raises(ConfigError) as caught:
        check_models(config)  # the session runs with HF_HUB_OFFLINE=1 and an empty hub cache
    assert str(caught.value).startswith(
        "scores.pickscore.model: model 'genbatch-test/no-pickscore' is not in the Hugging Face cache ("
    )
