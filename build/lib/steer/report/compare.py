"""Does SPLIT win? Each objective at its tuned best, on the test split, paired.

``python -m steer.report compare --outputs outputs/tune`` (``make compare``) reads the best trial
of every study (``<outputs>/tune/best/*.json``, written by the tuning sweeper, see docs/tuning.md)
and, per model × data set × form, reports each objective's front value on the **test** split: the
best mean PrefOdds reachable while mean UtilOdds stays within δ of its value at m = 0 (the swept
points, ``steer.analysis.front``), with a 95 % bootstrap interval over test examples, and the
paired differences SPLIT − SFT, SPLIT − RePS and (vector form) SPLIT − DiffMean from one paired
bootstrap over the same test examples (``steer.analysis.paired``), each with a verdict: better,
worse, or not distinguishable at 95 %. Tuning chose every run on the validation split; test is
read here for the first time.

Data sets whose test answers are all "Yes"/"No" (Psychopathy) also get accuracy at the chosen m
(share of test pairs with PrefOdds > 0) and the balanced accuracy over Yes-positive and No-positive
pairs: a direction that only shifts the model's Yes/No prior scores the label balance in accuracy
and 0.5 in balanced accuracy, and the report says so.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from steer import rundir
from steer.analysis.bootstrap import LEVEL, Interval, percentile_interval
from steer.analysis.front import best_within
from steer.analysis.paired import difference_interval, paired_replicates, verdict
from steer.analysis.plots import save_figure
from steer.report.front import FORM_COLORS, OBJECTIVE_STYLES
from steer.report.runs import FORM_LABELS, NAMES, OBJECTIVE_LABELS, REPORTS, NoRuns, rank, slug
from steer.report.tables import Cell, markdown_table, write_table
from steer.report.yesno import yes_no_accuracy, yes_no_classes

# The method under test and what it is compared with, per form (DiffMean exists in vector form only).
CHALLENGER = "split"
BASELINES = ("sft", "reps", "diffmean")


@dataclass
class Tuned:
    """One study's best trial: what it is, how it was chosen, and its test sweep as matrices."""

    model: str
    dataset: str
    form: str
    objective: str
    layer: int
    run_dir: Path
    trials: int
    distinct: int | None  # parameter sets among the finished trials (None: not recorded)
    validation: float
    params: dict
    ids: np.ndarray
    m: np.ndarray
    pref: np.ndarray  # [test examples, m]
    util: np.ndarray
    positives: dict = field(default_factory=dict)  # example id -> A_p

    @property
    def label(self) -> str:
        return f"{FORM_LABELS.get(self.form, self.form)} {OBJECTIVE_LABELS.get(self.objective, self.objective)}"


