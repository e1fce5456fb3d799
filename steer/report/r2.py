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
from pathlib import Path

import numpy as np
import pandas as pd

from steer import rundir
from steer.analysis.bootstrap import percentile_interval, r2_statistic, replicate
from steer.report.runs import (
    FAMILIES,
    FORM_LABELS,
    NAMES,
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
from steer.report.tables import MISSING, Cell, markdown_table, write_table

TABLES = {
    "table2": ("train", "R² of the validity-decay fit on the train split"),
    "table5": ("test", "R² of the validity-decay fit on the test split"),
    "table6": ("transfer", "R² of the train-split fit scored on the test split"),
}
KINDS = {"pref": "Pref", "util": "Util"}
LABELS = ("model", "layer", "form", "objective")


def r2_frame(
    name: str, runs: Sequence[Run], replicates: dict[Path, dict[str, np.ndarray]] | None = None
) -> pd.DataFrame:
    """Table ``name`` (table2/5/6) from ``runs``: mean R² per row and family, and the averages.

    ``replicates`` (run path -> kind -> bootstrap R² samples) adds an interval to every cell: the
    percentile interval of the replicate-wise mean over the cell's runs (and families, for Avg)."""
    which = TABLES[name][0]
    family_keys = sorted({r.family_key for r in runs}, key=lambda x: rank(list(FAMILIES), x))
    families = [family_label(x) for x in family_keys]
    keys = sorted(
        {(r.model, r.layer, r.form, r.objective) for r in runs},
        key=lambda k: (k[0], k[1], rank(list(FORM_LABELS), k[2]), rank(list(OBJECTIVE_LABELS), k[3])),
    )
    rows = []
    for key in keys:
        mine = [r for r in runs if (r.model, r.layer, r.form, r.objective) == key]
        row: dict[tuple[str, str], object] = {("", label): value for label, value in zip(LABELS, key, strict=True)}
        for kind in KINDS:
            samples = {}
            for family in families:
                used = [r for r in mine if r.family == family and r.r2(kind, which) is not None]
                values = [r.r2(kind, which) for r in used]
                if replicates and used and all(r.path in replicates for r in used):
                    samples[family] = np.mean([replicates[r.path][kind] for r in used], axis=0)
                interval = percentile_interval(samples[family]) if family in samples else None
                row[kind, family] = Cell(float(np.mean(values)) if values else None, len(values), interval)
            present = [row[kind, f].value for f in families]
            complete = all(v is not None for v in present)
            interval = None
            if complete and replicates and all(f in samples for f in families):
                interval = percentile_interval(np.mean([samples[f] for f in families], axis=0))
            row[kind, "Avg"] = Cell(float(np.mean(present)) if complete else None, interval=interval)
        rows.append(row)
    columns = [("", label) for label in LABELS] + [(k, f) for k in KINDS for f in [*families, "Avg"]]
    return pd.DataFrame.from_records(rows, columns=pd.MultiIndex.from_tuples(columns))


def runs_used(runs: Sequence[Run], which: str, outputs: Path) -> list[str]:
    """The Markdown section listing every run a table used, with its own R²."""
    records = [
        {
            "Run": relative(run.path, outputs),
            "Data set": run.dataset,
            "Family": run.family,
            **{f"R² {kind} ({which})": Cell(run.r2(kind, which), digits=4) for kind in KINDS},
        }
        for run in sorted(runs, key=lambda r: str(r.path))
    ]
    return ["", f"## Runs used ({len(runs)})", "", markdown_table(pd.DataFrame.from_records(records))]


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
            f" [lo, hi] = 95 % bootstrap interval over examples: {bootstrap} replicates per run (seed {seed}), "
            f"each refitted; {time.perf_counter() - start:.0f} s for {len(runs)} runs."
        )
    which, title = TABLES[name]
    caption = (
        "Rows: model (layer) × intervention form × objective. Columns: data set families "
        "(Psy = Psychopathy, Pwr = PowerSeeking, Axb = AxBench; other data sets by name) for the "
        "preference (Pref) and utility (Util) log-odds, and their average (Avg, shown only when every "
        f"family of the row has a value). {MISSING} = no finished run (or an undefined R²); "
        "(n=k) = the mean over k runs of that family (e.g. AxBench concepts); other cells are one run." + note
    )
    return write_table(
        outputs / REPORTS,
        name,
        r2_frame(name, runs, replicates),
        title=f"Table {name.removeprefix('table')}: {title}",
        caption=caption,
        names=NAMES,
        groups=KINDS,
        appendix=[*runs_used(runs, which, outputs), *skipped_lines(skipped, outputs)],
    )
