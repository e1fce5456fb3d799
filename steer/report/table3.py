"""Table 3 of the paper: the judged steering results, from the ``judge`` section of the runs'
``metrics.json``.

Rows: model (layer) × intervention form × objective × how m was chosen (``judge.select``: the
paper's protocol is m = 1 fixed for every method, ``fixed (m = 1)``; ``fit`` and ``validation`` are
steer's own), plus one Vanilla row per model (m = 0, the mean over that model's runs: every run
scores its own baseline). Columns per
data set family present: Psychopathy accuracy, PowerSeeking mean score, AxBench mean concept score
and mean harmonic mean, and for the built-in sentiment set accuracy, concept and HM. Runs of one
family (AxBench concepts) are averaged and marked (n=k); a cell without runs is "—", never 0.

``bootstrap`` > 0 adds 95 % intervals over test examples: per run, the report prompts are drawn
with replacement (one draw for every metric and both conditions of the run), each metric is
recomputed as the mean of the drawn examples' scores (``example_scores``: accuracy from
``accuracy.parquet``, rubric scores and harmonic means from ``judgments.parquet``), and a cell's
interval is the percentile interval of the replicate-wise mean over its runs. Nothing is refitted or
judged again, so it takes seconds.

Yes/No data sets (Psychopathy) need no judge at a fixed m, nor a fit: ``table3_m1`` reads every swept run's
test PrefOdds at m = 1 from its sweep (or, where the sweep grid lacks 1, from the judge stage's
direct scoring at m = 1) and reports accuracy and balanced accuracy (``steer.report.yesno``) with
the same bootstrap over test examples, Vanilla from m = 0.
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
    find_swept_runs,
    rank,
    relative,
    skipped_lines,
)
from steer.report.tables import MISSING, Cell, markdown_table, write_table
from steer.report.yesno import accuracy_replicates, yes_no_accuracy, yes_no_classes

# (metric key in metrics.json, column label) per data set loader; other loaders show accuracy and HM.
METRIC_COLUMNS = {
    "psychopathy": (("accuracy", "Acc"),),
    "powerseeking": (("powerseeking", "Score"),),
    "axbench": (("concept", "Concept"), ("hm", "HM")),
    "sentiment": (("accuracy", "Acc"), ("concept", "Concept"), ("hm", "HM")),
}
DEFAULT_COLUMNS = (("accuracy", "Acc"), ("hm", "HM"))
CONDITIONS = ("vanilla", "steered")
# The paper's Table 3 protocol: every method steers at this multiplier (its apply_*.yaml files).
PAPER_M = 1.0


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

    @property
    def selection(self) -> str:
        """How the run's m was chosen: ``fixed (m = 1)`` (the paper's protocol at m = 1), ``fit``, ``validation``."""
        select = str(self.judge.get("select", "fit"))
        return f"fixed (m = {float(self.judge.get('m', 0)):g})" if select == "fixed" else select


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
        vanilla = {("", "form"): "vanilla", ("", "objective"): None, ("", "m chosen by"): "m = 0"}
        rows.append({**labels, **vanilla, **cells(of_model, "vanilla")})
        keys = sorted(
            {(r.run.form, r.run.objective, r.selection) for r in of_model},
            key=lambda k: (rank(list(FORM_LABELS), k[0]), rank(list(OBJECTIVE_LABELS), k[1]), k[2]),
        )
        for form, objective, selection in keys:
            mine = [r for r in of_model if (r.run.form, r.run.objective, r.selection) == (form, objective, selection)]
            what = {("", "form"): form, ("", "objective"): objective, ("", "m chosen by"): selection}
            rows.append({**labels, **what, **cells(mine, "steered")})
    header = [("", label) for label in ("model", "layer", "form", "objective", "m chosen by")] + columns
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


def judged_table(runs: list[JudgedRun], skipped, outputs: Path, bootstrap: int, seed: int) -> list[Path]:
    """``reports/table3.{md,csv,tex}`` from the judged runs."""
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
        "Rows: model (layer) × form × objective × how m was chosen (fixed (m = 1) is the paper's protocol; "
        "fit and validation are steer's own; table3.md lists each run's m), "
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
        names=NAMES | metrics | {"vanilla": "Vanilla", "m chosen by": "m chosen by"},
        groups=families,
        appendix=[*runs_used(runs, outputs), *skipped_lines(skipped, outputs)],
    )


def pref_odds_at(run_dir: Path, m: float) -> tuple[pd.Series, str] | None:
    """The run's test PrefOdds per example at ``m`` and where they come from: the sweep, else the
    judge stage's direct scoring (``accuracy.parquet``); None when neither has ``m``."""
    for name, source in ((rundir.SWEEP, "sweep"), (rundir.ACCURACY, "judge scoring")):
        if not (run_dir / name).is_file():
            continue
        frame = rundir.read_table(run_dir, name)
        rows = frame[(frame["split"] == "test") & np.isclose(frame["m"].astype(float), m)]
        if not rows.empty:
            return rows.groupby("example_id")["pref_odds"].mean(), source
    return None


@dataclass(frozen=True)
class YesNoRun:
    """One finished run on a Yes/No data set: its test PrefOdds at m = 0 and at the fixed m, and
    where each was read."""

    run: Run
    classes: np.ndarray
    vanilla: np.ndarray
    steered: np.ndarray
    source: str
    vanilla_source: str


