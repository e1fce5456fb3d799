"""The paper's R² tables: Table 2 (the fit on the train split), Table 5 (on the test split) and
Table 6 (the train fit scored on the test split; may be negative).

Rows are model (and layer) × intervention form × objective; columns are data set families
(``steer.report.runs``) for preference, then utility, then their average. Several runs of one family
(AxBench: one run per concept) are averaged and the cell says how many; a cell without runs is
missing ("—" / empty), never zero; Avg is shown only when every family column of the row has a value.
Only families with at least one finished run get a column. ``bootstrap`` > 0 adds 95 % intervals
over examples (``steer.analysis.bootstrap``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steer import rundir
from steer.analysis.bootstrap import fmt_interval, percentile_interval, r2_statistic, replicate
from steer.io.atomic import atomic_write_text
from steer.report.runs import (
    FAMILIES,
    FORM_LABELS,
    OBJECTIVE_LABELS,
    REPORTS,
    NoRuns,
    Run,
    family_label,
    find_runs,
    no_runs_message,
    rank,
    relative,
    skipped_lines,
)
from steer.report.tables import MISSING, Cell, fmt_cell, latex_escape, markdown_head

TABLES = {
    "table2": ("train", "R² of the validity-decay fit on the train split"),
    "table5": ("test", "R² of the validity-decay fit on the test split"),
    "table6": ("transfer", "R² of the train-split fit scored on the test split"),
}
KINDS = {"pref": "Pref", "util": "Util"}


@dataclass(frozen=True)
class Row:
    model: str
    layer: int
    form: str
    objective: str
    cells: dict[tuple[str, str], Cell]


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    families: list[str]
    rows: list[Row]
    runs: list[Run]
    which: str

    @property
    def columns(self) -> list[tuple[str, str]]:
        return [(kind, family) for kind in KINDS for family in [*self.families, "Avg"]]


def paper_table(name: str, runs: Sequence[Run], replicates: dict[Path, dict[str, np.ndarray]] | None = None) -> Table:
    """Table ``name`` (table2/5/6) from ``runs``: mean R² per row and family, and the averages.

    ``replicates`` (run path -> kind -> bootstrap R² samples) adds an interval to every cell: the
    percentile interval of the replicate-wise mean over the cell's runs (and families, for Avg)."""
    which, title = TABLES[name]
    family_keys = sorted({r.family_key for r in runs}, key=lambda x: rank(list(FAMILIES), x))
    families = [family_label(x) for x in family_keys]
    keys = sorted(
        {(r.model, r.layer, r.form, r.objective) for r in runs},
        key=lambda k: (k[0], k[1], rank(list(FORM_LABELS), k[2]), rank(list(OBJECTIVE_LABELS), k[3])),
    )
    rows = []
    for model, layer, form, objective in keys:
        mine = [r for r in runs if (r.model, r.layer, r.form, r.objective) == (model, layer, form, objective)]
        cells: dict[tuple[str, str], Cell] = {}
        for kind in KINDS:
            samples = {}
            for family in families:
                used = [r for r in mine if r.family == family and r.r2(kind, which) is not None]
                values = [r.r2(kind, which) for r in used]
                if replicates and used and all(r.path in replicates for r in used):
                    samples[family] = np.mean([replicates[r.path][kind] for r in used], axis=0)
                interval = percentile_interval(samples[family]) if family in samples else None
                cells[kind, family] = Cell(float(np.mean(values)) if values else None, len(values), interval)
            present = [cells[kind, f].value for f in families]
            complete = all(v is not None for v in present)
            interval = None
            if complete and replicates and all(f in samples for f in families):
                interval = percentile_interval(np.mean([samples[f] for f in families], axis=0))
            cells[kind, "Avg"] = Cell(
                float(np.mean(present)) if complete else None, len(families) if complete else 0, interval
            )
        rows.append(Row(model, layer, form, objective, cells))
    return Table(name, title, families, rows, list(runs), which)


def _row_labels(row: Row) -> list[str]:
    return [
        row.model,
        str(row.layer),
        FORM_LABELS.get(row.form, row.form),
        OBJECTIVE_LABELS.get(row.objective, row.objective),
    ]


