"""Table 3 of the paper: the judged steering results, from the ``judge`` section of the runs'
``metrics.json``.

Rows: model (layer) × intervention form × objective at the m each run chose, plus one Vanilla row
per model (m = 0, the mean over that model's runs: every run scores its own baseline). Columns per
data set family present: Psychopathy accuracy, PowerSeeking mean score, AxBench mean concept score
and mean harmonic mean, and for the built-in sentiment set accuracy, concept and HM. Runs of one
family (AxBench concepts) are averaged and marked (n=k); a cell without runs is "—", never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from steer import rundir
from steer.atomic import atomic_write_text
from steer.report import (
    FORM_LABELS,
    MISSING,
    OBJECTIVE_LABELS,
    REPORTS,
    Cell,
    NoRuns,
    Run,
    _fmt,
    _latex_escape,
    _rank,
    _rel,
    _skipped_lines,
    family_label,
    find_runs,
    markdown_head,
)

# (metric key in metrics.json, column label) per data set loader; other loaders show accuracy and HM.
METRIC_COLUMNS = {
    "psychopathy": (("accuracy", "Acc"),),
    "powerseeking": (("powerseeking", "Score"),),
    "axbench": (("concept", "Concept"), ("hm", "HM")),
    "sentiment": (("accuracy", "Acc"), ("concept", "Concept"), ("hm", "HM")),
}
DEFAULT_COLUMNS = (("accuracy", "Acc"), ("hm", "HM"))
VANILLA = "Vanilla"


@dataclass(frozen=True)
class JudgedRun:
    """A finished run (``steer.report.Run``) and the judge section of its ``metrics.json``."""

    run: Run
    judge: dict

    def value(self, condition: str, metric: str) -> float | None:
        value = self.judge.get(condition, {}).get(metric)
        return None if value is None else float(value)


def find_judged(outputs: Path) -> tuple[list[JudgedRun], list[tuple[Path, str]]]:
    """The finished runs under ``outputs`` (``steer.report.find_runs``) that have a judge section,
    and the ones not used (why)."""
    runs, skipped = find_runs(outputs)
    judged = []
    for run in runs:
        try:
            judge = rundir.read_metrics(run.path).get("judge")
        except (OSError, ValueError) as err:
            skipped.append((run.path, f"unreadable: {err}"))
            continue
        if judge:
            judged.append(JudgedRun(run, judge))
        else:
            skipped.append((run.path, "metrics.json has no judge section (run the judge stage)"))
    return judged, skipped


@dataclass(frozen=True)
class Table3:
    columns: list[tuple[str, str, str]]  # (loader, metric, label)
    rows: list[tuple[list[str], dict[tuple[str, str], Cell]]]
    runs: list[JudgedRun]


def build(runs: Sequence[JudgedRun]) -> Table3:
    loaders = sorted({r.run.loader for r in runs}, key=lambda x: _rank(list(METRIC_COLUMNS), x))
    columns = [
        (loader, metric, f"{family_label(loader)} {label}")
        for loader in loaders
        for metric, label in METRIC_COLUMNS.get(loader, DEFAULT_COLUMNS)
    ]

    def cells(mine: Sequence[JudgedRun], condition: str) -> dict[tuple[str, str], Cell]:
        out = {}
        for loader, metric, _ in columns:
            values = [r.value(condition, metric) for r in mine if r.run.loader == loader]
            values = [v for v in values if v is not None]
            out[loader, metric] = Cell(float(np.mean(values)) if values else None, len(values))
        return out

    rows = []
    for model, layer in sorted({(r.run.model, r.run.layer) for r in runs}):
        of_model = [r for r in runs if (r.run.model, r.run.layer) == (model, layer)]
        rows.append(([model, str(layer), VANILLA, "—"], cells(of_model, "vanilla")))
        keys = sorted(
            {(r.run.form, r.run.objective) for r in of_model},
            key=lambda k: (_rank(list(FORM_LABELS), k[0]), _rank(list(OBJECTIVE_LABELS), k[1])),
        )
        for form, objective in keys:
            mine = [r for r in of_model if (r.run.form, r.run.objective) == (form, objective)]
            labels = [model, str(layer), FORM_LABELS.get(form, form), OBJECTIVE_LABELS.get(objective, objective)]
            rows.append((labels, cells(mine, "steered")))
    return Table3(columns, rows, list(runs))


def markdown(table: Table3, outputs: Path, skipped) -> str:
    head = ["Model", "Layer", "Form", "Objective"] + [label for _, _, label in table.columns]
    lines = [
        "# Table 3: judged steering results",
        "",
        "Rows: model (layer) × form × objective at the multiplier each run chose (see the runs below), and "
        "Vanilla (m = 0, the mean over that model's runs). Acc = share of test pairs with PrefOdds > 0; "
        "Pwr Score = mean judge score 1–4 over parseable replies; Concept / HM = mean AxBench concept score "
        f"(0–2) and mean per-sample harmonic mean of concept, instruction and fluency. {MISSING} = no run; "
        "(n=k) = mean over k runs of that family.",
        "",
        *markdown_head(head, 4),
    ]
    for labels, cells in table.rows:
        lines.append("| " + " | ".join(labels + [_fmt(cells[c[:2]], count=True) for c in table.columns]) + " |")
    lines += [
        "",
        f"## Runs used ({len(table.runs)})",
        "",
        "| Run | Data set | m | chosen by | judge | calls | cost $ |",
    ]
    lines.append("|---|---|---:|---|---|---:|---:|")
    for run in sorted(table.runs, key=lambda r: str(r.run.path)):
        judge, usage = run.judge.get("judge", {}), run.judge.get("usage", {})
        cost = usage.get("cost_usd")
        cost = MISSING if cost is None else f"{cost:.4f}"
        lines.append(
            f"| {_rel(run.run.path, outputs)} | {run.run.dataset} | {run.judge.get('m', 0):g} | "
            f"{run.judge.get('select')} | "
            f"{judge.get('backend')}: {judge.get('model')} | "
            f"{usage.get('calls', 0)} (+{usage.get('cached', 0)} cached) | {cost} |"
        )
    lines += _skipped_lines(skipped, outputs)
    return "\n".join(lines) + "\n"


def csv(table: Table3) -> str:
    records = []
    for labels, cells in table.rows:
        record = dict(zip(("model", "layer", "form", "objective"), labels, strict=True))
        for loader, metric, _ in table.columns:
            record[f"{loader}_{metric}"] = cells[loader, metric].value
            record[f"{loader}_{metric}_n"] = cells[loader, metric].n
        records.append(record)
    return pd.DataFrame.from_records(records).to_csv(index=False)


def latex(table: Table3) -> str:
    lines = [
        "% Table 3: judged steering results. -- = no run; superscript = number of runs averaged.",
        f"\\begin{{tabular}}{{llll{'c' * len(table.columns)}}}",
        "\\toprule",
        "Model & Layer & Form & Objective & " + " & ".join(_latex_escape(c[2]) for c in table.columns) + " \\\\",
        "\\midrule",
    ]
    for labels, cells in table.rows:
        values = []
        for column in table.columns:
            cell = cells[column[:2]]
            text = "--" if cell.value is None else f"{cell.value:.3f}"
            values.append(f"{text}$^{{{cell.n}}}$" if cell.value is not None and cell.n > 1 else text)
        lines.append(" & ".join(_latex_escape(x) for x in labels) + " & " + " & ".join(values) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def build_table3(outputs: Path) -> list[Path]:
    """Write ``reports/table3.{md,csv,tex}`` under ``outputs``."""
    runs, skipped = find_judged(outputs)
    if not runs:
        raise NoRuns(
            f"no judged runs under {outputs} (a judged run has metrics.json with a judge section); run the "
            "pipeline with the judge stage first, e.g. `python run.py stages=[train,sweep,fit,judge]`, or `make table3`"
        )
    table = build(runs)
    out = outputs / REPORTS
    texts = {
        out / "table3.md": markdown(table, outputs, skipped),
        out / "table3.csv": csv(table),
        out / "table3.tex": latex(table),
    }
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)
