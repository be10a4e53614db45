"""Prompt lists (.txt, .csv, .tsv, .jsonl) become manifests with stable ids (and seeds when asked); bad input names its
lines."""

from __future__ import annotations

import dataclasses
import json
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.cli.main import main
from jobs.errors import ManifestError
from jobs.inputs.manifest import read_manifest
from jobs.inputs.prompt_import import ImportSummary, import_prompts
from tests.conftest import generation_defaults, read_output, write_config
from workers.io.rows import derive_seed, resolve_rows

BOM = "\ufeff"
UNICODE = "café ☕ 東京"


def write(tmp_path, name: str, text: str) -> str:
    """Bytes exactly as given: no newline translation, so CRLF and BOM tests mean what they say."""
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    return str(path)


def read(path: str) -> dict:
    return pq.read_table(path).to_pydict()


def fail(input_path: str, output_path: str, **options) -> str:
    with pytest.raises(ManifestError) as caught:
        import_prompts(input_path, output_path, **options)
    assert not os.path.exists(output_path)
    return str(caught.value)


def seeds(ids: list[str], seed: int = 0) -> list[int]:
    return [derive_seed(seed, row_id) for row_id in ids]


@pytest.mark.parametrize(
    ("ending", "prefix"),
    [("\n", ""), ("\r\n", ""), ("\r\n", BOM), ("\n", BOM)],
    ids=["lf", "crlf", "crlf-bom", "lf-bom"],
)
def test_txt_one_prompt_per_line_blank_lines_skipped(tmp_path, ending, prefix):
    lines = ["a red fox", "", "   ", f"{UNICODE}", 'say "hi",\tthen go', "last line without ending"]
    source = write(tmp_path, "prompts.txt", prefix + ending.join(lines))
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output)

    ids = ["000000", "000001", "000002", "000003"]
    assert summary == ImportSummary(rows=4, prompts=4, columns=["id", "prompt"], output=output)
    assert read(output) == {
        "id": ids,
        "prompt": ["a red fox", UNICODE, 'say "hi",\tthen go', "last line without ending"],
    }
    schema = pq.read_schema(output)
    assert [(f.name, f.type) for f in schema] == [("id", pa.string()), ("prompt", pa.string())]


def test_csv_quoted_fields_and_pass_through_columns(tmp_path):
    text = (
        BOM + "prompt,Style,EXTRA\r\n"
        '"a cat, sitting",oil,1\r\n'
        '"she said ""hello""",,2\r\n'
        '"tab\there",watercolor,3\r\n'
        "\r\n"
        '"two\r\nlines",ink,4\r\n'
        f"{UNICODE},photo,5\r\n"
    )
    source = write(tmp_path, "prompts.csv", text)
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output)

    ids = ["000000", "000001", "000002", "000003", "000004"]
    assert summary == ImportSummary(rows=5, prompts=5, columns=["id", "prompt", "style", "extra"], output=output)
    assert read(output) == {
        "id": ids,
        "prompt": ["a cat, sitting", 'she said "hello"', "tab\there", "two\r\nlines", UNICODE],
        "style": ["oil", "", "watercolor", "ink", "photo"],
        "extra": ["1", "2", "3", "4", "5"],  # csv values stay strings
    }


def test_tsv_partiprompts_headers_and_literal_quotes(tmp_path):
    text = (
        "Prompt\tCategory\tChallenge\tNote\n"
        "bond\tAbstract\tBasic\t\n"
        'A "stop" sign with the word "go"\tArtifacts\tWriting & Symbols\tNote: "quoted" text\n'
        '"a quoted prompt"\tPeople\tPerspective\tone, two\n'
        f"{UNICODE}\tFood & Beverage\tSimple Detail\t\n"
    )
    source = write(tmp_path, "parti.tsv", text)
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output)

    ids = ["000000", "000001", "000002", "000003"]
    assert summary.columns == ["id", "prompt", "category", "challenge", "note"]
    assert read(output) == {
        "id": ids,
        "prompt": ["bond", 'A "stop" sign with the word "go"', '"a quoted prompt"', UNICODE],
        "category": ["Abstract", "Artifacts", "People", "Food & Beverage"],
        "challenge": ["Basic", "Writing & Symbols", "Perspective", "Simple Detail"],
        "note": ["", 'Note: "quoted" text', "one, two", ""],
    }


