"""Table 3 of the paper: the judged steering results, from the ``judge`` section of the runs'
``metrics.json``.

Rows: model (layer) × intervention form × objective at the m each run chose, plus one Vanilla row
per model (m = 0, the mean over that model's runs: every run scores its own baseline). Columns per
data set family present: Psychopathy accuracy, PowerSeeking mean score, AxBench mean concept score
and mean harmonic mean, and for the built-in sentiment set accuracy, concept and HM. Runs of one
family (AxBench concepts) are averaged and marked (n=k); a cell without runs is "—", never 0.

``bootstrap`` > 0 adds 95 % intervals over test examples: per run, the report prompts are drawn
with replacement (one draw for every metric and both conditions of the run), each metric is
recomputed as the mean of the drawn examples' scores (``example_scores``: accuracy from
``accuracy.parquet``, rubric scores and harmonic means from ``judgments.parquet``), and a cell's
interval is the percentile interval of the replicate-wise mean over its runs. Nothing is refitted or
judged again, so it takes seconds.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from steer import rundir
from steer.analysis.bootstrap import percentile_interval
from steer.judge.protocols import example_scores
from steer.judge.select import split_records
from steer.report.runs import (
    FORM_LABELS,
    NAMES,
    OBJECTIVE_LABELS,
    REPORTS,
    NoRuns,
    Run,
    family_label,
    find_runs,
    rank,
    relative,
    skipped_lines,
)
from steer.report.tables import MISSING, Cell, markdown_table, write_table

# (metric key in metrics.json, column label) per data set loader; other loaders show accuracy and HM.
METRIC_COLUMNS = {
    "psychopathy": (("accuracy", "Acc"),),
    "powerseeking": (("powerseeking", "Score"),),
    "axbench": (("concept", "Concept"), ("hm", "HM")),
    "sentiment": (("accuracy", "Acc"), ("concept", "Concept"), ("hm", "HM")),
}
DEFAULT_COLUMNS = (("accuracy", "Acc"), ("hm", "HM"))
CONDITIONS = ("vanilla", "steered")


@dataclass(frozen=True)
class JudgedRun:
    """A finished run (``steer.report.Run``) and the judge section of its ``metrics.json``;
    ``replicates`` (condition, metric) -> bootstrap samples, when the report bootstraps."""

    run: Run
    judge: dict
    replicates: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)

    def value(self, condition: str, metric: str) -> float | None:
        value = self.judge.get(condition, {}).get(metric)
        return None if value is None else float(value)


def run_examples(run: JudgedRun) -> dict[str, pd.DataFrame]:
    """Per condition, one row per report prompt of the run (the test pairs, less the validation half
    under ``judge/select=validation``): ``accuracy`` (1/0, PrefOdds > 0) where the protocol has it,
    each rubric's score and ``hm``. The mean of a column is that metric of ``metrics.json``."""
    path = run.run.path
    _, report = split_records(rundir.read_pairs(path, "test"), run.judge.get("select", "fit"))
    ids = [r.example_id for r in report]
    judgments = rundir.read_table(path, rundir.JUDGMENTS)
    judgments = judgments[judgments["part"] == "report"]
    accuracy = rundir.read_table(path, rundir.ACCURACY) if (path / rundir.ACCURACY).is_file() else None
    rubrics = list(run.judge.get("protocol", {}).get("rubrics", {}))
    out = {}
    for condition in CONDITIONS:
        m = float(run.judge[condition]["m"])
        frame = example_scores(rubrics, judgments[judgments["m"] == m]).reindex(ids)
        if accuracy is not None and not accuracy.empty:
            odds = accuracy[accuracy["m"] == m].set_index("example_id")["pref_odds"].reindex(ids)
            frame["accuracy"] = (odds > 0).astype(float).where(odds.notna())
        out[condition] = frame
    return out


def example_replicates(examples: dict[str, pd.DataFrame], n: int, seed: int) -> dict[tuple[str, str], np.ndarray]:
    """``n`` bootstrap means of every (condition, metric) column, one draw of the examples shared by all."""
    size = len(next(iter(examples.values())))
    draws = np.random.default_rng(seed).integers(0, size, (n, size))
    out = {}
    with warnings.catch_warnings():  # a draw of only unparseable replies has no mean: NaN, counted missing
        warnings.simplefilter("ignore", RuntimeWarning)
        for condition, frame in examples.items():
            for metric in frame.columns:
                out[condition, metric] = np.nanmean(frame[metric].to_numpy(dtype=float)[draws], axis=1)
    return out


def with_replicates(runs: Sequence[JudgedRun], n: int, seed: int) -> list[JudgedRun]:
    """The runs with their bootstrap samples; a run without its per-example files keeps its
    values, without interval."""
    out = []
    for run in runs:
        needed = (rundir.PAIRS, rundir.JUDGMENTS)
        if all((run.run.path / name).is_file() for name in needed):
            run = JudgedRun(run.run, run.judge, example_replicates(run_examples(run), n, seed))
        out.append(run)
    return out


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


