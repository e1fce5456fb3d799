"""The preference–utility front: how much preference each run buys for a given utility loss.

For every finished run (``fit.json`` + ``sweep.parquet``) the mean (UtilOdds, PrefOdds) over the
test examples at every swept m is one curve, drawn with its fitted curve (the test-split fits of
``fit.json``, evaluated with ``steer.analysis.fit.curve``); one plot per model × data set, colour = form,
line style = objective.

The table gives, per run and utility budget δ, the best PrefOdds reachable while UtilOdds stays
within δ of its value at m = 0: walking out from m = 0 in both directions, the largest PrefOdds
before UtilOdds first drops below U(0) − δ (a loss of utility costs, a gain does not). It is read
from the fitted curves on a fine grid over the swept range, and checked against the swept points
(the same rule on the grid, with the mean curves): both are reported, with the m that attains
them. ``--bootstrap N`` adds a percentile interval over examples to the fitted value.
"""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from steer import rundir
from steer.analysis.bootstrap import RESTARTS, Curves, Interval, percentile_interval, replicate
from steer.analysis.fit import COLUMNS, curve, fit_curve, fit_from_json, mean_curve
from steer.analysis.front import Best, best_fitted, best_within, fine_grid
from steer.analysis.plots import save_figure
from steer.report.runs import (
    FORM_LABELS,
    NAMES,
    OBJECTIVE_LABELS,
    REPORTS,
    NoRuns,
    Run,
    find_runs,
    no_runs_message,
    rank,
    slug,
)
from steer.report.tables import Cell, write_table

# Utility budgets in nats of UtilOdds (log-odds of P(A_p) + P(A_n)); summed-over-tokens losses of
# whole sentences put UtilOdds far below 0, where a budget of a few nats is a factor of e^δ in P_u.
DELTAS = (1.0, 2.0, 5.0)
FORM_COLORS = {"vector": "C0", "lora": "C1", "local_weight": "C2"}
OBJECTIVE_STYLES = {"diffmean": (":", "x"), "sft": ("--", "o"), "reps": ("-.", "^"), "split": ("-", "s")}


@dataclass(frozen=True)
class FrontRow:
    """One run's front: test mean curves, their fits, and the best point per δ (fit and swept)."""

    run: Run
    curves: dict[str, pd.DataFrame]
    params: dict[str, dict]
    fitted: dict[float, Best]
    swept: dict[float, Best]
    intervals: dict[float, Interval | None]


def front_row(run, deltas: Sequence[float], bootstrap: int = 0, seed: int = 0) -> FrontRow:
    """The front of one run from its ``sweep.parquet`` and the test fits of its ``fit.json``."""
    frame = rundir.read_sweep(run.path)
    curves = {kind: mean_curve(frame, "test", column) for kind, column in COLUMNS.items()}
    params = {kind: fit_from_json(kind, run.fit[kind]["test"]).params for kind in COLUMNS}
    m = curves["pref"]["m"].to_numpy()
    fitted = {d: best_fitted(params["pref"], params["util"], m.min(), m.max(), d) for d in deltas}
    swept = {d: best_within(m, curves["pref"]["mean"], curves["util"]["mean"], d) for d in deltas}
    intervals: dict[float, Interval | None] = dict.fromkeys(deltas)
    if bootstrap:
        samples = replicate(frame, front_statistic(deltas, seed=seed), bootstrap, seed, sys.stderr.isatty())
        intervals = {d: percentile_interval(samples[str(d)]) for d in deltas}
    return FrontRow(run, curves, params, fitted, swept, intervals)


def front_statistic(deltas: Sequence[float], restarts: int = RESTARTS, seed: int = 0):
    """Bootstrap statistic: the fitted best PrefOdds per δ after refitting the test mean curves."""

    def statistic(curves: Curves) -> dict[str, float]:
        fits = {kind: fit_curve(kind, *curves[kind, "test"], restarts=restarts, seed=seed) for kind in COLUMNS}
        m = curves["pref", "test"][0]
        return {str(d): best_fitted(fits["pref"].params, fits["util"].params, m.min(), m.max(), d).pref for d in deltas}

    return statistic


# ---------------------------------------------------------------- outputs


