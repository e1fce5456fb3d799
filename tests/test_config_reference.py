"""docs/configuration.md is the schemas' reference, generated: it must match them."""

from __future__ import annotations

from pathlib import Path

from steer.stages.reference import reference

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


def test_the_reference_page_is_current():
    assert PAGE.read_text() == reference(), "run: python -m steer.stages.reference > docs/configuration.md"


def test_every_option_lists_only_its_own_keys():
    """The page shows lora's rank and no rank for vector; the local judge has no base_url."""
    text = reference()
    vector = text.split("### `intervention=vector`")[1].split("###")[0]
    lora = text.split("### `intervention=lora`")[1].split("###")[0]
    local = text.split("### `judge=local`")[1].split("###")[0]
    assert "`intervention.rank`" in lora and "rank" not in vector
    assert "`judge.startup_timeout`" in local and "base_url" not in local
