"""docs/SETTINGS.md is the reference the declarations make, as committed."""

from __future__ import annotations

from pathlib import Path

from secagg.service.settings_reference import settings_reference

DOC = Path(__file__).resolve().parents[2] / "docs" / "SETTINGS.md"


def test_the_committed_reference_is_the_one_the_declarations_make() -> None:
    assert DOC.read_text() == settings_reference(), (
        "docs/SETTINGS.md is stale: python -m secagg.service.settings_reference docs/SETTINGS.md"
    )
