"""The runs a server serves: what each run directory says about itself, read before any weights load.

A run directory names its base model in ``config.yaml`` (``model.source``, ``precision``) and
its Δ in ``intervention.json`` (form, layer, objective). One server holds one base model: runs of
different base models are refused with both sources named, before the model loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from steer import rundir


@dataclass(frozen=True)
class RunInfo:
    """One served run: the name requests use and what ``/v1/models`` shows of it."""

    name: str
    run_dir: Path
    form: str
    objective: str
    layer: int
    dataset: str
    model: str  # the base model's name (config model.name)
    source: str  # model.source: what loads the base model
    precision: str

    def card(self) -> dict:
        """The run's entry of ``/v1/models`` (beside the OpenAI fields)."""
        return {
            "form": self.form,
            "objective": self.objective,
            "layer": self.layer,
            "dataset": self.dataset,
            "base_model": self.model,
            "run_dir": str(self.run_dir),
        }


def read_run(run_dir: str | Path, name: str | None = None) -> RunInfo:
    """What ``run_dir`` says about its run; a missing or incomplete file is a ValueError naming it."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ValueError(f"{run_dir} is not a run directory")
    for needed in (rundir.CONFIG, rundir.META, rundir.WEIGHTS):
        if not (run_dir / needed).is_file():
            hint = " (run the train stage first)" if needed != rundir.CONFIG else ""
            raise ValueError(f"{run_dir / needed} is missing: {run_dir} is not a trained run{hint}")
    config = rundir.read_config(run_dir)
    meta = rundir.read_meta(run_dir)
    model = config.get("model") or {}
    if not model.get("source"):
        raise ValueError(f"{run_dir / rundir.CONFIG} has no model.source: which base model the run steers is unknown")
    return RunInfo(
        name=name or str(config.get("run_id") or run_dir.name),
        run_dir=run_dir,
        form=str(meta.get("form")),
        objective=str(meta.get("objective") or (config.get("objective") or {}).get("name", "")),
        layer=int(meta.get("layer")),
        dataset=str((config.get("dataset") or {}).get("name", "")),
        model=str(model.get("name") or model["source"]),
        source=str(model["source"]),
        precision=str(config.get("precision") or "fp32"),
    )


def read_runs(run_dirs: Sequence[str | Path], names: Sequence[str] | None = None) -> list[RunInfo]:
    """Every run of ``run_dirs`` (named by ``names`` in order, else by their run ids), checked to
    share one base model and to have distinct names."""
    if not run_dirs:
        raise ValueError("give at least one run directory")
    if names and len(names) != len(run_dirs):
        raise ValueError(f"--name was given {len(names)} times for {len(run_dirs)} run directories: give one per run")
    runs = [read_run(d, names[i] if names else None) for i, d in enumerate(run_dirs)]
    first = runs[0]
    for run in runs[1:]:
        if (run.source, run.precision) != (first.source, first.precision):
            raise ValueError(
                f"runs of different base models cannot share a server or compose: {first.run_dir} steers "
                f"model.source={first.source} ({first.precision}) but {run.run_dir} steers "
                f"model.source={run.source} ({run.precision}); start one server per base model, compose runs of one"
            )
    seen: dict[str, Path] = {}
    for run in runs:
        if run.name in seen:
            raise ValueError(
                f"{seen[run.name]} and {run.run_dir} are both named {run.name!r}: tell them apart with --name"
            )
        if "@" in run.name:
            raise ValueError(
                f"run name {run.name!r} contains '@', which separates a name from m: rename it with --name"
            )
        seen[run.name] = run.run_dir
    if first.model in seen:
        raise ValueError(f"a run is named {first.model!r}, the base model's name: rename it with --name")
    return runs
