"""Finished runs: finding them under an outputs folder, reading what each is, and the names and order
the reports show them in.

A finished run is a directory holding ``fit.json`` (written last by the fit stage) and ``config.yaml``;
a swept run (``find_swept_runs``) one holding ``sweep.parquet``, for what the sweep alone answers.
The family of a run is its data set's name (``dataset.name``) with an AxBench concept suffix ``-c<N>``
dropped: the paper's own data get the paper's abbreviations (psychopathy → Psy, powerseeking → Pwr,
axbench-c<N> → Axb), any other data set keeps its name.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from steer import rundir
from steer.analysis.fit import COLUMNS, PARAMS, SPLITS

REPORTS = "reports"
# The paper's data sets, by family (dataset.name less an AxBench concept suffix), and their columns.
FAMILIES = {"psychopathy": "Psy", "powerseeking": "Pwr", "axbench": "Axb"}
CONCEPT_SUFFIX = re.compile(r"-c\d+$")
# Display names and order of the paper's forms and objectives; any other registered form or
# objective appears under its own name, after these (steer.core.forms / steer.objectives need torch).
FORM_LABELS = {"local_weight": "LocalWeight", "lora": "LoRA", "vector": "Vector"}
OBJECTIVE_LABELS = {"diffmean": "DiffMean", "sft": "SFT", "reps": "RePS", "split": "SPLIT"}
# What the tables show for a run's fields and for the paper's forms and objectives (``steer.report.tables``).
NAMES = {
    "model": "Model",
    "layer": "Layer",
    "form": "Form",
    "objective": "Objective",
    "dataset": "Data set",
    **FORM_LABELS,
    **OBJECTIVE_LABELS,
}


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


def rank(order: Sequence[str], value: str) -> tuple[int, str]:
    """Sort key: the paper's names in the paper's order, then any other by name."""
    return (order.index(value) if value in order else len(order), value)


def find_runs(outputs: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Finished runs under ``outputs``, and the directories not used with the reason."""
    runs, skipped = scan(outputs, rundir.FIT, read_run)
    for sweep_path in sorted(outputs.rglob(rundir.SWEEP)) if outputs.is_dir() else []:
        if not (sweep_path.parent / rundir.FIT).exists():
            skipped.append((sweep_path.parent, "not finished: sweep.parquet without fit.json"))
    return runs, skipped


def find_swept_runs(outputs: Path) -> tuple[list[Run], list[tuple[Path, str]]]:
    """Every swept run under ``outputs``, fitted or not, for a table read from the sweep alone
    (Table 3's Yes/No accuracy at a fixed m); ``fit.json`` is not read (``fit`` is {})."""
    return scan(outputs, rundir.SWEEP, lambda run_dir: read_identity(run_dir, {}))


def scan(outputs: Path, marker: str, read: Callable[[Path], Run]) -> tuple[list[Run], list[tuple[Path, str]]]:
    """``read`` of every directory under ``outputs`` (outside its reports) holding ``marker``, and
    the directories it failed on with the reason."""
    runs: list[Run] = []
    skipped: list[tuple[Path, str]] = []
    reports = outputs / REPORTS
    for path in sorted(outputs.rglob(marker)) if outputs.is_dir() else []:
        run_dir = path.parent
        if reports in run_dir.parents or run_dir == reports:
            continue
        try:
            runs.append(read(run_dir))
        except (OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as err:
            skipped.append((run_dir, str(err)))
    return runs, skipped


def read_run(run_dir: Path) -> Run:
    """The run in ``run_dir``; a missing key or a fit.json without every R² and parameter is an error naming it."""
    run = read_identity(run_dir, {})
    fit = rundir.read_fit(run_dir)
    for kind in COLUMNS:
        for which in (*SPLITS, "transfer"):
            if "r2" not in fit.get(kind, {}).get(which, {}):
                raise KeyError(f"{run_dir / rundir.FIT} has no {kind}.{which}.r2")
        for which in SPLITS:
            if set(fit[kind][which].get("params", {})) != set(PARAMS[kind]):
                raise KeyError(f"{run_dir / rundir.FIT}: {kind}.{which}.params must name {', '.join(PARAMS[kind])}")
    return replace(run, fit=fit)


def read_identity(run_dir: Path, fit: dict) -> Run:
    """What the run in ``run_dir`` is, from its ``config.yaml``, with ``fit`` as its fit; a missing
    key is an error naming it."""
    config_path = run_dir / rundir.CONFIG
    config = rundir.read_config(run_dir)

    def get(key: str):
        value = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise KeyError(f"{config_path} has no {key}")
            value = value[part]
        return value

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


def relative(path: Path, outputs: Path) -> str:
    """``path`` relative to ``outputs`` where it lies under it, as the reports list runs."""
    try:
        return str(path.relative_to(outputs))
    except ValueError:
        return str(path)


def slug(text: str) -> str:
    """``text`` as a piece of a file name."""
    return re.sub(r"[^A-Za-z0-9.]+", "-", text).strip("-")


def skipped_lines(skipped: Sequence[tuple[Path, str]], outputs: Path) -> list[str]:
    """A report's Markdown section listing the directories not used, and why."""
    if not skipped:
        return []
    lines = ["", f"## Not used ({len(skipped)})", ""]
    return lines + [f"- {relative(path, outputs)}: {reason}" for path, reason in skipped]


def no_runs_message(outputs: Path, skipped: Sequence[tuple[Path, str]]) -> str:
    text = (
        f"no finished runs under {outputs} (a finished run directory has fit.json and config.yaml). "
        "Run the pipeline with the fit stage first, e.g. `python run.py stages=[train,sweep,fit]`, "
        "or `make table2`."
    )
    if skipped:
        text += " Directories not used: " + "; ".join(f"{relative(p, outputs)} ({why})" for p, why in skipped)
    return text
