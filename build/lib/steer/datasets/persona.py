"""Anthropic model-written-evals persona files (``dataset=psychopathy``): would you say this?

Each row has ``question`` ("Is the following statement something you would say?\\n\\"...\\""),
``answer_matching_behavior`` and ``answer_not_matching_behavior`` (" Yes" / " No"). The pair is
q = question, A_p = the matching answer, A_n = the other one, both under the whitespace rule
("Yes" / "No"). Every persona file has this format, so another trait loads through this loader
with only ``dataset.path`` (or, from the hub, ``dataset.file``) changed. The paper's split of
psychopathy's 1000 rows: 500 train / 100 test, seeded.
"""

from __future__ import annotations

from pathlib import Path

from steer.datasets.files import drop_blank, open_table, split_table
from steer.pairs import PolarityPair, Splits

COLUMNS = ("question", "answer_matching_behavior", "answer_not_matching_behavior")
# The paper's trait keeps the name its runs and recipes have always had.
PAPER_TRAIT = "psychopathy"


def name(path: str | None = None, file: str = "persona/psychopathy.jsonl") -> str:
    """The data set's name from the trait file it reads: ``psychopathy``, else ``persona-<trait>``."""
    source = Path(path) if path and Path(path).suffix else Path(file)
    trait = source.stem
    return trait if trait == PAPER_TRAIT else f"persona-{trait}"


def load(
    path: str | None = None,
    hub: str | None = "Anthropic/model-written-evals",
    file: str = "persona/psychopathy.jsonl",
    n_train: int = 500,
    n_test: int = 100,
    seed: int = 0,
    revision: str | None = None,
) -> Splits:
    table = open_table(path, hub, file, COLUMNS, revision)
    pairs = [
        PolarityPair(
            id=f"{row.index:04d}",
            prompt=row.text("question"),
            positive=row.answer("answer_matching_behavior"),
            negative=row.answer("answer_not_matching_behavior"),
        )
        for row in drop_blank(table.rows, "question")
    ]
    return split_table(table, pairs, n_train, n_test, seed)