def test_jsonl_keeps_strings_and_stores_other_json_values_as_json_text(tmp_path):
    lines = [
        '{"prompt": "tab\\there, \\"quoted\\"", "n": 3, "tags": ["a", "é"], "note": null, "ok": true}',
        "",
        "   ",
        f'{{"prompt": "{UNICODE}", "tags": "plain", "score": 0.5}}',
    ]
    source = write(tmp_path, "prompts.jsonl", BOM + "\n".join(lines) + "\n")
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output)

    ids = ["000000", "000001"]
    assert summary == ImportSummary(
        rows=2, prompts=2, columns=["id", "prompt", "n", "tags", "note", "ok", "score"], output=output
    )
    assert read(output) == {
        "id": ids,
        "prompt": ['tab\there, "quoted"', UNICODE],
        "n": ["3", None],
        "tags": ['["a", "é"]', "plain"],
        "note": [None, None],
        "ok": ["true", None],
        "score": [None, "0.5"],
    }
    assert all(pq.read_schema(output).field(name).type == pa.string() for name in ["n", "tags", "note", "ok", "score"])


def test_prompt_column_and_id_column(tmp_path):
    source = write(tmp_path, "prompts.csv", "uid,text,Cat\nfox-1,a fox,animal\n7,a boat,vehicle\n")
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output, prompt_column="text", id_column="uid")

    assert summary.columns == ["id", "prompt", "cat"]
    assert read(output) == {
        "id": ["fox-1", "7"],
        "prompt": ["a fox", "a boat"],
        "cat": ["animal", "vehicle"],
    }


def test_jsonl_id_column_with_numbers_becomes_string_ids(tmp_path):
    source = write(tmp_path, "prompts.jsonl", '{"key": 7, "Prompt": "a"}\n{"key": "b", "Prompt": "b"}\n')
    output = str(tmp_path / "out.parquet")

    import_prompts(source, output, id_column="key")

    assert read(output) == {"id": ["7", "b"], "prompt": ["a", "b"]}


def test_images_per_prompt_gives_k_rows_with_distinct_derived_seeds(tmp_path):
    source = write(tmp_path, "prompts.txt", "a fox\n\na boat\n")
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output, images_per_prompt=3, seed=42)

    ids = ["000000-0", "000000-1", "000000-2", "000001-0", "000001-1", "000001-2"]
    assert summary == ImportSummary(rows=6, prompts=2, columns=["id", "prompt", "seed"], output=output)
    table = read(output)
    assert table == {"id": ids, "prompt": ["a fox"] * 3 + ["a boat"] * 3, "seed": seeds(ids, 42)}
    assert len(set(table["seed"])) == 6


def test_without_a_seed_there_is_no_seed_column_and_the_job_seed_gives_each_image_its_own(tmp_path):
    source = write(tmp_path, "prompts.txt", "a fox\na boat\n")
    output = str(tmp_path / "out.parquet")

    summary = import_prompts(source, output, images_per_prompt=3)

    ids = ["000000-0", "000000-1", "000000-2", "000001-0", "000001-1", "000001-2"]
    assert summary.columns == ["id", "prompt"]
    table = pq.read_table(output)
    defaults = generation_defaults(steps=2, guidance_scale=7.5, width=32, height=32)
    for job_seed in (0, 5):
        rows = resolve_rows(table, table.column("id").combine_chunks(), defaults, job_seed)
        assert [row.seed for row in rows] == seeds(ids, job_seed)
        assert len({row.seed for row in rows}) == 6


def test_images_per_prompt_with_id_column(tmp_path):
    source = write(tmp_path, "prompts.csv", "id,prompt,style\nfox,a fox,oil\n")
    output = str(tmp_path / "out.parquet")

    import_prompts(source, output, id_column="id", images_per_prompt=2, seed=0)

    assert read(output) == {
        "id": ["fox-0", "fox-1"],
        "prompt": ["a fox", "a fox"],
        "seed": seeds(["fox-0", "fox-1"]),
        "style": ["oil", "oil"],
    }