def split_matrix(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """Test rows of a sweep as [example × m] (rows sorted by example id)."""
    rows = frame[frame["split"] == "test"]
    if rows.empty:
        raise ValueError("the sweep has no test rows")
    return rows.pivot_table(index="example_id", columns="m", values=column, aggfunc="mean").sort_index()


def load_tuned(path: Path) -> Tuned:
    """The best trial a ``best/<study>.json`` names, with its test sweep."""
    best = json.loads(path.read_text())
    run_dir = Path(best["run_dir"])
    config = rundir.read_config(run_dir)
    frame = rundir.read_sweep(run_dir)
    pref, util = split_matrix(frame, "pref_odds"), split_matrix(frame, "util_odds")
    positives = {r.example_id: r.positive for r in rundir.read_pairs(run_dir, "test")}
    return Tuned(
        model=str(config["model"]["name"]),
        dataset=str(config["dataset"]["name"]),
        form=str(config["intervention"]["form"]),
        objective=str(config["objective"]["name"]),
        layer=int(config["layer"]),
        run_dir=run_dir,
        trials=int(best["trials_complete"]),
        distinct=best.get("distinct_complete"),
        validation=float(best["value"]),
        params=dict(best["params"]),
        ids=pref.index.to_numpy(),
        m=pref.columns.to_numpy(dtype=np.float64),
        pref=pref.to_numpy(dtype=np.float64),
        util=util.to_numpy(dtype=np.float64),
        positives=positives,
    )


def value(t: Tuned, rows: np.ndarray, delta: float):
    """The swept front value of ``t`` on the test examples ``rows`` (indices, repeats allowed)."""
    return best_within(t.m, t.pref[rows].mean(axis=0), t.util[rows].mean(axis=0), delta)


def accuracies(t: Tuned, m: float) -> dict | None:
    """Accuracy (PrefOdds > 0) at ``m``, per-class accuracy and balanced accuracy, for Yes/No sets."""
    classes = yes_no_classes([t.positives.get(i, "") for i in t.ids])
    if classes is None:
        return None
    return yes_no_accuracy(t.pref[:, int(np.flatnonzero(t.m == m)[0])], classes)


@dataclass(frozen=True)
class Comparison:
    """One model × data set: the tuned runs, their test values with intervals, and the paired differences."""

    model: str
    dataset: str
    runs: list[Tuned]
    values: dict[str, float]
    ms: dict[str, float]
    intervals: dict[str, Interval | None]
    differences: list[dict]
    accuracy: dict[str, dict | None]
    vanilla: dict | None
    n_examples: int


def compare_group(runs: list[Tuned], delta: float, bootstrap: int, seed: int) -> Comparison:
    """Align the runs on their shared test examples, take each run's value, and bootstrap them paired."""
    shared = sorted(set.intersection(*(set(t.ids) for t in runs)))
    if not shared:
        raise ValueError(f"{runs[0].model} · {runs[0].dataset}: the tuned runs share no test example")
    for t in runs:
        keep = np.searchsorted(t.ids, shared)
        t.ids, t.pref, t.util = t.ids[keep], t.pref[keep], t.util[keep]
    key = {id(t): f"{t.form}/{t.objective}" for t in runs}
    everything = np.arange(len(shared))
    bests = {key[id(t)]: value(t, everything, delta) for t in runs}
    samples = paired_replicates(
        len(shared), lambda rows: {key[id(t)]: value(t, rows, delta).pref for t in runs}, bootstrap, seed
    )
    intervals = {k: percentile_interval(v) for k, v in samples.items()}
    differences = []
    for form in dict.fromkeys(t.form for t in runs):
        challenger = f"{form}/{CHALLENGER}"
        if challenger not in samples:
            continue
        for base in BASELINES:
            other = f"{form}/{base}"
            if other not in samples:
                continue
            interval = difference_interval(samples[challenger], samples[other])
            differences.append(
                {
                    "form": form,
                    "comparison": f"{OBJECTIVE_LABELS[CHALLENGER]} − {OBJECTIVE_LABELS.get(base, base)}",
                    "difference": bests[challenger].pref - bests[other].pref,
                    "lo": None if interval is None else interval.lo,
                    "hi": None if interval is None else interval.hi,
                    "verdict": verdict(interval),
                }
            )
    accuracy = {key[id(t)]: accuracies(t, bests[key[id(t)]].m) for t in runs}
    return Comparison(
        model=runs[0].model,
        dataset=runs[0].dataset,
        runs=runs,
        values={k: b.pref for k, b in bests.items()},
        ms={k: b.m for k, b in bests.items()},
        intervals=intervals,
        differences=differences,
        accuracy=accuracy,
        vanilla=accuracies(runs[0], 0.0),
        n_examples=len(shared),
    )


def value_frame(groups: Sequence[Comparison]) -> pd.DataFrame:
    """A row per tuned run: how it was chosen, its test value with interval, the m, accuracies."""
    records = []
    for g in groups:
        for t in g.runs:
            k = f"{t.form}/{t.objective}"
            acc = g.accuracy[k] or {}
            record = {"model": g.model, "dataset": g.dataset, "form": t.form, "objective": t.objective}
            record.update(layer=t.layer, trials=t.trials, distinct=t.distinct, validation=Cell(t.validation, digits=2))
            record.update(test=Cell(g.values[k], interval=g.intervals[k], digits=2), m=g.ms[k], n_test=g.n_examples)
            if any(g.accuracy.values()):
                balanced = acc.get("balanced_accuracy")
                record["accuracy"] = Cell(acc["accuracy"], digits=3) if acc else None
                record["balanced_accuracy"] = Cell(balanced, digits=3) if balanced is not None else None
                record["yes_no_shift"] = "yes" if acc.get("yes_no_shift") else ""
            record.update(params=json.dumps(t.params), run=str(t.run_dir))
            records.append(record)
    return pd.DataFrame.from_records(records)


def difference_frame(groups: Sequence[Comparison]) -> pd.DataFrame:
    """A row per paired difference SPLIT − baseline: the difference with its interval and the verdict."""
    records = []
    for g in groups:
        for d in g.differences:
            interval = None if d["lo"] is None else Interval(d["lo"], d["hi"], 0)
            records.append(
                {"model": g.model, "dataset": g.dataset, "form": d["form"], "comparison": d["comparison"]}
                | {"difference": Cell(d["difference"], interval=interval, digits=2), "verdict": d["verdict"]}
            )
    return pd.DataFrame.from_records(
        records, columns=["model", "dataset", "form", "comparison", "difference", "verdict"]
    )


def notes(groups: Sequence[Comparison]) -> list[str]:
    """Vanilla accuracy per Yes/No data set and the runs that only shift the Yes/No prior."""
    lines = []
    for g in groups:
        if g.vanilla:
            lines.append(
                f"- {g.model} · {g.dataset}: Vanilla (m = 0) accuracy {g.vanilla['accuracy']:.3f}, balanced "
                f"{g.vanilla['balanced_accuracy'] or float('nan'):.3f} ({g.vanilla['n_yes_positive']} Yes-positive, "
                f"{g.vanilla['n_no_positive']} No-positive test pairs)."
            )
        for t in g.runs:
            acc = g.accuracy[f"{t.form}/{t.objective}"]
            if acc and acc["yes_no_shift"]:
                lines.append(
                    f"- {g.model} · {g.dataset} · {t.label}: balanced accuracy 0.5 with one class all right and the "
                    "other all wrong: a global Yes/No shift, not the statements."
                )
    return ["", "## Notes", "", *lines] if lines else []


def fronts_figure(path: Path, g: Comparison, delta: float) -> Path:
    """Mean test PrefOdds against UtilOdds of every tuned run of one model × data set, its best point circled."""
    fig = Figure(figsize=(7.5, 5.5))
    ax = fig.subplots()
    for t in g.runs:
        k = f"{t.form}/{t.objective}"
        dash, marker = OBJECTIVE_STYLES.get(t.objective, ("-", "."))
        color = FORM_COLORS.get(t.form, "C7")
        util, pref = t.util.mean(axis=0), t.pref.mean(axis=0)
        ax.plot(util, pref, dash, marker=marker, color=color, ms=4, lw=1.2, label=t.label)
        best = int(np.flatnonzero(t.m == g.ms[k])[0])
        ax.plot(util[best], pref[best], "o", mfc="none", mec=color, ms=12)
        zero = int(np.flatnonzero(t.m == 0.0)[0])
        ax.plot(util[zero], pref[zero], "k*", ms=8)
    ax.set_xlabel("mean UtilOdds (test)")
    ax.set_ylabel("mean PrefOdds (test)")
    ax.set_title(f"{g.model} · {g.dataset}: tuned fronts, δ = {delta:g}\n○ best within δ · ★ m = 0", fontsize=9)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return save_figure(fig, path)


# Column headers of both tables (the shared ones from the report package).
COLUMN_NAMES = NAMES | {
    "n_test": "Test pairs",
    "test": f"Test value [{LEVEL:.0%}]",
    "validation": "Validation",
    "trials": "Trials",
    "distinct": "Distinct",
    "accuracy": "Acc",
    "balanced_accuracy": "Bal. acc",
    "yes_no_shift": "Yes/No shift",
    "comparison": "Paired difference",
    "difference": f"Δ test value [{LEVEL:.0%}]",
    "verdict": "Verdict",
}


def build_compare(outputs: Path, delta: float = 1.0, bootstrap: int = 1000, seed: int = 0) -> list[Path]:
    """The comparison report of the studies under ``outputs`` (``<outputs>/tune/best/*.json``)."""
    if delta < 0 or bootstrap < 1:
        raise ValueError(f"--delta must be >= 0 and --bootstrap >= 1, got {delta}, {bootstrap}")
    found = sorted((outputs / "tune" / "best").glob("*.json"))
    if not found:
        raise NoRuns(
            f"no tuned studies under {outputs / 'tune' / 'best'}: run `make tune` (or python run.py -m "
            "experiment=tune_<form>_<objective> ...) first"
        )
    runs = [load_tuned(p) for p in found]
    runs.sort(
        key=lambda t: (t.model, t.dataset, rank(list(FORM_LABELS), t.form), rank(list(OBJECTIVE_LABELS), t.objective))
    )
    cells = dict.fromkeys((t.model, t.dataset) for t in runs)
    groups = [compare_group([t for t in runs if (t.model, t.dataset) == c], delta, bootstrap, seed) for c in cells]
    out = outputs / REPORTS
    figures = [fronts_figure(out / f"compare-{slug(g.model)}-{slug(g.dataset)}.png", g, delta) for g in groups]
    caption = (
        f"Each objective at its tuned best (Optuna, chosen on the validation split). Test value = best mean PrefOdds "
        f"reachable while mean UtilOdds stays within δ = {delta:g} of its value at m = 0 (swept points), "
        f"[lo, hi] = {LEVEL:.0%} percentile interval of {bootstrap} bootstrap replicates over test examples "
        f"(seed {seed}); the paired differences come from the same draws. Verdict at {LEVEL:.0%}: better, worse "
        "or not distinguishable. Acc = share of test pairs with PrefOdds > 0 at the chosen m; Bal. acc = its mean "
        "over Yes-positive and No-positive pairs (Yes/No data sets only; 0.5 with one class all right and the "
        "other all wrong = a global Yes/No shift)."
    )
    differences = difference_frame(groups)
    appendix = ["", "## Paired differences", "", markdown_table(differences, COLUMN_NAMES), *notes(groups), ""]
    appendix += [f"![{p.stem}]({p.name})" for p in figures]
    written = write_table(
        out,
        "compare",
        value_frame(groups),
        title="Tuned comparison (test split)",
        caption=caption,
        names=COLUMN_NAMES,
        detail=["params", "run"],
        appendix=appendix,
    )
    written += write_table(
        out,
        "compare-differences",
        differences,
        title="Tuned comparison: SPLIT against each baseline (test split, paired)",
        caption=caption,
        names=COLUMN_NAMES,
    )
    return [*written, *figures]
