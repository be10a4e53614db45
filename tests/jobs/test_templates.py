"""`genbatch manifest --template`: the Cartesian product of the variables' lists (or a sample of it), with ids that
depend on the values alone, streamed in row groups, and one-line errors (exit 2) that name what is wrong."""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats

from jobs.cli.main import main
from jobs.errors import ManifestError
from jobs.inputs import templates
from jobs.inputs.manifest import read_manifest
from jobs.inputs.templates import write_template_manifest
from tests.conftest import read_output, write_config

TEMPLATE = "a {style} photo of a {object}, {lighting}"
STYLES = ["oil", "watercolor"]
OBJECTS = ["cat", "dog", "café ☕"]
LIGHTING = ["soft light", "neon"]


def lists(tmp_path, styles=STYLES, objects=OBJECTS, lighting=LIGHTING, sub: str = "lists") -> list[str]:
    folder = tmp_path / sub
    folder.mkdir(exist_ok=True)
    flags = []
    for name, values in (("style", styles), ("object", objects), ("lighting", lighting)):
        (folder / f"{name}.txt").write_text("\n".join(values) + "\n", encoding="utf-8")
        flags.append(f"{name}={folder / f'{name}.txt'}")
    return flags


def expected_id(**pairs: str) -> str:
    """Recomputed from the documented format: sha256 of the sorted pairs' compact JSON, first 20 hex digits."""
    text = json.dumps([[name, pairs[name]] for name in sorted(pairs)], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]


def expected_seed(seed: int, row_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}:{row_id!r}".encode(), digest_size=8).digest(), "big") >> 1


def read(path) -> dict:
    return pq.read_table(path).to_pydict()


def fail(tmp_path, *args: str, capsys) -> str:
    output = tmp_path / "out.parquet"
    assert main(["manifest", *args, "-o", str(output)]) == 2
    assert not output.exists()
    assert [name for name in os.listdir(tmp_path) if name.startswith(".")] == []  # no temporary file left
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    return err.strip()


def test_the_product_in_order_with_one_column_per_variable_and_ids_from_the_values(tmp_path, capsys):
    output = tmp_path / "prompts.parquet"
    assert main(["manifest", "--template", TEMPLATE, *(f"--var={f}" for f in lists(tmp_path)), "-o", str(output)]) == 0
    assert capsys.readouterr().out == (
        f"genbatch: wrote 12 rows (12 combinations) to {output}; columns: id, prompt, style, object, lighting\n"
    )

    combos = list(itertools.product(STYLES, OBJECTS, LIGHTING))  # the template's order, the last fastest
    assert read(output) == {
        "id": [expected_id(style=s, object=o, lighting=li) for s, o, li in combos],
        "prompt": [f"a {s} photo of a {o}, {li}" for s, o, li in combos],
        "style": [s for s, _, _ in combos],
        "object": [o for _, o, _ in combos],
        "lighting": [li for _, _, li in combos],
    }
    assert [(f.name, f.type) for f in pq.read_schema(output)] == [
        (name, pa.string()) for name in ("id", "prompt", "style", "object", "lighting")
    ]
    manifest = read_manifest(str(output))  # the checks `genbatch run` makes
    assert manifest.rows == 12 and manifest.has_id_column


def test_ids_do_not_depend_on_list_order_flag_order_or_wording(tmp_path):
    first, second = tmp_path / "a.parquet", tmp_path / "b.parquet"
    write_template_manifest(TEMPLATE, lists(tmp_path), str(first))
    shuffled = lists(tmp_path, STYLES[::-1], [OBJECTS[2], OBJECTS[0], OBJECTS[1]], LIGHTING[::-1], sub="shuffled")
    reworded = "{lighting}: {object} painted in {style} ({style}), {{sic}}"
    write_template_manifest(reworded, shuffled[::-1], str(second))

    a, b = read(first), read(second)
    by_id_a = {i: (s, o, li) for i, s, o, li in zip(a["id"], a["style"], a["object"], a["lighting"])}
    by_id_b = {i: (s, o, li) for i, s, o, li in zip(b["id"], b["style"], b["object"], b["lighting"])}
    assert by_id_a == by_id_b and len(by_id_a) == 12
    assert a["id"] != b["id"]  # the rows come in another order, and each keeps its id
    assert b["prompt"][0] == "neon: café ☕ painted in watercolor (watercolor), {sic}"