def yes_no_runs(runs: Sequence[Run], m: float) -> tuple[list[YesNoRun], list[tuple[Path, str]]]:
    """The runs whose test answers are all Yes/No with test PrefOdds at 0 and ``m``; the others
    of those data sets, with the reason."""
    found, skipped = [], []
    for run in runs:
        if not (run.path / rundir.PAIRS).is_file():
            continue
        pairs = rundir.read_pairs(run.path, "test")
        classes = yes_no_classes([p.positive for p in pairs])
        if classes is None:
            continue
        at_m, at_0 = pref_odds_at(run.path, m), pref_odds_at(run.path, 0.0)
        if at_m is None or at_0 is None:
            skipped.append((run.path, f"no test PrefOdds at m = {m:g} (not in the sweep grid, not judged there)"))
            continue
        ids = [p.example_id for p in pairs]
        steered, vanilla = at_m[0].reindex(ids).to_numpy(float), at_0[0].reindex(ids).to_numpy(float)
        found.append(YesNoRun(run, classes, vanilla, steered, at_m[1], at_0[1]))
    return found, skipped


def yes_no_cells(runs: Sequence[YesNoRun], condition: str, bootstrap: int, seed: int) -> dict[str, Cell]:
    """Accuracy and balanced accuracy of ``condition`` averaged over ``runs``, with intervals."""
    values = [yes_no_accuracy(getattr(r, condition), r.classes) for r in runs]
    out = {}
    for metric in ("accuracy", "balanced_accuracy"):
        got = [v[metric] for v in values if v[metric] is not None]
        interval = None
        if bootstrap and got:
            reps = [accuracy_replicates(getattr(r, condition), r.classes, bootstrap, seed)[metric] for r in runs]
            interval = percentile_interval(np.mean(reps, axis=0))
        out[metric] = Cell(float(np.mean(got)) if got else None, len(got), interval)
    return out


def yes_no_table(runs: Sequence[YesNoRun], m: float, bootstrap: int, seed: int) -> pd.DataFrame:
    """Rows: data set × model (layer): Vanilla (m = 0), then every form × objective at ``m``."""
    rows = []
    for dataset, model, layer in sorted({(r.run.dataset, r.run.model, r.run.layer) for r in runs}):
        mine = [r for r in runs if (r.run.dataset, r.run.model, r.run.layer) == (dataset, model, layer)]
        labels = {"dataset": dataset, "model": model, "layer": layer}
        n_test = len(mine[0].classes)
        source = mine[0].vanilla_source
        rows.append({**labels, "form": "vanilla", "objective": None, "m": 0.0, "n test": n_test, "read from": source})
        rows[-1].update(yes_no_cells(mine[:1], "vanilla", bootstrap, seed))
        keys = sorted(
            {(r.run.form, r.run.objective) for r in mine},
            key=lambda k: (rank(list(FORM_LABELS), k[0]), rank(list(OBJECTIVE_LABELS), k[1])),
        )
        for form, objective in keys:
            cell = [r for r in mine if (r.run.form, r.run.objective) == (form, objective)]
            sources = ", ".join(sorted({r.source for r in cell}))
            record = {**labels, "form": form, "objective": objective, "m": m, "n test": n_test, "read from": sources}
            rows.append({**record, **yes_no_cells(cell, "steered", bootstrap, seed)})
    return pd.DataFrame.from_records(rows)


def fixed_m_table(outputs: Path, m: float, bootstrap: int, seed: int) -> list[Path]:
    """``reports/table3_m1.{md,csv,tex}``: Yes/No accuracy at the fixed ``m``, no judge; [] without such runs."""
    swept, _ = find_swept_runs(outputs)
    runs, skipped = yes_no_runs(swept, m)
    if not runs:
        return []
    interval = f" [lo, hi] = 95 % bootstrap interval over test examples ({bootstrap} replicates, seed {seed})."
    caption = (
        f"The paper's Table 3 protocol on Yes/No data sets (Psychopathy): every method at m = {m:g}, no judge. "
        "Acc = share of test pairs with PrefOdds > 0; Bal. acc = mean of the accuracies over Yes-positive and "
        "No-positive pairs (0.5 for a direction that only shifts the Yes/No prior). Read from each run's sweep "
        "at that m, or from the judge stage's scoring there." + (interval if bootstrap else "")
    )
    return write_table(
        outputs / REPORTS,
        "table3_m1",
        yes_no_table(runs, m, bootstrap, seed),
        title=f"Table 3 at m = {m:g}: Yes/No accuracy without a judge",
        caption=caption,
        names=NAMES | {"vanilla": "Vanilla", "accuracy": "Acc", "balanced_accuracy": "Bal. acc"},
        appendix=skipped_lines(skipped, outputs),
    )


def build_table3(outputs: Path, bootstrap: int = 0, seed: int = 0, m: float = PAPER_M) -> list[Path]:
    """Write ``reports/table3.{md,csv,tex}`` (the judged runs) and ``reports/table3_m1.*`` (Yes/No
    accuracy at the fixed ``m``, no judge) under ``outputs``; ``bootstrap`` > 0 adds 95 % intervals
    over test examples from that many replicates per run."""
    runs, skipped = find_judged(outputs)
    written = fixed_m_table(outputs, m, bootstrap, seed)
    if not runs and not written:
        raise NoRuns(
            f"no judged runs under {outputs} (a judged run has metrics.json with a judge section) and no "
            f"Yes/No runs swept at m = {m:g}; run the pipeline with the judge stage first, e.g. "
            "`python run.py stages=[train,sweep,fit,judge]`, or `make table3`"
        )
    return (judged_table(runs, skipped, outputs, bootstrap, seed) if runs else []) + written
