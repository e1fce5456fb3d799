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
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from steer import rundir
from steer.analysis.bootstrap import RESTARTS, Curves, Interval, fmt_interval, percentile_interval, replicate
from steer.analysis.fit import COLUMNS, curve, fit_curve, fit_from_json, mean_curve
from steer.analysis.front import Best, best_fitted, best_within, fine_grid
from steer.io.atomic import atomic_path, atomic_write_text
from steer.report import (
    FORM_LABELS,
    OBJECTIVE_LABELS,
    REPORTS,
    NoRuns,
    Run,
    _latex_escape,
    _no_runs_message,
    _rank,
    _slug,
    find_runs,
    markdown_head,
)

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
        samples = replicate(frame, front_statistic(deltas, seed=seed), bootstrap, seed)
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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


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


def front_records(rows: Sequence[FrontRow], deltas: Sequence[float]) -> list[dict]:
    records = []
    for row, variant in zip(rows, variant_labels(rows), strict=True):
        run = row.run
        record = {"model": run.model, "layer": run.layer, "dataset": run.dataset, "form": run.form}
        record.update(objective=run.objective, variant=variant, run=str(run.path))
        zero = row.curves["pref"]["m"] == 0.0
        record["pref_at_0"] = float(row.curves["pref"]["mean"][zero].iloc[0])
        for d in deltas:
            fit, swept, interval = row.fitted[d], row.swept[d], row.intervals[d]
            record.update({f"pref_fit_d{d}": fit.pref, f"m_fit_d{d}": fit.m, f"util_fit_d{d}": fit.util})
            if interval is not None:
                record.update({f"pref_fit_d{d}_lo": interval.lo, f"pref_fit_d{d}_hi": interval.hi})
            record.update({f"pref_swept_d{d}": swept.pref, f"m_swept_d{d}": swept.m})
        records.append(record)
    return records


def front_markdown(rows: Sequence[FrontRow], deltas: Sequence[float], figures: Sequence[Path], note: str) -> str:
    head = ["Model", "Layer", "Data set", "Form", "Objective", "Pref(0)"]
    head += [f"δ={d}: best Pref fit (m)" for d in deltas] + [f"δ={d}: swept (m)" for d in deltas]
    lines = [
        "# Preference–utility front (test split)",
        "",
        "Best mean PrefOdds reachable while mean UtilOdds stays within δ of its value at m = 0 (walking out "
        "from m = 0; utility gains are free), read from the fitted test curves (fit.json) on a fine grid over "
        "the swept range, and the same rule on the swept points as a check; (m) = where it is attained."
        + (f" {note}" if note else ""),
        "",
        *markdown_head(head, 5),
    ]
    for row, variant in zip(rows, variant_labels(rows), strict=True):
        run = row.run
        cells = [run.model, str(run.layer), run.dataset, FORM_LABELS.get(run.form, run.form)]
        cells += [OBJECTIVE_LABELS.get(run.objective, run.objective) + (f" ({variant})" if variant else "")]
        zero = row.curves["pref"]["m"] == 0.0
        cells.append(f"{float(row.curves['pref']['mean'][zero].iloc[0]):.2f}")
        cells += [f"{fmt_interval(row.fitted[d].pref, row.intervals[d], 2)} ({row.fitted[d].m:g})" for d in deltas]
        cells += [f"{row.swept[d].pref:.2f} ({row.swept[d].m:g})" for d in deltas]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [""] + [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"


def front_latex(rows: Sequence[FrontRow], deltas: Sequence[float]) -> str:
    lines = [
        "% Preference-utility front: best fitted PrefOdds with UtilOdds within delta of m = 0 (test split).",
        f"\\begin{{tabular}}{{lllll{'r' * len(deltas)}}}",
        "\\toprule",
        "Model & Layer & Data set & Form & Objective & " + " & ".join(f"$\\delta={d}$" for d in deltas) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        run = row.run
        labels = [run.model, str(run.layer), run.dataset, FORM_LABELS.get(run.form, run.form)]
        labels.append(OBJECTIVE_LABELS.get(run.objective, run.objective))
        cells = [fmt_interval(row.fitted[d].pref, row.intervals[d], 2) for d in deltas]
        lines.append(" & ".join(_latex_escape(x) for x in labels) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


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
        raise NoRuns(_no_runs_message(outputs, skipped))
    runs.sort(
        key=lambda r: (
            r.model,
            r.layer,
            r.dataset,
            _rank(list(FORM_LABELS), r.form),
            _rank(list(OBJECTIVE_LABELS), r.objective),
        )
    )
    start = time.perf_counter()
    rows = [front_row(r, deltas, bootstrap, seed) for r in runs]
    seconds = time.perf_counter() - start if bootstrap else 0.0
    out = outputs / REPORTS
    figures = []
    for model, layer, dataset in dict.fromkeys((r.model, r.layer, r.dataset) for r in runs):
        group = [row for row in rows if (row.run.model, row.run.layer, row.run.dataset) == (model, layer, dataset)]
        path = out / f"front-{_slug(model)}-L{layer}-{_slug(dataset)}.png"
        figures.append(front_figure(path, group, f"{model} (layer {layer}) · {dataset}"))
    note = (
        f"[lo, hi] = 95 % bootstrap interval over test examples ({bootstrap} replicates, seed {seed}, {seconds:.0f} s)."
        if bootstrap
        else ""
    )
    texts = {
        out / "front.md": front_markdown(rows, deltas, figures, note),
        out / "front.csv": pd.DataFrame.from_records(front_records(rows, deltas)).to_csv(index=False),
        out / "front.tex": front_latex(rows, deltas),
    }
    for path, text in texts.items():
        atomic_write_text(path, text)
    return [*texts, *figures], seconds


def parse_deltas(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> [0.25, 0.5, 1.0]."""
    try:
        return [float(x) for x in re.split(r"[,\s]+", text.strip()) if x]
    except ValueError as err:
        raise ValueError(f"--deltas: not a comma-separated list of numbers: {text!r}") from err
