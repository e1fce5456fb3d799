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
from steer.analysis.bootstrap import LEVEL, Interval, fmt_interval, percentile_interval
from steer.analysis.front import best_within
from steer.analysis.paired import difference_interval, paired_replicates, verdict
from steer.io.atomic import atomic_path, atomic_write_text
from steer.report import FORM_LABELS, OBJECTIVE_LABELS, REPORTS, NoRuns, _latex_escape, _rank, _slug, markdown_head
from steer.report.front import FORM_COLORS, OBJECTIVE_STYLES

# The method under test and what it is compared with, per form (DiffMean exists in vector form only).
CHALLENGER = "split"
BASELINES = ("sft", "reps", "diffmean")
YES_NO = ("yes", "no")


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


def test_matrix(frame: pd.DataFrame, column: str) -> pd.DataFrame:
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
    pref, util = test_matrix(frame, "pref_odds"), test_matrix(frame, "util_odds")
    positives = {r.example_id: r.positive for r in rundir.read_pairs(run_dir, "test")}
    return Tuned(
        model=str(config["model"]["name"]),
        dataset=str(config["dataset"]["name"]),
        form=str(config["intervention"]["form"]),
        objective=str(config["objective"]["name"]),
        layer=int(config["layer"]),
        run_dir=run_dir,
        trials=int(best["trials_complete"]),
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


def yes_no_classes(t: Tuned) -> np.ndarray | None:
    """Per test example, its positive answer lower-cased ("yes"/"no"), or None unless all are Yes/No."""
    answers = np.array([t.positives.get(i, "").strip().lower() for i in t.ids])
    return answers if np.isin(answers, YES_NO).all() else None


def accuracies(t: Tuned, m: float) -> dict | None:
    """Accuracy (PrefOdds > 0) at ``m``, per-class accuracy and balanced accuracy, for Yes/No sets."""
    classes = yes_no_classes(t)
    if classes is None:
        return None
    correct = t.pref[:, int(np.flatnonzero(t.m == m)[0])] > 0
    out = {"accuracy": float(correct.mean())}
    per_class = {c: float(correct[classes == c].mean()) for c in YES_NO if (classes == c).any()}
    out.update({f"acc_{c}_positive": v for c, v in per_class.items()})
    out["n_yes_positive"], out["n_no_positive"] = int((classes == "yes").sum()), int((classes == "no").sum())
    out["balanced_accuracy"] = float(np.mean(list(per_class.values()))) if len(per_class) == 2 else None
    out["yes_no_shift"] = len(per_class) == 2 and sorted(per_class.values()) == [0.0, 1.0]
    return out


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


def value_records(groups: Sequence[Comparison]) -> pd.DataFrame:
    records = []
    for g in groups:
        for t in g.runs:
            k = f"{t.form}/{t.objective}"
            interval = g.intervals[k]
            record = {"model": g.model, "dataset": g.dataset, "form": t.form, "objective": t.objective}
            record.update(layer=t.layer, trials=t.trials, validation_value=t.validation, test_value=g.values[k])
            record.update(test_lo=interval.lo if interval else None, test_hi=interval.hi if interval else None)
            record.update(m=g.ms[k], n_test=g.n_examples, run=str(t.run_dir), params=json.dumps(t.params))
            record.update(g.accuracy[k] or {})
            records.append(record)
    return pd.DataFrame.from_records(records)


def difference_records(groups: Sequence[Comparison]) -> pd.DataFrame:
    return pd.DataFrame.from_records(
        [{"model": g.model, "dataset": g.dataset, **d} for g in groups for d in g.differences]
    )


def _acc_cell(acc: dict | None) -> str:
    if acc is None:
        return ""
    balanced = acc["balanced_accuracy"]
    text = f"{acc['accuracy']:.3f} / " + ("n/a (one class)" if balanced is None else f"{balanced:.3f}")
    return text + (" (Yes/No shift)" if acc["yes_no_shift"] else "")


def compare_markdown(groups: Sequence[Comparison], delta: float, bootstrap: int, seed: int, figures) -> str:
    lines = [
        "# Tuned comparison (test split)",
        "",
        f"Each objective at its tuned best (Optuna study, chosen on the validation split). Test value = best mean "
        f"PrefOdds reachable while mean UtilOdds stays within δ = {delta:g} of its value at m = 0 (swept points), "
        f"[lo, hi] = {LEVEL:.0%} percentile interval of {bootstrap} bootstrap replicates over test examples "
        f"(seed {seed}); differences from the same paired draws. Verdict at {LEVEL:.0%}: better / worse / not "
        "distinguishable. Acc / bal. acc (Yes/No data sets): share of test pairs with PrefOdds > 0 at the chosen "
        "m, and its mean over Yes-positive and No-positive pairs (0.5 with one class all right and the other all "
        "wrong = a global Yes/No shift, not the statements).",
        "",
    ]
    for g in groups:
        lines += [f"## {g.model} · {g.dataset} ({g.n_examples} test pairs)", ""]
        if g.vanilla:
            lines += [f"Vanilla (m = 0): acc / bal. acc {_acc_cell(g.vanilla)}.", ""]
        head = ["Form", "Objective", "Trials", "Validation", "Test value [95 %]", "m", "Acc / bal. acc"]
        lines += markdown_head(head, 2)
        for t in g.runs:
            k = f"{t.form}/{t.objective}"
            cells = [FORM_LABELS.get(t.form, t.form), OBJECTIVE_LABELS.get(t.objective, t.objective), str(t.trials)]
            cells += [f"{t.validation:.2f}", fmt_interval(g.values[k], g.intervals[k], 2), f"{g.ms[k]:g}"]
            cells.append(_acc_cell(g.accuracy[k]))
            lines.append("| " + " | ".join(cells) + " |")
        if g.differences:
            lines += ["", *markdown_head(["Form", "Paired difference", "Δ test value [95 %]", "Verdict"], 2)]
            for d in g.differences:
                interval = None if d["lo"] is None else Interval(d["lo"], d["hi"], bootstrap)
                cells = [FORM_LABELS.get(d["form"], d["form"]), d["comparison"]]
                cells += [fmt_interval(d["difference"], interval, 2), f"**{d['verdict']}**"]
                lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    return "\n".join(lines) + "\n"


def compare_latex(groups: Sequence[Comparison]) -> str:
    lines = [
        "% Tuned comparison: paired differences of the test front value (95 % paired bootstrap).",
        "\\begin{tabular}{lllrl}",
        "\\toprule",
        "Model & Data set & Form / comparison & Difference & Verdict \\\\",
        "\\midrule",
    ]
    for g in groups:
        for d in g.differences:
            interval = None if d["lo"] is None else Interval(d["lo"], d["hi"], 0)
            labels = [g.model, g.dataset, f"{FORM_LABELS.get(d['form'], d['form'])}: {d['comparison']}"]
            cells = [fmt_interval(d["difference"], interval, 2), d["verdict"]]
            lines.append(" & ".join(_latex_escape(x) for x in labels) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    return path


def write_tables(out: Path, stem: str, markdown: str, frames: dict[str, pd.DataFrame], latex: str) -> list[Path]:
    """The report's Markdown, one CSV per frame and the LaTeX table."""
    texts = {out / f"{stem}.md": markdown, out / f"{stem}.tex": latex}
    texts.update({out / f"{stem}{suffix}.csv": frame.to_csv(index=False) for suffix, frame in frames.items()})
    for path, text in texts.items():
        atomic_write_text(path, text)
    return list(texts)


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
        key=lambda t: (t.model, t.dataset, _rank(list(FORM_LABELS), t.form), _rank(list(OBJECTIVE_LABELS), t.objective))
    )
    cells = dict.fromkeys((t.model, t.dataset) for t in runs)
    groups = [compare_group([t for t in runs if (t.model, t.dataset) == c], delta, bootstrap, seed) for c in cells]
    out = outputs / REPORTS
    figures = [fronts_figure(out / f"compare-{_slug(g.model)}-{_slug(g.dataset)}.png", g, delta) for g in groups]
    markdown = compare_markdown(groups, delta, bootstrap, seed, figures)
    frames = {"": value_records(groups), "-differences": difference_records(groups)}
    return [*write_tables(out, "compare", markdown, frames, compare_latex(groups)), *figures]
