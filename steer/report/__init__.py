"""The paper's R² tables (2, 5, 6) and dynamics figures (2, 4, 5) from finished runs.

    python -m steer.report table2|table3|table5|table6|fig2|fig4|fig5 [--outputs DIR] [--dataset NAME ...]
    python -m steer.report table2|table3|table5|table6|front [--bootstrap N --seed S] [--deltas 1,2,5]

``table3`` is the judged results (``steer.report.table3``); ``front`` the preference-utility front
(``steer.report.front``); ``--bootstrap N`` adds 95 % intervals over examples (``steer.analysis.bootstrap``) to the
R² tables, the front and the judged metrics of table3.

A finished run is a directory under DIR (default ``outputs/``) holding ``fit.json`` (written last
by the fit stage) and ``config.yaml``. Everything is written under ``DIR/reports/``.

Tables: rows are model (and layer) × intervention form × objective; columns are data set families
for preference, then utility, then their average. The family is the data set's name
(``dataset.name``) with an AxBench concept suffix ``-c<N>`` dropped: the paper's own data get the
paper's abbreviations (psychopathy → Psy, powerseeking → Pwr, axbench-c<N> → Axb), any other data
set its own column under its name (sentiment, persona-narcissism, axbench-prod_2b_l20_v1, ...).
Several runs of one family (AxBench: one run per concept) are averaged and the cell says how many;
a cell without runs is missing ("—" / empty), never zero; Avg is shown only when every family
column of the row has a value. Only families with at least one finished run get a column.
- table2: R² of the fit on the train split; table5: on the test split; table6: the train fit
  scored on the test split (may be negative).
- table3: the judged results (accuracy, PowerSeeking score, AxBench concept and HM) from the judge
  stage's metrics.json (``steer.report.table3``).

Figures: one per model (and layer) and data set; panels are intervention forms in rows (vector on
top, then lora, local_weight) × objectives in columns, each with the mean PrefOdds (solid) and
UtilOdds (dashed) over the examples of one split (train by default), a ± 1 s.d. band, and the
validity-decay fits of those mean curves: a panel of one run draws the fits its fit stage stored
in ``fit.json`` (the fits the tables score); runs of one family are pooled and the pooled curves
fitted with the library defaults. fig2, fig4 and fig5 default to the paper's data sets (psychopathy,
powerseeking, axbench); ``--dataset`` names others (a family or a ``dataset.name``).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from steer import rundir
from steer.analysis.bootstrap import Interval, fmt_interval, percentile_interval, r2_statistic, replicate
from steer.analysis.fit import COLUMNS, PARAMS, SPLITS, FitError, fit_curve, fit_from_json, mean_curve
from steer.analysis.plots import Panel, save_dynamics_figure
from steer.io.atomic import atomic_write_text

REPORTS = "reports"

TABLES = {
    "table2": ("train", "R² of the validity-decay fit on the train split"),
    "table5": ("test", "R² of the validity-decay fit on the test split"),
    "table6": ("transfer", "R² of the train-split fit scored on the test split"),
}
FIGURES = {"fig2": "psychopathy", "fig4": "powerseeking", "fig5": "axbench"}
# The paper's data sets, by family (dataset.name less an AxBench concept suffix), and their columns.
FAMILIES = {"psychopathy": "Psy", "powerseeking": "Pwr", "axbench": "Axb"}
CONCEPT_SUFFIX = re.compile(r"-c\d+$")
# Display names and order of the paper's forms and objectives; any other registered form or
# objective appears under its own name, after these (steer.core.forms / steer.objectives need torch).
FORM_LABELS = {"local_weight": "LocalWeight", "lora": "LoRA", "vector": "Vector"}
FIGURE_FORMS = ("vector", "lora", "local_weight")
OBJECTIVE_LABELS = {"diffmean": "DiffMean", "sft": "SFT", "reps": "RePS", "split": "SPLIT"}
KINDS = {"pref": "Pref", "util": "Util"}
MISSING = "—"


class NoRuns(Exception):
    """Nothing to report; the message says where we looked and what to run."""


@dataclass(frozen=True)
class Run:
    """A finished run: where it is, what it is (from ``config.yaml``), and its ``fit.json``."""

    path: Path
    model: str
    layer: int
    form: str
    objective: str
    dataset: str
    loader: str
    fit: dict

    @property
    def family_key(self) -> str:
        """The data set with AxBench's concepts pooled: ``axbench-c3`` → ``axbench``."""
        return CONCEPT_SUFFIX.sub("", self.dataset) if self.loader == "axbench" else self.dataset

    @property
    def family(self) -> str:
        return family_label(self.family_key)

    def r2(self, kind: str, which: str) -> float | None:
        return self.fit[kind][which]["r2"]