def build(runs: Sequence[JudgedRun]) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """Table 3 as one frame (columns: the labels, then (loader, metric)), with the display names of its
    metrics and of its column groups (the data set families)."""
    loaders = sorted({r.run.loader for r in runs}, key=lambda x: rank(list(METRIC_COLUMNS), x))
    columns = [(loader, metric) for loader in loaders for metric, _ in METRIC_COLUMNS.get(loader, DEFAULT_COLUMNS)]
    metrics = {metric: label for loader in loaders for metric, label in METRIC_COLUMNS.get(loader, DEFAULT_COLUMNS)}

    def cells(mine: Sequence[JudgedRun], condition: str) -> dict[tuple[str, str], Cell]:
        out = {}
        for loader, metric in columns:
            used = [r for r in mine if r.run.loader == loader and r.value(condition, metric) is not None]
            values = [r.value(condition, metric) for r in used]
            interval = None
            if used and all((condition, metric) in r.replicates for r in used):
                interval = percentile_interval(np.mean([r.replicates[condition, metric] for r in used], axis=0))
            out[loader, metric] = Cell(float(np.mean(values)) if values else None, len(values), interval)
        return out

    rows = []
    for model, layer in sorted({(r.run.model, r.run.layer) for r in runs}):
        of_model = [r for r in runs if (r.run.model, r.run.layer) == (model, layer)]
        labels = {("", "model"): model, ("", "layer"): layer}
        rows.append({**labels, ("", "form"): "vanilla", ("", "objective"): None, **cells(of_model, "vanilla")})
        keys = sorted(
            {(r.run.form, r.run.objective) for r in of_model},
            key=lambda k: (rank(list(FORM_LABELS), k[0]), rank(list(OBJECTIVE_LABELS), k[1])),
        )
        for form, objective in keys:
            mine = [r for r in of_model if (r.run.form, r.run.objective) == (form, objective)]
            rows.append({**labels, ("", "form"): form, ("", "objective"): objective, **cells(mine, "steered")})
    header = [("", label) for label in ("model", "layer", "form", "objective")] + columns
    frame = pd.DataFrame.from_records(rows, columns=pd.MultiIndex.from_tuples(header))
    return frame, metrics, {loader: family_label(loader) for loader in loaders}


def runs_used(runs: Sequence[JudgedRun], outputs: Path) -> list[str]:
    """The Markdown section listing every judged run: its m, how m was chosen, the judge and its cost."""
    records = []
    for run in sorted(runs, key=lambda r: str(r.run.path)):
        judge, usage = run.judge.get("judge", {}), run.judge.get("usage", {})
        records.append(
            {
                "Run": relative(run.run.path, outputs),
                "Data set": run.run.dataset,
                "m": float(run.judge.get("m", 0)),
                "chosen by": run.judge.get("select"),
                "judge": f"{judge.get('backend')}: {judge.get('model')}",
                "calls": f"{usage.get('calls', 0)} (+{usage.get('cached', 0)} cached)",
                "cost $": Cell(usage.get("cost_usd"), digits=4),
            }
        )
    return ["", f"## Runs used ({len(runs)})", "", markdown_table(pd.DataFrame.from_records(records))]


def build_table3(outputs: Path, bootstrap: int = 0, seed: int = 0) -> list[Path]:
    """Write ``reports/table3.{md,csv,tex}`` under ``outputs``; ``bootstrap`` > 0 adds 95 % intervals
    over test examples from that many replicates per run."""
    runs, skipped = find_judged(outputs)
    if not runs:
        raise NoRuns(
            f"no judged runs under {outputs} (a judged run has metrics.json with a judge section); run the "
            "pipeline with the judge stage first, e.g. `python run.py stages=[train,sweep,fit,judge]`, or `make table3`"
        )
    note = ""
    if bootstrap:
        start = time.perf_counter()
        runs = with_replicates(runs, bootstrap, seed)
        note = (
            f" [lo, hi] = 95 % bootstrap interval over test examples: {bootstrap} replicates per run (seed {seed}), "
            f"{sum(bool(r.replicates) for r in runs)} of {len(runs)} runs with per-example files; "
            f"{time.perf_counter() - start:.1f} s."
        )
    frame, metrics, families = build(runs)
    caption = (
        "Rows: model (layer) × form × objective at the multiplier each run chose (table3.md lists the runs), "
        "and Vanilla (m = 0, the mean over that model's runs). Acc = share of test pairs with PrefOdds > 0; "
        "Pwr Score = mean judge score 1–4 over parseable replies; Concept / HM = mean AxBench concept score "
        f"(0–2) and mean per-sample harmonic mean of concept, instruction and fluency. {MISSING} = no run; "
        "(n=k) = mean over k runs of that family." + note
    )
    return write_table(
        outputs / REPORTS,
        "table3",
        frame,
        title="Table 3: judged steering results",
        caption=caption,
        names=NAMES | metrics | {"vanilla": "Vanilla"},
        groups=families,
        appendix=[*runs_used(runs, outputs), *skipped_lines(skipped, outputs)],
    )
