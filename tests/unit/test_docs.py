"""The docs' reference pages follow the code: every config key is described, and no committed page is stale."""

import importlib.util
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load_generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_reference = _load_generator()


def test_every_config_key_has_a_description():
    job_config = gen_reference.genbatch().JobConfig
    keys = [key for key, _ in gen_reference.config_fields(job_config)]
    assert "resources.workers.min" in keys and "model.loras[].path" in keys  # nested sections are walked
    undescribed = [key for key, field in gen_reference.config_fields(job_config) if not field.description]
    assert not undescribed, f"add Field(description=...) to: {', '.join(undescribed)}"


def test_every_output_column_has_a_description():
    columns = gen_reference.genbatch().columns
    written = [columns.ID, *columns.GENERATED, *columns.RECONSTRUCTION, *columns.SCORES, *columns.STEP_CACHE]
    assert not set(written) ^ set(columns.DESCRIPTIONS)


@pytest.mark.parametrize("name", sorted(gen_reference.PAGES))
def test_reference_page_is_current(name):
    path = gen_reference.REFERENCE / name
    expected = gen_reference.generated_pages()[path]
    assert path.is_file() and path.read_text() == expected, f"docs/reference/{name} is stale: run `make docs`"


def test_the_generated_cli_page_lists_every_command_and_option():
    page = (gen_reference.REFERENCE / "cli.md").read_text()
    parser = gen_reference.genbatch().build_parser()
    for command in ("run", "manifest", "report", "status", "rescore", "compare", "export"):
        assert f"## genbatch {command}" in page
    assert "`--retry-failed`" in page and "`--log-format {text,json}` | `text` |" in page
    assert parser.epilog and "130" in parser.epilog  # `genbatch --help` lists the exit codes too


def test_exit_codes_cover_every_code_the_cli_returns():
    codes = gen_reference.genbatch().EXIT_CODES
    assert {0, 1, 2, 129, 130, 143} == set(codes)


def _nav_pages(entries) -> list[str]:
    pages = []
    for entry in entries:
        value = next(iter(entry.values())) if isinstance(entry, dict) else entry
        pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def test_the_nav_lists_exactly_the_pages_in_docs():
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"])
    pages = sorted(str(path.relative_to(ROOT / "docs")) for path in (ROOT / "docs").rglob("*.md"))
    assert sorted(nav) == pages