def family_label(family_key: str) -> str:
    """The table column of a data set family: the paper's abbreviation for the paper's data, else its name."""
    return FAMILIES.get(family_key, family_key)


def _rank(order: Sequence[str], value: str) -> tuple[int, str]:
    return (order.index(value) if value in order else len(order), value)


def find_runs(outputs: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Finished runs under ``outputs``, and the directories not used with the reason."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    if not outputs.is_dir():
        return runs, skipped
    reports = outputs / REPORTS
    for fit_path in sorted(outputs.rglob(rundir.FIT)):
        run_dir = fit_path.parent
        if reports in run_dir.parents or run_dir == reports:
            continue
        try:
            runs.append(_read_run(run_dir))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
            skipped.append((run_dir, str(err)))
    for sweep_path in sorted(outputs.rglob(rundir.SWEEP)):
        if not (sweep_path.parent / rundir.FIT).exists():
            skipped.append((sweep_path.parent, "not finished: sweep.parquet without fit.json"))
    return runs, skipped


def _read_run(run_dir: Path) -> Run:
    config_path = run_dir / rundir.CONFIG
    config = rundir.read_config(run_dir)
    fit = rundir.read_fit(run_dir)

    def get(key: str):
        value = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"{config_path} has no {key}")
            value = value[part]
        return value

    for kind in COLUMNS:
        for which in (*SPLITS, "transfer"):
            if "r2" not in fit.get(kind, {}).get(which, {}):
                raise KeyError(f"{run_dir / rundir.FIT} has no {kind}.{which}.r2")
        for which in SPLITS:
            if set(fit[kind][which].get("params", {})) != set(PARAMS[kind]):
                raise KeyError(f"{run_dir / rundir.FIT}: {kind}.{which}.params must name {', '.join(PARAMS[kind])}")
    return Run(
        path=run_dir,
        model=str(get("model.name")),
        layer=int(get("layer")),
        form=str(get("intervention.form")),
        objective=str(get("objective.name")),
        dataset=str(get("dataset.name")),
        loader=str(get("dataset.loader")),
        fit=fit,
    )


# ---------------------------------------------------------------- tables