def test_images_per_prompt_and_seed_combine_with_templates(tmp_path):
    output = tmp_path / "m.parquet"
    summary = write_template_manifest("{object} at {lighting}", lists(tmp_path)[1:], str(output), 2, seed=7)
    assert (summary.rows, summary.prompts, summary.columns) == (12, 6, ["id", "prompt", "object", "lighting", "seed"])
    table = read(output)
    bases = [expected_id(object=o, lighting=li) for o, li in itertools.product(OBJECTS, LIGHTING)]
    ids = [f"{base}-{k}" for base in bases for k in (0, 1)]
    assert table["id"] == ids
    assert table["prompt"][:4] == ["cat at soft light", "cat at soft light", "cat at neon", "cat at neon"]
    assert table["seed"] == [expected_seed(7, row_id) for row_id in ids]
    assert read_manifest(str(output)).seeded_rows == 12


def test_a_sample_is_distinct_reproducible_and_part_of_the_product(tmp_path):
    values = {name: [f"{name}{i}" for i in range(n)] for name, n in (("a", 7), ("b", 5), ("c", 3))}
    flags = []
    for name, items in values.items():
        (tmp_path / f"{name}.txt").write_text("\n".join(items))
        flags.append(f"{name}={tmp_path / f'{name}.txt'}")
    product = [(a, b, c) for a, b, c in itertools.product(*values.values())]
    position = {combo: i for i, combo in enumerate(product)}

    def sample(count: int, seed: int, name: str) -> dict:
        path = tmp_path / name
        write_template_manifest("{a} {b} {c}", flags, str(path), sample=count, seed=seed)
        return read(path)

    for count in (10, 80, 105):  # a few, more than half (drawn as what is left out), all
        first, again, other = sample(count, 1, "s1"), sample(count, 1, "s2"), sample(count, 2, "s3")
        combos = list(zip(first["a"], first["b"], first["c"]))
        assert len(combos) == len(set(combos)) == count
        assert set(combos) <= set(product)
        assert [position[c] for c in combos] == sorted(position[c] for c in combos)  # in product order
        assert first == again
        assert first["id"] == [expected_id(a=a, b=b, c=c) for a, b, c in combos]
        assert first["seed"] == [expected_seed(1, i) for i in first["id"]]
        assert (first["id"] != other["id"]) == (count < 105)
        assert first["prompt"] == [f"{a} {b} {c}" for a, b, c in combos]


@pytest.mark.parametrize("count", [2, 3])  # drawn directly, and as the complement of a draw
def test_every_subset_is_equally_likely(count):
    trials, population = 4000, 5
    subsets = {s: 0 for s in itertools.combinations(range(population), count)}
    for seed in range(trials):
        drawn = np.concatenate(list(templates._sampled_positions(population, count, seed)))
        subsets[tuple(int(i) for i in drawn)] += 1
    assert sum(subsets.values()) == trials and len(subsets) == math.comb(population, count)
    assert stats.chisquare(list(subsets.values())).pvalue > 0.001


def test_more_rows_than_the_limit_need_yes(tmp_path, capsys, monkeypatch):
    flags = lists(tmp_path, [f"s{i}" for i in range(1001)], [f"o{i}" for i in range(1000)], ["day"])
    args = ["--template", TEMPLATE, *(f"--var={f}" for f in flags)]
    assert fail(tmp_path, *args, capsys=capsys) == (
        "genbatch: error: --template: 1,001 style x 1,000 object x 1 lighting = 1,001,000 combinations makes "
        "1,001,000 rows, more than 1,000,000; rerun with --yes to write them, or draw fewer with --sample N"
    )
    assert fail(tmp_path, *args, "--sample", "600000", "--images-per-prompt", "2", capsys=capsys) == (
        "genbatch: error: --template: --sample 600,000 x 2 images per prompt makes 1,200,000 rows, more than "
        "1,000,000; rerun with --yes to write them, or draw fewer with --sample N"
    )
    monkeypatch.setattr(templates, "MAX_ROWS_WITHOUT_YES", 10)
    small = lists(tmp_path, STYLES, OBJECTS, LIGHTING, sub="small")
    output = tmp_path / "yes.parquet"
    assert main(["manifest", "--template", TEMPLATE, *(f"--var={f}" for f in small), "-o", str(output), "--yes"]) == 0
    assert pq.read_metadata(output).num_rows == 12


def test_rows_are_streamed_in_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(templates, "ROW_GROUP_ROWS", 1000)
    flags = lists(tmp_path, [f"s{i}" for i in range(50)], [f"o{i}" for i in range(40)], [f"l{i}" for i in range(5)])
    output = tmp_path / "m.parquet"
    write_template_manifest(TEMPLATE, flags, str(output), images_per_prompt=3)
    metadata = pq.read_metadata(output)
    assert metadata.num_rows == 30_000
    assert [metadata.row_group(g).num_rows for g in range(metadata.num_row_groups)] == [999] * 30 + [30]
    table = pq.read_table(output, columns=["id", "lighting"])
    assert table.column("id")[-1].as_py() == expected_id(style="s49", object="o39", lighting="l4") + "-2"
    assert len(set(table.column("id").to_pylist())) == 30_000