def table_markdown(table: Table, outputs: Path, skipped: Sequence[tuple[Path, str]]) -> str:
    head = ["Model", "Layer", "Form", "Objective"] + [f"{KINDS[k]} {f}" for k, f in table.columns]
    lines = [
        f"# Table {table.name.removeprefix('table')}: {table.title}",
        "",
        "Rows: model (layer) × intervention form × objective. Columns: data set families "
        "(Psy = Psychopathy, Pwr = PowerSeeking, Axb = AxBench; other data sets by name) for the "
        "preference (Pref) and utility (Util) log-odds, and their average (Avg, shown only when every "
        f"family of the row has a value). {MISSING} = no finished run (or an undefined R²); "
        "(n=k) = the mean over k runs of that family (e.g. AxBench concepts); other cells are one run.",
        "",
        *markdown_head(head, 4),
    ]
    for row in table.rows:
        cells = [fmt_cell(row.cells[c], count=c[1] != "Avg") for c in table.columns]
        lines.append("| " + " | ".join(_row_labels(row) + cells) + " |")
    lines += ["", f"## Runs used ({len(table.runs)})", ""]
    lines.append(f"| Run | Data set | Family | R² pref ({table.which}) | R² util ({table.which}) |")
    lines.append("|---|---|---|---:|---:|")
    for run in sorted(table.runs, key=lambda r: str(r.path)):
        pref, util = (run.r2(k, table.which) for k in KINDS)
        show = lambda v: MISSING if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {relative(run.path, outputs)} | {run.dataset} | {run.family} | {show(pref)} | {show(util)} |")
    lines += skipped_lines(skipped, outputs)
    return "\n".join(lines) + "\n"


def table_csv(table: Table) -> str:
    records = []
    for row in table.rows:
        record = {"model": row.model, "layer": row.layer, "form": row.form, "objective": row.objective}
        for kind, family in table.columns:
            cell = row.cells[kind, family]
            record[f"{kind}_{family}"] = cell.value
            if cell.interval is not None:
                record[f"{kind}_{family}_lo"] = cell.interval.lo
                record[f"{kind}_{family}_hi"] = cell.interval.hi
            if family != "Avg":
                record[f"{kind}_{family}_n"] = cell.n
        records.append(record)
    return pd.DataFrame.from_records(records).to_csv(index=False)


def table_latex(table: Table) -> str:
    width = len(table.families) + 1
    spec = "llll" + ("|" + "c" * width) * 2
    lines = [
        f"% {table.name}: {table.title}. -- = no finished run; superscript = number of runs averaged.",
        f"\\begin{{tabular}}{{{spec}}}",
        "\\toprule",
        " & & & & " + " & ".join(f"\\multicolumn{{{width}}}{{c}}{{{n}}}" for n in ("Preference", "Utility")) + " \\\\",
        "Model & Layer & Form & Objective & " + " & ".join(f for _, f in table.columns) + " \\\\",
        "\\midrule",
    ]
    for row in table.rows:
        cells = []
        for column in table.columns:
            cell = row.cells[column]
            if cell.value is None:
                cells.append("--")
            elif column[1] != "Avg" and cell.n > 1:
                cells.append(f"{fmt_interval(cell.value, cell.interval)}$^{{{cell.n}}}$")
            else:
                cells.append(fmt_interval(cell.value, cell.interval))
        lines.append(" & ".join(latex_escape(x) for x in _row_labels(row)) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def build_table(name: str, outputs: Path, bootstrap: int = 0, seed: int = 0) -> list[Path]:
    """Table ``name`` from the runs under ``outputs``; ``bootstrap`` > 0 adds 95 % intervals from
    that many bootstrap replicates over examples per run (``steer.analysis.bootstrap``), timed in the Markdown."""
    runs, skipped = find_runs(outputs)
    if not runs:
        raise NoRuns(no_runs_message(outputs, skipped))
    replicates, note = None, ""
    if bootstrap:
        start = time.perf_counter()
        statistic = r2_statistic(TABLES[name][0], seed=seed)
        replicates = {
            r.path: replicate(rundir.read_sweep(r.path), statistic, bootstrap, seed)
            for r in runs
            if (r.path / rundir.SWEEP).is_file()  # a run without its sweep keeps its value, without interval
        }
        note = (
            f"\n[lo, hi] = 95 % bootstrap interval over examples: {bootstrap} replicates per run (seed {seed}), "
            f"each refitted; {time.perf_counter() - start:.0f} s for {len(runs)} runs.\n"
        )
    table = paper_table(name, runs, replicates)
    out = outputs / REPORTS
    paths = {
        out / f"{name}.md": table_markdown(table, outputs, skipped) + note,
        out / f"{name}.csv": table_csv(table),
        out / f"{name}.tex": table_latex(table),
    }
    for path, text in paths.items():
        atomic_write_text(path, text)
    return list(paths)