@dataclass(frozen=True)
class Cell:
    """A table cell: the mean R² over ``n`` runs (None when no run has a value)."""

    value: float | None
    n: int
    interval: Interval | None = None  # bootstrap interval over examples (--bootstrap N)


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
    family_keys = sorted({r.family_key for r in runs}, key=lambda x: _rank(list(FAMILIES), x))
    families = [family_label(x) for x in family_keys]
    keys = sorted(
        {(r.model, r.layer, r.form, r.objective) for r in runs},
        key=lambda k: (k[0], k[1], _rank(list(FORM_LABELS), k[2]), _rank(list(OBJECTIVE_LABELS), k[3])),
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


def _fmt(cell: Cell, count: bool) -> str:
    if cell.value is None:
        return MISSING
    text = fmt_interval(cell.value, cell.interval)
    return f"{text} (n={cell.n})" if count and cell.n > 1 else text


def markdown_head(head: Sequence[str], n_labels: int) -> list[str]:
    """A Markdown table's header row and rule: ``n_labels`` left-aligned label columns, then numbers."""
    return ["| " + " | ".join(head) + " |", "|" + "---|" * n_labels + "---:|" * (len(head) - n_labels)]


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
        cells = [_fmt(row.cells[c], count=c[1] != "Avg") for c in table.columns]
        lines.append("| " + " | ".join(_row_labels(row) + cells) + " |")
    lines += ["", f"## Runs used ({len(table.runs)})", ""]
    lines.append(f"| Run | Data set | Family | R² pref ({table.which}) | R² util ({table.which}) |")
    lines.append("|---|---|---|---:|---:|")
    for run in sorted(table.runs, key=lambda r: str(r.path)):
        pref, util = (run.r2(k, table.which) for k in KINDS)
        show = lambda v: MISSING if v is None else f"{v:.4f}"  # noqa: E731
        lines.append(f"| {_rel(run.path, outputs)} | {run.dataset} | {run.family} | {show(pref)} | {show(util)} |")
    lines += _skipped_lines(skipped, outputs)
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
        lines.append(" & ".join(_latex_escape(x) for x in _row_labels(row)) + " & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    return re.sub(r"([&%$#_{}])", r"\\\1", text)


def build_table(name: str, outputs: Path, bootstrap: int = 0, seed: int = 0) -> list[Path]:
    """Table ``name`` from the runs under ``outputs``; ``bootstrap`` > 0 adds 95 % intervals from
    that many bootstrap replicates over examples per run (``steer.analysis.bootstrap``), timed in the Markdown."""
    runs, skipped = find_runs(outputs)
    if not runs:
        raise NoRuns(_no_runs_message(outputs, skipped))
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


# ---------------------------------------------------------------- figures


def _matches(run: Run, dataset: str) -> bool:
    key = dataset.lower()
    return key in (run.family_key.lower(), run.dataset.lower(), run.family.lower())


def pooled_curves(runs: Sequence[Run], split: str) -> dict[str, pd.DataFrame]:
    """Mean and s.d. over the examples of ``split`` of all ``runs`` together, per curve kind."""
    frame = pd.concat([rundir.read_sweep(r.path) for r in runs], ignore_index=True)
    return {kind: mean_curve(frame, split, column) for kind, column in COLUMNS.items()}


def figure_panel(runs: Sequence[Run], split: str) -> Panel:
    """One run's curves with the fits its fit stage made (those of the tables); several runs'
    pooled curves with fits of their own."""
    curves = pooled_curves(runs, split)
    fits, notes = {}, []
    for kind, curve in curves.items():
        if len(runs) == 1:
            fits[kind] = fit_from_json(kind, runs[0].fit[kind][split])
            continue
        try:
            fits[kind] = fit_curve(kind, curve["m"], curve["mean"])
        except FitError as err:
            fits[kind] = None
            notes.append(f"no {kind} fit: {err}")
    run = runs[0]
    title = f"{FORM_LABELS.get(run.form, run.form)} · {OBJECTIVE_LABELS.get(run.objective, run.objective)}"
    if len(runs) > 1:
        title += f" ({len(runs)} runs)"
    return Panel(title=title, curves=curves, fits=fits, note="\n".join(notes))


def build_figure(name: str, outputs: Path, datasets: Sequence[str] | None = None, split: str = "train") -> list[Path]:
    found, skipped = find_runs(outputs)
    runs = [r for r in found if (r.path / rundir.SWEEP).is_file()]
    skipped += [(r.path, f"{rundir.SWEEP} is missing") for r in found if r not in runs]
    if not runs:
        raise NoRuns(_no_runs_message(outputs, skipped))
    targets = list(datasets) if datasets else [FIGURES[name]]
    missing = [d for d in targets if not any(_matches(r, d) for r in runs)]
    if missing:
        present = sorted({r.family_key for r in runs} | {r.dataset for r in runs})
        raise NoRuns(
            f"{name}: no finished runs of data set {', '.join(missing)} under {outputs} "
            f"(present: {', '.join(present)}); choose one with --dataset NAME"
        )
    out = outputs / REPORTS
    written, records, used = [], [], []
    for dataset in targets:
        mine = [r for r in runs if _matches(r, dataset)]
        for model, layer in sorted({(r.model, r.layer) for r in mine}):
            group = [r for r in mine if (r.model, r.layer) == (model, layer)]
            used += group
            forms = sorted({r.form for r in group}, key=lambda f: _rank(FIGURE_FORMS, f))
            objectives = sorted({r.objective for r in group}, key=lambda o: _rank(list(OBJECTIVE_LABELS), o))
            grid = []
            for form in forms:
                row = []
                for objective in objectives:
                    cell = [r for r in group if (r.form, r.objective) == (form, objective)]
                    panel = figure_panel(cell, split) if cell else None
                    row.append(panel)
                    if panel is not None:
                        records += _panel_records(panel, model, layer, dataset, form, objective, split, len(cell))
                grid.append(row)
            title = f"{model} (layer {layer}) · {dataset} · mean over {split} examples"
            path = out / f"{name}-{_slug(model)}-L{layer}-{_slug(dataset)}.png"
            written.append(save_dynamics_figure(path, grid, title))
    atomic_write_text(out / f"{name}.csv", pd.DataFrame.from_records(records).to_csv(index=False))
    atomic_write_text(out / f"{name}.md", _figure_markdown(name, written, used, outputs, skipped, split))
    return [*written, out / f"{name}.md", out / f"{name}.csv"]


def _panel_records(panel: Panel, model, layer, dataset, form, objective, split, n_runs) -> list[dict]:
    records = []
    pref, util = panel.curves["pref"], panel.curves["util"]
    for i, m in enumerate(pref["m"]):
        record = {"model": model, "layer": layer, "dataset": dataset, "form": form, "objective": objective}
        record.update(split=split, runs=n_runs, m=m, n_examples=int(pref["n"][i]))
        for kind, curve in (("pref", pref), ("util", util)):
            fit = panel.fits[kind]
            record[f"{kind}_mean"] = curve["mean"][i]
            record[f"{kind}_std"] = curve["std"][i]
            record[f"{kind}_fit"] = float(fit.predict([m])[0]) if fit is not None else None
            record[f"{kind}_r2"] = fit.r2 if fit is not None else None
        records.append(record)
    return records


def _figure_markdown(name, figures, runs, outputs, skipped, split) -> str:
    lines = [
        f"# Figure {name.removeprefix('fig')}: preference and utility dynamics",
        "",
        f"Mean PrefOdds (solid) and UtilOdds (dashed) over the {split} examples against the multiplier m, "
        "a band of ± 1 s.d. over examples, and the validity-decay fits (black) with their R². Panels: "
        "intervention forms in rows (vector on top, then lora, local_weight), objectives in columns; runs of "
        f"one data set family are pooled. The plotted numbers are in `{name}.csv`.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += ["", f"## Runs used ({len(runs)})", ""]
    lines += [f"- {_rel(r.path, outputs)}" for r in sorted(runs, key=lambda r: str(r.path))]
    lines += _skipped_lines(skipped, outputs)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- shared


def _rel(path: Path, outputs: Path) -> str:
    try:
        return str(path.relative_to(outputs))
    except ValueError:
        return str(path)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def _skipped_lines(skipped: Sequence[tuple[Path, str]], outputs: Path) -> list[str]:
    if not skipped:
        return []
    lines = ["", f"## Not used ({len(skipped)})", ""]
    return lines + [f"- {_rel(path, outputs)}: {reason}" for path, reason in skipped]


def _no_runs_message(outputs: Path, skipped: Sequence[tuple[Path, str]]) -> str:
    text = (
        f"no finished runs under {outputs} (a finished run directory has fit.json and config.yaml). "
        "Run the pipeline with the fit stage first, e.g. `python run.py stages=[train,sweep,fit]`, "
        "or `make table2`."
    )
    if skipped:
        text += " Directories not used: " + "; ".join(f"{_rel(p, outputs)} ({why})" for p, why in skipped)
    return text


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m steer.report", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "target",
        choices=[*TABLES, "table3", *FIGURES, "front", "compare"],
        help="a paper table or figure, the preference-utility front, or the tuned comparison (docs/tuning.md)",
    )
    parser.add_argument("--outputs", type=Path, default=Path("outputs"), help="where the run directories are")
    parser.add_argument(
        "--dataset",
        action="append",
        help="figures: a data set family or dataset.name to draw; repeatable; default the paper's",
    )
    parser.add_argument("--split", choices=SPLITS, default="train", help="figures: which split's curves to draw")
    parser.add_argument(
        "--bootstrap", type=int, default=0, metavar="N", help="tables (3 too), front: N bootstrap replicates (0 = off)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap replicates")
    parser.add_argument("--deltas", default=None, help="front: utility budgets δ, comma-separated (default 1,2,5)")
    parser.add_argument("--delta", type=float, default=1.0, help="compare: the utility budget δ (tuning's tune.delta)")
    args = parser.parse_args(argv)
    if args.bootstrap < 0:
        parser.error(f"--bootstrap must be >= 0, got {args.bootstrap}")
    if args.target in FIGURES and args.bootstrap:
        parser.error("--bootstrap applies to the tables and the front, not to figures")
    try:
        if args.target == "table3":
            from steer.report.table3 import build_table3

            paths = build_table3(args.outputs, args.bootstrap, args.seed)
            print(paths[0].read_text())
        elif args.target in TABLES:
            if args.dataset:
                parser.error("--dataset applies to figures only: tables cover every data set found")
            paths = build_table(args.target, args.outputs, args.bootstrap, args.seed)
            print(paths[0].read_text())
        elif args.target == "compare":
            from steer.report.compare import build_compare

            paths = build_compare(args.outputs, args.delta, args.bootstrap or 1000, args.seed)
            print(paths[0].read_text())
        elif args.target == "front":
            from steer.report.front import DELTAS, build_front, parse_deltas

            deltas = parse_deltas(args.deltas) if args.deltas else list(DELTAS)
            paths, _ = build_front(args.outputs, deltas, args.bootstrap, args.seed)
            print(paths[0].read_text())
        else:
            paths = build_figure(args.target, args.outputs, args.dataset, args.split)
    except NoRuns as err:
        print(f"steer.report: {err}", file=sys.stderr)
        return 1
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