def test_ids_and_seeds_are_stable_across_reruns_and_seeds_follow_the_base_seed(tmp_path):
    source = write(tmp_path, "prompts.tsv", "Prompt\tNote\n" + "".join(f"prompt {i}\tn{i}\n" for i in range(20)))
    first, second, other = (str(tmp_path / name) for name in ("a.parquet", "b.parquet", "c.parquet"))

    import_prompts(source, first, images_per_prompt=2, seed=0)
    import_prompts(source, second, images_per_prompt=2, seed=0)
    import_prompts(source, other, images_per_prompt=2, seed=1)

    a, b, c = (pq.read_table(path) for path in (first, second, other))
    assert a.column("id").equals(b.column("id"))
    assert a.column("seed").equals(b.column("seed"))
    assert a.column("id").equals(c.column("id"))
    assert all(x != y for x, y in zip(a.column("seed").to_pylist(), c.column("seed").to_pylist()))
    assert len(set(a.column("seed").to_pylist())) == 40


def test_read_manifest_accepts_the_output(tmp_path):
    source = write(tmp_path, "prompts.csv", "Prompt,negative_prompt,Category\na fox,blurry,animal\na boat,,vehicle\n")
    output = str(tmp_path / "nested" / "deeper" / "manifest.parquet")

    import_prompts(source, output, images_per_prompt=2)

    manifest = read_manifest(output)
    assert manifest.columns == ("id", "prompt", "negative_prompt", "category")
    assert manifest.rows == 4
    assert manifest.has_id_column
    assert sorted(os.listdir(tmp_path / "nested" / "deeper")) == ["manifest.parquet"]  # no temporary left behind


def test_per_row_setting_columns_are_stored_typed(tmp_path):
    source = write(tmp_path, "prompts.csv", "prompt,Steps,guidance_scale,width,height\na,30,7.5,512, 768\nb,,,,\n")
    output = str(tmp_path / "out.parquet")

    import_prompts(source, output)

    table = pq.read_table(output)
    assert table.select(["steps", "guidance_scale", "width", "height"]).to_pydict() == {
        "steps": [30, None],
        "guidance_scale": [7.5, None],
        "width": [512, None],
        "height": [768, None],
    }
    assert [table.schema.field(n).type for n in ["steps", "guidance_scale", "width", "height"]] == [
        pa.int64(),
        pa.float64(),
        pa.int64(),
        pa.int64(),
    ]
    read_manifest(output)


def test_existing_output_is_replaced_and_survives_a_failed_import(tmp_path):
    output = tmp_path / "out.parquet"
    import_prompts(write(tmp_path, "one.txt", "first\n"), str(output))
    import_prompts(write(tmp_path, "two.txt", "second\nthird\n"), str(output))
    assert read(str(output))["prompt"] == ["second", "third"]
    before = output.read_bytes()

    bad = write(tmp_path, "bad.csv", "prompt,width\na,500\n")
    with pytest.raises(ManifestError):
        import_prompts(bad, str(output))

    assert output.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["bad.csv", "one.txt", "out.parquet", "two.txt"]


