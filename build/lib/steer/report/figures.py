"""The paper's dynamics figures (2, 4, 5) from finished runs.

One figure per model (and layer) and data set; panels are intervention forms in rows (vector on
top, then lora, local_weight) × objectives in columns, each with the mean PrefOdds (solid) and
UtilOdds (dashed) over the examples of one split (train by default), a ± 1 s.d. band, and the
validity-decay fits of those mean curves: a panel of one run draws the fits its fit stage stored
in ``fit.json`` (the fits the tables score); runs of one family are pooled and the pooled curves
fitted with the library defaults. A one-run panel also draws, thin, the simpler curve its fit.json's
form test prefers to the paper's form (AICc), and marks a fit with parameters on a bound (†).
fig2, fig4 and fig5 default to the paper's data sets (psychopathy,
powerseeking, axbench); ``datasets`` names others (a family or a ``dataset.name``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from steer import rundir
from steer.analysis.fit import COLUMNS, FitError, fit_curve, fit_from_json, mean_curve
from steer.analysis.forms import fit_alternative
from steer.analysis.plots import Panel, save_dynamics_figure
from steer.io.atomic import atomic_write_text
from steer.report.runs import (
    FORM_LABELS,
    OBJECTIVE_LABELS,
    REPORTS,
    NoRuns,
    Run,
    find_runs,
    no_runs_message,
    rank,
    relative,
    skipped_lines,
    slug,
)

FIGURES = {"fig2": "psychopathy", "fig4": "powerseeking", "fig5": "axbench"}
FIGURE_FORMS = ("vector", "lora", "local_weight")


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
    fits, notes, alternatives = {}, [], {}
    for kind, curve in curves.items():
        if len(runs) == 1:
            entry = runs[0].fit[kind][split]
            fits[kind] = fit_from_json(kind, entry)
            best = (entry.get("form") or {}).get("best")
            if best and best != "paper":
                alternatives[kind] = (best, fit_alternative(best, curve["m"], curve["mean"]))
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
    return Panel(title=title, curves=curves, fits=fits, note="\n".join(notes), alternatives=alternatives)


def build_figure(name: str, outputs: Path, datasets: Sequence[str] | None = None, split: str = "train") -> list[Path]:
    found, skipped = find_runs(outputs)
    runs = [r for r in found if (r.path / rundir.SWEEP).is_file()]
    skipped += [(r.path, f"{rundir.SWEEP} is missing") for r in found if r not in runs]
    if not runs:
        raise NoRuns(no_runs_message(outputs, skipped))
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
            forms = sorted({r.form for r in group}, key=lambda f: rank(FIGURE_FORMS, f))
            objectives = sorted({r.objective for r in group}, key=lambda o: rank(list(OBJECTIVE_LABELS), o))
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
            path = out / f"{name}-{slug(model)}-L{layer}-{slug(dataset)}.png"
            written.append(save_dynamics_figure(path, grid, title))
    atomic_write_text(out / f"{name}.csv", pd.DataFrame.from_records(records).to_csv(index=False))
    atomic_write_text(out / f"{name}.md", _figure_markdown(name, written, used, outputs, skipped, split))
    return [*written, *(p.with_suffix(".pdf") for p in written), out / f"{name}.md", out / f"{name}.csv"]


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
        f"one data set family are pooled. Each figure is also a PDF (vector) of the same name; the plotted numbers "
        f"are in `{name}.csv`.",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in figures]
    lines += ["", f"## Runs used ({len(runs)})", ""]
    lines += [f"- {relative(r.path, outputs)}" for r in sorted(runs, key=lambda r: str(r.path))]
    lines += skipped_lines(skipped, outputs)
    return "\n".join(lines) + "\n"
