"""The tables of what each model family supports, in README and the families guide, are the registry's, row for row."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from workers.models.families import FAMILIES

REPO = Path(__file__).resolve().parents[2]
DOCUMENTS = [REPO / "README.md", REPO / "docs" / "guides" / "families-adapters-caching.md"]
HEADER = "| family | image-to-image | LoRA (`model.loras`, `model.adapters`) | step caches (`performance.cache`) |"


def documented_rows(document: Path) -> dict[str, list[str]]:
    lines = document.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(HEADER))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0]] = cells[1:]
    return rows


def expected_cells(family) -> list[str]:
    return [
        "yes" if family.image_to_image else "no",
        "yes" if family.lora else "no",
        ", ".join(family.step_caches) or "none",
        "yes" if family.regional_compile else "no",
    ]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_the_support_table_lists_every_family_as_the_registry_describes_it(document):
    rows = documented_rows(document)
    assert list(rows) == [family.title for family in FAMILIES]
    for family in FAMILIES:
        assert rows[family.title] == expected_cells(family), family.title


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_the_families_table_names_each_family_s_built_in(document):
    text = document.read_text(encoding="utf-8")
    for family in FAMILIES:
        for builtin in family.builtins:
            assert re.search(rf"\| `{re.escape(builtin)}` \|", text), builtin