def test_summary_is_frozen(tmp_path):
    summary = import_prompts(write(tmp_path, "p.txt", "a\n"), str(tmp_path / "out.parquet"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary.rows = 2


ERRORS = [
    # (file name, contents, options, message after "<input path>: ")
    ("prompts.xlsx", "prompt\na\n", {}, "unsupported format (use .txt, .csv, .tsv or .jsonl)"),
    ("prompts.csv", "text,cat\nx,y\n", {}, "no 'prompt' or 'Prompt' column (columns: text, cat)"),
    ("prompts.csv", "text,cat\nx,y\n", {"prompt_column": "caption"}, "no 'caption' column (columns: text, cat)"),
    ("prompts.csv", "prompt,cat\nx,y\n", {"id_column": "uid"}, "no 'uid' column (columns: prompt, cat)"),
    ("prompts.csv", "prompt,cat\nx,y\n", {"id_column": "prompt"}, "the prompt and id columns are both 'prompt'"),
    ("prompts.txt", "\n  \n\r\n", {}, "no prompts found"),
    ("prompts.txt", "", {}, "no prompts found"),
    ("prompts.csv", "prompt,cat\n\n", {}, "no prompts found"),
    ("prompts.jsonl", "\n\n", {}, "no prompts found"),
    (
        "prompts.txt",
        "a\n",
        {"id_column": "id"},
        "a .txt file has no columns; id_column needs .csv, .tsv or .jsonl",
    ),
    ("prompts.txt", "a\n", {"images_per_prompt": 0}, "images_per_prompt must be at least 1, got 0"),
    (
        "prompts.jsonl",
        '{"prompt": "a"}\n{"prompt": "b"}\n\n{oops\n',
        {},
        "line 4: not a JSON object (Expecting property name enclosed in double quotes at column 2)",
    ),
    ("prompts.jsonl", '{"prompt": "a"}\nnope\n', {}, "line 2: not a JSON object (Expecting value at column 1)"),
    ("prompts.jsonl", '{"prompt": "a"}\n["a", "b"]\n', {}, "line 2: not a JSON object (found an array)"),
    (
        "prompts.csv",
        "prompt,cat\nok,a\n ,b\nok,c\nok,d\nok,e\n\t,f\n",
        {},
        "column 'prompt': empty or whitespace-only prompt in 2 rows (lines: 3, 7)",
    ),
    (
        "prompts.csv",
        "prompt\n" + '""\n' * 7,
        {},
        "column 'prompt': empty or whitespace-only prompt in 7 rows (lines: 2, 3, 4, 5, 6)",
    ),
    (
        "prompts.csv",
        'prompt,n\n"two\nlines",1\n  ,2\n',
        {},
        "column 'prompt': empty or whitespace-only prompt in 1 row (line: 4)",
    ),
    (
        "prompts.tsv",
        "Prompt\tNote\na\t\n \t\n",
        {},
        "column 'Prompt': empty or whitespace-only prompt in 1 row (line: 3)",
    ),
    (
        "prompts.jsonl",
        '{"prompt": "a"}\n{"prompt": null}\n{"other": 1}\n{"prompt": 5}\n{"prompt": ""}\n',
        {},
        "column 'prompt': missing or not a string in 3 rows (lines: 2, 3, 4) (and 1 more problems)",
    ),
    (
        "prompts.csv",
        "id,prompt\na,1\nb,2\nc,3\na,4\nd,5\ne,6\nf,7\nd,8\n",
        {"id_column": "id"},
        "column 'id': duplicate ids in 4 rows (lines: 2, 5, 6, 9)",
    ),
    (
        "prompts.csv",
        "uid,prompt\nx,1\n,2\n  ,3\n",
        {"id_column": "uid"},
        "column 'uid': empty or missing id in 2 rows (lines: 3, 4)",
    ),
    (
        "prompts.jsonl",
        '{"uid": 1, "prompt": "a"}\n{"prompt": "b"}\n{"uid": "1", "prompt": "c"}\n',
        {"id_column": "uid"},
        "column 'uid': empty or missing id in 1 row (line: 2) (and 1 more problems)",
    ),
    ("prompts.tsv", "Prompt\tNote\tnote\na\tb\tc\n", {}, "columns 'Note' and 'note' both become 'note'"),
    ("prompts.csv", "prompt,Prompt\na,b\n", {}, "columns 'prompt' and 'Prompt' both become 'prompt'"),
    (
        "prompts.csv",
        "text,prompt\na,b\n",
        {"prompt_column": "text"},
        "columns 'text' and 'prompt' both become 'prompt'",
    ),
    ("prompts.csv", "prompt,seed\na,1\n", {}, "column 'seed' is reserved for genbatch; rename it"),
    ("prompts.csv", "prompt,Status\na,ok\n", {}, "column 'Status' is reserved for genbatch; rename it"),
    ("prompts.csv", "prompt,image\na,x\n", {}, "column 'image' is reserved for genbatch; rename it"),
    (
        "prompts.jsonl",
        '{"prompt": "a", "clip_score": 1}\n',
        {},
        "column 'clip_score' is reserved for genbatch; rename it",
    ),
    ("prompts.csv", "prompt,clip_cosine\na,1\n", {}, "column 'clip_cosine' is reserved for genbatch; rename it"),
    ("prompts.csv", "prompt,error\na,\n", {}, "column 'error' is reserved for genbatch; rename it"),
    (
        "prompts.csv",
        "prompt,ID\na,1\n",
        {},
        "column 'ID' is reserved for genbatch; rename it or make it the id column",
    ),
    (
        "prompts.csv",
        "uid,prompt,id\nx,a,1\n",
        {"id_column": "uid"},
        "column 'id' is reserved for genbatch; rename it",
    ),
    ("prompts.csv", "prompt,,cat\na,b,c\n", {}, "blank column name (columns: prompt, , cat)"),
    (
        "prompts.csv",
        "prompt,cat\na,b\nc\nd,e,f\n",
        {},
        "field count differs from the header's 2 in 2 rows (lines: 3, 4)",
    ),
    ("prompts.csv", "prompt,steps\na,30\nb,thirty\n", {}, "column 'steps': not an integer in 1 row (line: 3)"),
    ("prompts.csv", "prompt,width\na,512.0\n", {}, "column 'width': not an integer in 1 row (line: 2)"),
    (
        "prompts.jsonl",
        '{"prompt": "a", "guidance_scale": "high"}\n{"prompt": "b", "guidance_scale": true}\n',
        {},
        "column 'guidance_scale': not a number in 2 rows (lines: 1, 2)",
    ),
]


@pytest.mark.parametrize(("name", "contents", "options", "message"), ERRORS)
def test_bad_input_is_one_message_naming_file_column_and_lines(tmp_path, name, contents, options, message):
    source = write(tmp_path, name, contents)
    output = tmp_path / "out" / "manifest.parquet"

    assert fail(source, str(output), **options) == f"{source}: {message}"
    assert not output.parent.exists(), "found before writing: not even the folder is created"


def test_rows_genbatch_would_reject_leave_no_output(tmp_path):
    """Per-row settings are checked by genbatch's own manifest rules, which name rows by id."""
    source = write(tmp_path, "prompts.csv", "prompt,width\na,512\nb,500\n")
    output = tmp_path / "out" / "manifest.parquet"

    message = fail(source, str(output))

    assert message == f"{source}: column 'width': width not a positive multiple of 8 in 1 row (ids: '000001')"
    assert os.listdir(output.parent) == [], "the temporary file is removed"


def test_missing_input_file(tmp_path):
    source = str(tmp_path / "nope.csv")
    output = tmp_path / "out" / "manifest.parquet"

    assert fail(source, str(output)) == f"{source}: file not found"
    assert not output.parent.exists()


def test_input_that_is_not_utf8(tmp_path):
    source = tmp_path / "prompts.txt"
    source.write_bytes(b"a fox\n\xff\xfe a boat\n")

    assert fail(str(source), str(tmp_path / "out.parquet")) == f"{source}: not UTF-8 text (invalid start byte)"


SEED_WARNING = "manifest column 'seed' sets every row's seed; the config's seed: {} applies to none of them"


@pytest.mark.slow  # four whole jobs
def test_the_config_seed_applies_to_imported_prompts_unless_the_import_was_given_a_seed(tmp_path, capsys, ray_session):
    source = write(tmp_path, "prompts.txt", "a fox\na boat\na tree\na cloud\n")
    free, fixed = tmp_path / "free.parquet", tmp_path / "fixed.parquet"
    assert main(["manifest", source, "-o", str(free)]) == 0
    assert main(["manifest", source, "-o", str(fixed), "--seed", "7"]) == 0
    capsys.readouterr()

    def run(manifest, seed: int, log_format: str = "text") -> tuple[dict, list, str]:
        output = tmp_path / f"{manifest.stem}-{seed}"
        config = write_config(tmp_path / f"{output.name}.yaml", manifest, output, seed=seed, clip={"model": None})
        assert main(["run", str(config), "--quiet", "--log-format", log_format]) == 0
        table = read_output(output)
        images = dict(zip(table.column("id").to_pylist(), table.column("image_sha256").to_pylist()))
        return images, json.loads((output / "job.json").read_text())["warnings"], capsys.readouterr().err

    images_0, warnings_0, err_0 = run(free, 0)
    images_1, warnings_1, err_1 = run(free, 1)
    assert len(images_0) == 4 and images_0.keys() == images_1.keys()
    assert all(images_0[row] != images_1[row] for row in images_0)
    assert warnings_0 == warnings_1 == []
    assert "manifest column 'seed'" not in err_0 + err_1

    images_0, warnings_0, err_0 = run(fixed, 0)
    images_1, warnings_1, err_1 = run(fixed, 1, log_format="json")
    assert len(images_0) == 4 and images_0 == images_1
    assert warnings_0 == [SEED_WARNING.format(0)] and warnings_1 == [SEED_WARNING.format(1)]
    assert err_0.count("manifest column 'seed'") == 1
    assert f"WARNING jobs.run.driver: {SEED_WARNING.format(0)}" in err_0.splitlines()
    logged = [json.loads(line) for line in err_1.splitlines() if line.startswith("{")]
    assert [(r["level"], r["message"]) for r in logged if "seed" in r["message"]] == [
        ("WARNING", SEED_WARNING.format(1))
    ]
