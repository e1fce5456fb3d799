"""The one table builder: a report builds one pandas DataFrame and ``write_table`` writes it as CSV,
Markdown and LaTeX, so the three formats cannot drift.

The frame's columns are keys (``("pref", "Psy")``, ``"model"``); a MultiIndex groups them (the groups
become spanning headers in LaTeX and a prefix of the header in Markdown; label columns sit under the
empty group ``""``). Its cells are plain values (labels, numbers; None = missing) or ``Cell`` objects
(a number with its bootstrap interval and how many runs it averages). From that frame:

- CSV (``DataFrame.to_csv``): the numbers: a column's key with its levels joined by ``_`` (``pref_Psy``),
  a ``Cell`` column spread over ``key``, ``key_lo``, ``key_hi`` (when any cell has an interval),
  ``key_n`` (when its cells count runs) and ``key_mark`` (when any cell is marked);
- Markdown (``DataFrame.to_markdown``) and LaTeX (``Styler.to_latex``: booktabs rules, spanning group
  headers, caption and label) of one display frame: every cell as text (``Cell.text``), keys shown
  under their display names.
"""

from __future__ import annotations

import math
import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from steer.analysis.bootstrap import Interval, fmt_interval
from steer.io.atomic import atomic_write_text

MISSING = "—"
# LaTeX's special characters, and the non-ASCII symbols the reports print (pdflatex has no glyph for δ).
LATEX = {
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
    "—": "---",
    "–": "--",
    "δ": r"$\delta$",
    "±": r"$\pm$",
    "²": r"$^{2}$",
    "·": r"$\cdot$",
    "×": r"$\times$",
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "→": r"$\to$",
}
LATEX_PATTERN = re.compile("|".join(re.escape(c) for c in LATEX))


@dataclass(frozen=True)
class Cell:
    """A number in a table: ``value`` (None: missing, never 0), its bootstrap ``interval`` over examples,
    and ``n``, the number of runs it averages (None where the column does not count runs)."""

    value: float | None
    n: int | None = None
    interval: Interval | None = None
    digits: int = 3
    # A flag after the number (e.g. "†": a fit with parameters on a bound); CSV column ``key_mark``.
    mark: str = ""

    def text(self) -> str:
        """``0.850† [0.800, 0.900] (n=3)``: the mark, the interval where there is one, the count where
        it averages runs."""
        if self.value is None:
            return MISSING + self.mark
        text = fmt_interval(self.value, self.interval, self.digits)
        if self.mark:
            number, _, rest = text.partition(" ")
            text = f"{number}{self.mark} {rest}".rstrip()
        return f"{text} (n={self.n})" if self.n is not None and self.n > 1 else text


def latex_escape(text: str) -> str:
    """``text`` as LaTeX source that prints it: ``& % $ # _ { } ~ ^ \\`` escaped, the reports' symbols
    (δ, ², —, ±, ...) as LaTeX commands. One escaper for cells, headers and caption; pandas' own
    (``Styler.format(escape="latex")``) leaves the symbols to fail in pdflatex and is private for captions."""
    return LATEX_PATTERN.sub(lambda match: LATEX[match.group()], text)


def display(value, names: Mapping[str, str] | None = None) -> str:
    """A cell or header as text: a ``Cell`` with its interval and count, a label under its display name."""
    if isinstance(value, Cell):
        return value.text()
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    if isinstance(value, float):
        return f"{value:g}"
    return (names or {}).get(str(value), str(value))


def is_numeric(column: pd.Series) -> bool:
    """Whether a column holds numbers (right-aligned) rather than labels (left-aligned; integers such
    as a layer are labels, a missing label is NaN)."""
    return any(isinstance(v, Cell) or (isinstance(v, float) and not math.isnan(v)) for v in column)


