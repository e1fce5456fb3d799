"""The table model every report shares: a cell (a mean over runs, with its bootstrap interval) and
how a cell is written."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from steer.analysis.bootstrap import Interval, fmt_interval

MISSING = "—"


@dataclass(frozen=True)
class Cell:
    """A table cell: the mean over ``n`` runs (None when no run has a value)."""

    value: float | None
    n: int
    interval: Interval | None = None  # bootstrap interval over examples (--bootstrap N)


def fmt_cell(cell: Cell, count: bool) -> str:
    if cell.value is None:
        return MISSING
    text = fmt_interval(cell.value, cell.interval)
    return f"{text} (n={cell.n})" if count and cell.n > 1 else text


def markdown_head(head: Sequence[str], n_labels: int) -> list[str]:
    """A Markdown table's header row and rule: ``n_labels`` left-aligned label columns, then numbers."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * n_labels + "---:|" * (len(head) - n_labels)]


def latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)
