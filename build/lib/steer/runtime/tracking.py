"""Experiment tracking with Weights & Biases.

Online when ``WANDB_API_KEY`` is set (or ``WANDB_MODE`` says so), offline otherwise: the run's
files then live under ``<run dir>/wandb`` and ``wandb sync`` uploads them later. Config values
whose key looks like a secret are never sent.

One W&B run per job. The jobs of one multirun share a group (``tracking.group``, by default the
multirun's directory and start time, which ``steer.runtime.multirun`` puts in ``$STEER_MULTIRUN``); within
a multirun wandb is silent, and the multirun prints one ``wandb sync`` line for all its jobs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from steer.io.secrets import argv_redacted, redact_config

# The W&B group of the multirun this process's jobs belong to (set by steer.runtime.multirun.JobsTable).
MULTIRUN_ENV = "STEER_MULTIRUN"


def default_group(group: str | None) -> str | None:
    """``tracking.group`` when set, else the running multirun's group (None for a single run)."""
    return group or os.environ.get(MULTIRUN_ENV) or None


def run_labels(config: dict) -> tuple[str | None, list[str]]:
    """W&B ``job_type`` (form-objective) and tags (form, objective, data set, model) of a run's
    resolved config, so the dashboard can filter and group by any of them; a config without one of
    them (a library user's own run) simply has fewer labels."""

    def label(group: str, key: str) -> str | None:
        value = (config.get(group) or {}).get(key)
        return None if value is None else str(value)

    form, objective = label("intervention", "form"), label("objective", "name")
    job_type = "-".join(x for x in (form, objective) if x) or None
    tags = [x for x in (form, objective, label("dataset", "name"), label("model", "name")) if x]
    return job_type, tags


def wandb_mode() -> str:
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class Tracker:
    """A thin handle on one W&B run; a disabled tracker accepts every call and does nothing."""

    def __init__(self, run=None) -> None:
        self._run = run

    @classmethod
    def disabled(cls) -> Tracker:
        return cls(None)

    @property
    def active(self) -> bool:
        """Whether a W&B run is behind this handle (what is costly to prepare is skipped otherwise)."""
        return self._run is not None

    @classmethod
    def start(
        cls,
        run_dir: Path,
        name: str,
        config: dict,
        project: str = "steer",
        entity: str | None = None,
        group: str | None = None,
    ) -> Tracker:
        """Start the run of one job: grouped by ``group`` (see ``default_group``), labelled by
        ``run_labels``; the config is scrubbed of secrets."""
        import wandb

        job_type, tags = run_labels(config)
        with argv_redacted():  # W&B records the command line in its metadata
            run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                group=default_group(group),
                job_type=job_type,
                tags=tags,
                dir=str(run_dir),
                config=redact_config(config),
                mode=wandb_mode(),
                reinit="finish_previous",
                # Inside a multirun the multirun prints one `wandb sync` line for all jobs.
                settings=wandb.Settings(silent=bool(os.environ.get(MULTIRUN_ENV))),
            )
        # Each stage logs against its own x-axis: training steps, or the sweep's multiplier m.
        run.define_metric("train/*", step_metric="train/step")
        run.define_metric("sweep/*", step_metric="sweep/m")
        return cls(run)

    def log(self, metrics: dict) -> None:
        if self._run is not None:
            self._run.log(metrics)

    def summary(self, values: dict) -> None:
        if self._run is not None:
            self._run.summary.update(values)

    def table(self, key: str, frame: pd.DataFrame) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Table(dataframe=frame)})

    def lines(self, key: str, title: str, xname: str, series: dict[str, tuple[list, list]]) -> None:
        """A line plot of several series (name -> (xs, ys)) against one x axis."""
        if self._run is not None:
            import wandb

            names = list(series)
            xs = [list(map(float, series[n][0])) for n in names]
            ys = [list(map(float, series[n][1])) for n in names]
            self._run.log({key: wandb.plot.line_series(xs=xs, ys=ys, keys=names, title=title, xname=xname)})

    def image(self, key: str, path: Path) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

    def finish(self, exit_code: int | None = None) -> None:
        """End the W&B run; a nonzero ``exit_code`` marks it failed (an error, or 130/143 when
        interrupted by SIGINT/SIGTERM)."""
        if self._run is not None:
            self._run.finish(exit_code=exit_code)
            self._run = None


def log_fit(tracker: Tracker, result, fit_json: dict, points: int = 200) -> None:
    """The fit stage's panels: per split, mean PrefOdds/UtilOdds against m with their fitted
    curves (one line plot each), and every fit parameter and R² in the summary.

    ``result`` is a ``steer.analysis.fit.SweepFit``; ``fit_json`` its ``to_json()``.
    """
    import numpy as np

    from steer.analysis.fit import SPLITS

    if not tracker.active:
        return
    for split in SPLITS:
        series = {}
        for kind in ("pref", "util"):
            curve = result.curves[kind, split]
            m = curve["m"].to_numpy(dtype=float)
            series[f"{kind} mean"] = (m, curve["mean"].to_numpy(dtype=float))
            fine = np.linspace(m.min(), m.max(), points)
            series[f"{kind} fit"] = (fine, result.fits[kind, split].predict(fine))
        tracker.lines(f"sweep/curves_{split}", f"mean log-odds vs m, {split} split", "m", series)
    values = {}
    for kind in ("pref", "util"):
        for which, entry in fit_json[kind].items():
            values[f"fit/{kind}/{which}/r2"] = entry["r2"]
            values.update({f"fit/{kind}/{which}/{k}": v for k, v in entry.get("params", {}).items()})
    tracker.summary(values)