def front_figure(path: Path, rows: Sequence[FrontRow], title: str) -> Path:
    """PrefOdds against UtilOdds, one curve per run: swept test means (markers) and the fit (line)."""
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    for row in rows:
        run = row.run
        color = FORM_COLORS.get(run.form, "C7")
        dash, marker = OBJECTIVE_STYLES.get(run.objective, ("-", "."))
        label = f"{run.form} · {run.objective}"
        ax.plot(row.curves["util"]["mean"], row.curves["pref"]["mean"], marker, color=color, ms=4, ls="none")
        m = row.curves["pref"]["m"].to_numpy()
        ms = fine_grid(m.min(), m.max(), 801)
        ax.plot(curve("util", ms, row.params["util"]), curve("pref", ms, row.params["pref"]), dash, color=color, lw=1.3)
        ax.plot([], [], dash, marker=marker, color=color, label=label)
        zero = row.curves["pref"]["m"] == 0.0
        ax.plot(row.curves["util"]["mean"][zero], row.curves["pref"]["mean"][zero], "k*", ms=8)
    ax.set_xlabel("mean UtilOdds (test)")
    ax.set_ylabel("mean PrefOdds (test)")
    ax.set_title(title + "\nmarkers: swept m · lines: fitted curves · ★: m = 0", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


# The front's columns per utility budget δ (CSV name ``<key>_d<δ>``), as the tables show them.
QUANTITIES = {
    "pref_fit": "best Pref (fit)",
    "m_fit": "m (fit)",
    "util_fit": "Util (fit)",
    "pref_swept": "best Pref (swept)",
    "m_swept": "m (swept)",
}


def variant_labels(rows: Sequence[FrontRow]) -> list[str]:
    """Per row, the overrides (``overrides.yaml``) that set its run apart from the other runs of the
    same cell (model, layer, data set, form, objective); '' for a cell with one run."""
    overrides = [rundir.read_overrides(row.run.path) for row in rows]
    cells = [(r.run.model, r.run.layer, r.run.dataset, r.run.form, r.run.objective) for r in rows]
    labels = []
    for cell, mine in zip(cells, overrides, strict=True):
        others = [o for c, o in zip(cells, overrides, strict=True) if c == cell]
        keys = sorted({k for o in others for k in o if any(o.get(k) != p.get(k) for p in others)})
        labels.append(", ".join(f"{k}={mine.get(k, 'default')}" for k in keys) if len(others) > 1 else "")
    return labels


def front_frame(rows: Sequence[FrontRow], deltas: Sequence[float]) -> pd.DataFrame:
    """The front as one table: a row per run, per δ the fitted best PrefOdds (with its interval), the m
    attaining it and the UtilOdds there, and the same rule on the swept points. Two runs of one cell
    get a ``variant`` column: the overrides that differ between them."""
    records = []
    variants = variant_labels(rows)
    for row, variant in zip(rows, variants, strict=True):
        run = row.run
        zero = row.curves["pref"]["m"] == 0.0
        record = {
            ("", "model"): run.model,
            ("", "layer"): run.layer,
            ("", "dataset"): run.dataset,
            ("", "form"): run.form,
            ("", "objective"): run.objective,
            ("", "variant"): variant,
            ("", "pref_at_0"): Cell(float(row.curves["pref"]["mean"][zero].iloc[0]), digits=2),
            ("", "run"): str(run.path),
        }
        for d in deltas:
            fit, swept = row.fitted[d], row.swept[d]
            record["pref_fit", f"d{d}"] = Cell(fit.pref, interval=row.intervals[d], digits=2)
            record.update({("m_fit", f"d{d}"): fit.m, ("util_fit", f"d{d}"): fit.util})
            record.update({("pref_swept", f"d{d}"): Cell(swept.pref, digits=2), ("m_swept", f"d{d}"): swept.m})
        records.append(record)
    keys = ("model", "layer", "dataset", "form", "objective", "variant", "pref_at_0", "run")
    labels = [("", key) for key in keys if key != "variant" or any(variants)]
    columns = labels + [(key, f"d{d}") for key in QUANTITIES for d in deltas]
    return pd.DataFrame.from_records(records, columns=pd.MultiIndex.from_tuples(columns))


def build_front(
    outputs: Path, deltas: Sequence[float] = DELTAS, bootstrap: int = 0, seed: int = 0
) -> tuple[list[Path], float]:
    """Front figure(s) and table for every finished run under ``outputs``; returns the files written
    and the seconds the bootstrap took (0 when off)."""
    if not deltas or any(d < 0 for d in deltas):
        raise ValueError(f"--delta: give one or more utility budgets >= 0, got {list(deltas)}")
    found, skipped = find_runs(outputs)
    runs = [r for r in found if (r.path / rundir.SWEEP).is_file()]
    if not runs:
        raise NoRuns(no_runs_message(outputs, skipped))
    runs.sort(
        key=lambda r: (
            r.model,
            r.layer,
            r.dataset,
            rank(list(FORM_LABELS), r.form),
            rank(list(OBJECTIVE_LABELS), r.objective),
        )
    )
    start = time.perf_counter()
    rows = [front_row(r, deltas, bootstrap, seed) for r in runs]
    seconds = time.perf_counter() - start if bootstrap else 0.0
    out = outputs / REPORTS
    figures = []
    for model, layer, dataset in dict.fromkeys((r.model, r.layer, r.dataset) for r in runs):
        group = [row for row in rows if (row.run.model, row.run.layer, row.run.dataset) == (model, layer, dataset)]
        path = out / f"front-{slug(model)}-L{layer}-{slug(dataset)}.png"
        figures.append(front_figure(path, group, f"{model} (layer {layer}) · {dataset}"))
    note = ""
    if bootstrap:
        note = f" [lo, hi] = 95 % bootstrap interval over test examples ({bootstrap} replicates, seed {seed}, "
        note += f"{seconds:.0f} s)."
    caption = (
        "Best mean PrefOdds reachable while mean UtilOdds stays within δ of its value at m = 0 (walking out "
        "from m = 0; utility gains are free), read from the fitted test curves (fit.json) on a fine grid over "
        "the swept range, and the same rule on the swept points as a check, with the m attaining each; "
        "Pref(0) = mean PrefOdds at m = 0." + note
    )
    names = NAMES | {"pref_at_0": "Pref(0)", "variant": "Variant"} | {f"d{d}": f"δ={d:g}" for d in deltas}
    detail = [("", "run"), *(("util_fit", f"d{d}") for d in deltas)]
    written = write_table(
        out,
        "front",
        front_frame(rows, deltas),
        title="Preference–utility front (test split)",
        caption=caption,
        names=names,
        groups=QUANTITIES,
        detail=detail,
        appendix=[""] + [f"![{p.stem}]({p.name})" for p in figures],
    )
    return [*written, *figures, *(p.with_suffix(".pdf") for p in figures)], seconds


def parse_deltas(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> [0.25, 0.5, 1.0]."""
    try:
        return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError as err:
        raise ValueError(f"--deltas: not a comma-separated list of numbers: {text!r}") from err