def test_bad_templates_and_lists_are_one_line_errors(tmp_path, capsys):
    flags = [f"--var={f}" for f in lists(tmp_path)]
    lists_dir = tmp_path / "lists"
    (lists_dir / "empty.txt").write_text("\n  \n")
    (lists_dir / "dupes.txt").write_text("red\nblue\n\nred \n")
    cases = {
        ("--template", TEMPLATE, *flags[:2]): "--template: {lighting} has no list; add --var lighting=FILE",
        ("--template", "a {style} photo of a {object}", *flags): (
            "--var lighting: no {lighting} in the template (its variables: style, object)"
        ),
        ("--template", TEMPLATE, *flags[:2], f"--var=lighting={lists_dir / 'missing.txt'}"): (
            f"{lists_dir / 'missing.txt'}: file not found (the list for {{lighting}})"
        ),
        ("--template", TEMPLATE, *flags[:2], f"--var=lighting={lists_dir / 'empty.txt'}"): (
            f"{lists_dir / 'empty.txt'}: no values (the list for {{lighting}} is empty)"
        ),
        ("--template", TEMPLATE, *flags[:2], f"--var=lighting={lists_dir / 'dupes.txt'}"): (
            f"{lists_dir / 'dupes.txt'}: line 4: duplicate value 'red' (first on line 1)"
        ),
        ("--template", "a {style photo", *flags[:1]): (
            "--template 'a {style photo': braces do not parse (expected '}' before end of string); "
            "write {{ or }} for a brace"
        ),
        ("--template", "a } {style}", *flags[:1]): (
            "--template 'a } {style}': braces do not parse (Single '}' encountered in format string); "
            "write {{ or }} for a brace"
        ),
        ("--template", "a {} photo", *flags[:1]): (
            "--template 'a {} photo': {} is not a variable; use {name} (letters, digits, _), "
            "or {{ and }} for literal braces"
        ),
        ("--template", "a {style!r:>9}", *flags[:1]): (
            "--template 'a {style!r:>9}': {style!r:>9} is not a variable; use {name} (letters, digits, _), "
            "or {{ and }} for literal braces"
        ),
        ("--template", "{seed} {style}", *flags[:1]): (
            "--template '{seed} {style}': variable {seed} would be the manifest column 'seed', "
            "which genbatch reads or writes itself; rename it"
        ),
        ("--template", "no variables"): "--template 'no variables': no {variables}; a template needs at least one",
        ("--template", "{style}", "--var", "style"): "--var 'style': expected NAME=FILE, e.g. --var object=objects.txt",
        ("--template", "{style}", *flags[:1], "--sample", "3"): "--sample 3 is more than the template's 2 combinations",
        ("prompts.txt", "--template", "{style}", *flags[:1]): (
            "manifest: --template makes the prompts; drop INPUT, --prompt-column and --id-column"
        ),
        ("prompts.txt", "--sample", "3"): "manifest: --var, --sample and --yes go with --template",
        (): "manifest: give a prompt list (INPUT) or --template with --var NAME=FILE",
    }
    for args, message in cases.items():
        assert fail(tmp_path, *args, capsys=capsys) == f"genbatch: error: {message}", args


def test_a_failed_template_never_replaces_an_existing_manifest(tmp_path):
    output = tmp_path / "m.parquet"
    write_template_manifest(TEMPLATE, lists(tmp_path), str(output))
    before = output.read_bytes()
    with pytest.raises(ManifestError, match="no values"):
        write_template_manifest(TEMPLATE, [*lists(tmp_path)[:2], f"lighting={os.devnull}"], str(output))
    assert output.read_bytes() == before


@pytest.mark.slow  # a whole job
def test_a_template_manifest_runs(tmp_path, ray_session):
    output = tmp_path / "prompts.parquet"
    write_template_manifest("{object} in {lighting}", lists(tmp_path)[1:], str(output))
    run = tmp_path / "run"
    config = write_config(tmp_path / "c.yaml", output, run, clip={"model": None})
    assert main(["run", str(config), "--quiet"]) == 0
    table = read_output(run)
    assert table.column("id").to_pylist() == read(output)["id"]
    assert table.column("object").to_pylist() == [o for o in OBJECTS for _ in LIGHTING]
    assert set(table.column("status").to_pylist()) == {"ok"}