def csv_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """The numbers of ``frame``: flat column names, each ``Cell`` column as value, lo, hi and n columns."""
    out = {}
    for key in frame.columns:
        name = flat_name(key)
        values = frame[key].tolist()
        cells = [v for v in values if isinstance(v, Cell)]
        if not cells:
            out[name] = values
            continue
        as_cell = [v if isinstance(v, Cell) else Cell(v) for v in values]
        out[name] = [c.value for c in as_cell]
        if any(c.interval is not None for c in cells):
            out[f"{name}_lo"] = [None if c.interval is None else c.interval.lo for c in as_cell]
            out[f"{name}_hi"] = [None if c.interval is None else c.interval.hi for c in as_cell]
        if any(c.n is not None for c in cells):
            out[f"{name}_n"] = [c.n for c in as_cell]
        if any(c.mark for c in cells):
            out[f"{name}_mark"] = [c.mark for c in as_cell]
    return pd.DataFrame(out)


def flat_name(key: Hashable) -> str:
    """A column key as one CSV name: ``("pref", "Psy")`` → ``pref_Psy``; the empty group is dropped."""
    parts = key if isinstance(key, tuple) else (key,)
    return "_".join(str(p) for p in parts if p != "")


def display_frame(
    frame: pd.DataFrame, names: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """Every cell and header of ``frame`` as the text the Markdown and LaTeX print: cells and column
    names under ``names``, column groups (the upper levels of a MultiIndex) under ``groups``."""
    shown = frame.apply(lambda column: column.map(lambda v: display(v, names)))
    if isinstance(frame.columns, pd.MultiIndex):
        shown.columns = pd.MultiIndex.from_tuples(
            [(*(display(g, groups) for g in key[:-1]), display(key[-1], names)) for key in frame.columns]
        )
    else:
        shown.columns = [display(key, names) for key in frame.columns]
    return shown


def markdown_table(
    frame: pd.DataFrame, names: Mapping[str, str] | None = None, groups: Mapping[str, str] | None = None
) -> str:
    """``frame`` as a Markdown table (``DataFrame.to_markdown``): labels left, numbers right; group and
    column names joined into one header."""
    shown = display_frame(frame, names, groups).map(lambda text: text.replace("|", "\\|"))
    if isinstance(shown.columns, pd.MultiIndex):
        shown.columns = [" ".join(part for part in key if part) for key in shown.columns]
    align = ["right" if is_numeric(frame[key]) else "left" for key in frame.columns]
    return shown.to_markdown(index=False, disable_numparse=True, colalign=align)


def latex_table(
    frame: pd.DataFrame,
    caption: str,
    short: str,
    label: str,
    names: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
) -> str:
    """``frame`` as a LaTeX table (``Styler.to_latex``): booktabs rules, a spanning header per column
    group, every cell, header and the caption escaped (``latex_escape``)."""
    styler = display_frame(frame, names, groups).style.hide(axis="index")
    styler = styler.format(latex_escape).format_index(latex_escape, axis="columns")
    spec = "".join("r" if is_numeric(frame[key]) else "l" for key in frame.columns)
    return styler.to_latex(
        column_format=spec,
        hrules=True,
        multicol_align="c",
        position_float="centering",
        caption=(latex_escape(caption), latex_escape(short)),
        label=label,
    )


def write_table(
    out: Path,
    name: str,
    frame: pd.DataFrame,
    *,
    title: str,
    caption: str,
    names: Mapping[str, str] | None = None,
    groups: Mapping[str, str] | None = None,
    detail: Sequence[Hashable] = (),
    appendix: Sequence[str] = (),
) -> list[Path]:
    """Write ``out/name.md``, ``.csv`` and ``.tex`` from ``frame`` and return their paths (Markdown first).

    ``title`` heads the Markdown and is the LaTeX short caption; ``caption`` explains the table in both;
    ``names`` maps labels and column names to the names shown, ``groups`` the column groups; ``detail``
    columns (e.g. a run's path) go to the CSV only; ``appendix`` lines follow the Markdown table (runs
    used, figures)."""
    shown = frame.drop(columns=list(detail))
    markdown = [f"# {title}", "", caption, "", markdown_table(shown, names, groups), *appendix]
    texts = {
        out / f"{name}.md": "\n".join(markdown) + "\n",
        out / f"{name}.csv": csv_frame(frame).to_csv(index=False),
        out / f"{name}.tex": latex_table(shown, f"{title}. {caption}", title, f"tab:{name}", names, groups),
    }
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)
