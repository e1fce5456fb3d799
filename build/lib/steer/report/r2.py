"""The paper's R² tables: Table 2 (the fit on the train split), Table 5 (on the test split) and
Table 6 (the train fit scored on the test split; may be negative).

Rows are model (and layer) × intervention form × objective; columns are data set families
(``steer.report.runs``) for preference, then utility, then their average. Several runs of one family
(AxBench: one run per concept) are averaged and the cell says how many; a cell without runs is
missing ("—" / empty), never zero; Avg is shown only when every family column of the row has a value.
Only families with at least one finished run get a column. ``bootstrap`` > 0 adds 95 % intervals
over examples (``steer.analysis.bootstrap``).

Beside R², each table tests the functional form (the ``form`` entries of ``fit.json``,
``steer.analysis.forms``), per curve kind and averaged over the row's runs: the leave-one-m-out
cross-validated R² (CV), the R² on the individual examples (ex), ΔAICc = AICc of the paper's form −
AICc of the best simpler curve (> 0: the simpler curve is preferred), the simpler curve preferred
most often (alt) and its R² (for Table 6: the simpler curve with the best transfer R², and that R²).
An R² cell is marked † when one of its runs' fits has a parameter on a bound (listed per run).
"""

from __future__ import annotations

import sys
import time
from collections import Counter
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
FORM_GROUPS = {f"{kind}_form": f"{label} form" for kind, label in KINDS.items()}
FORM_COLUMNS = ("CV R²", "ex R²", "ΔAICc", "alt", "alt R²")
LABELS = ("model", "layer", "form", "objective")
BOUND_MARK = "†"


def fit_split(which: str) -> str:
    """The split whose fit a table's form columns describe: the train fit for Table 6."""
    return "train" if which == "transfer" else which


def at_bound(run: Run, kind: str, which: str) -> dict:
    return run.fit[kind][fit_split(which)].get("at_bound") or {}


def form_numbers(run: Run, kind: str, which: str) -> dict[str, object]:
    """One run's form columns (``FORM_COLUMNS``) for ``kind`` in table ``which``; None where absent."""
    form = run.fit[kind][fit_split(which)].get("form")
    if not form:
        return dict.fromkeys(FORM_COLUMNS)
    paper, alternatives = form["paper"], form["alternatives"]
    defined = {name: e["aicc"] for name, e in alternatives.items() if e.get("aicc") is not None}
    rival = min(defined, key=defined.get) if defined else None
    gap = paper["aicc"] - defined[rival] if rival and paper.get("aicc") is not None else None
    alt, alt_r2 = rival, alternatives[rival]["r2"] if rival else None
    if which == "transfer":
        transfer = {k: v for k, v in run.fit[kind]["transfer"].get("alternatives", {}).items() if v is not None}
        alt = max(transfer, key=transfer.get) if transfer else None
        alt_r2 = transfer[alt] if alt else None
    return {"CV R²": paper.get("cv_r2"), "ex R²": paper.get("example_r2"), "ΔAICc": gap, "alt": alt, "alt R²": alt_r2}


def form_cells(runs: Sequence[Run], kind: str, which: str) -> dict[str, object]:
    """The form columns of one table row: means over its runs, the most frequent alternative."""
    numbers = [form_numbers(r, kind, which) for r in runs]
    out: dict[str, object] = {}
    for column in FORM_COLUMNS:
        values = [n[column] for n in numbers if n[column] is not None]
        if column == "alt":
            out[column] = Counter(values).most_common(1)[0][0] if values else None
        else:
            digits = 1 if column == "ΔAICc" else 3
            out[column] = Cell(float(np.mean(values)) if values else None, len(values), digits=digits)
    return out


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
                mark = BOUND_MARK if any(at_bound(r, kind, which) for r in used) else ""
                row[kind, family] = Cell(float(np.mean(values)) if values else None, len(values), interval, mark=mark)
            present = [row[kind, f].value for f in families]
            complete = all(v is not None for v in present)
            interval = None
            if complete and replicates and all(f in samples for f in families):
                interval = percentile_interval(np.mean([samples[f] for f in families], axis=0))
            row[kind, "Avg"] = Cell(float(np.mean(present)) if complete else None, interval=interval)
        for kind in KINDS:
            row.update({(f"{kind}_form", c): v for c, v in form_cells(mine, kind, which).items()})
        rows.append(row)
    columns = [("", label) for label in LABELS] + [(k, f) for k in KINDS for f in [*families, "Avg"]]
    columns += [(group, c) for group in FORM_GROUPS for c in FORM_COLUMNS]
    return pd.DataFrame.from_records(rows, columns=pd.MultiIndex.from_tuples(columns))


def runs_used(runs: Sequence[Run], which: str, outputs: Path) -> list[str]:
    """The Markdown section listing every run a table used, with its own R²."""
    records = []
    for run in sorted(runs, key=lambda r: str(r.path)):
        record: dict[str, object] = {"Run": relative(run.path, outputs), "Data set": run.dataset, "Family": run.family}
        for kind in KINDS:
            bound = at_bound(run, kind, which)
            record[f"R² {kind} ({which})"] = Cell(run.r2(kind, which), digits=4, mark=BOUND_MARK if bound else "")
            record[f"{kind} at a bound"] = ", ".join(f"{k} ({v})" for k, v in bound.items()) or "none"
            form = run.fit[kind][fit_split(which)].get("form") or {}
            record[f"{kind} form test"] = form.get("verdict", MISSING)
        records.append(record)
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
            r.path: replicate(rundir.read_sweep(r.path), statistic, bootstrap, seed, sys.stderr.isatty())
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
        "(n=k) = the mean over k runs of that family (e.g. AxBench concepts); other cells are one run. "
        f"{BOUND_MARK} = a fit of the cell has a parameter on a bound (named per run below). Form columns "
        "(over the row's runs, of the fit the table scores; Table 6: the train fit): CV R² = leave-one-m-out "
        "cross-validated R²; ex R² = R² on the individual examples; ΔAICc = AICc of the paper's form minus "
        "that of the best simpler curve (polynomials of degree 2-5, piecewise quadratic; > 0: the simpler "
        "curve is preferred); alt = that curve (Table 6: the one with the best transfer R²) and its R²." + note
    )
    return write_table(
        outputs / REPORTS,
        name,
        r2_frame(name, runs, replicates),
        title=f"Table {name.removeprefix('table')}: {title}",
        caption=caption,
        names=NAMES,
        groups=KINDS | FORM_GROUPS,
        appendix=[*runs_used(runs, which, outputs), *skipped_lines(skipped, outputs)],
    )
