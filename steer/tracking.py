"""Experiment tracking with Weights & Biases.

Online when ``WANDB_API_KEY`` is set (or ``WANDB_MODE`` says so), offline otherwise: the run's
files then live under ``<run dir>/wandb`` and ``wandb sync`` uploads them later. Config values
whose key looks like a secret are never sent.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from steer.secrets import argv_redacted, redact_config
from steer.secrets import scrub as scrub  # re-exported: steer.stages writes config.yaml with it


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
        import wandb

        with argv_redacted():  # W&B records the command line in its metadata
            run = wandb.init(
                project=project,
                entity=entity,
                name=name,
                group=group,
                dir=str(run_dir),
                config=redact_config(config),
                mode=wandb_mode(),
                reinit="finish_previous",
            )
        # Each stage logs against its own x-axis: training steps, or the sweep's multiplier m.
        run.define_metric("train/*", step_metric="train/step")
        run.define_metric("sweep/*", step_metric="sweep/m")
        return cls(run)

    @property
    def active(self) -> bool:
        return self._run is not None

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

    def image(self, key: str, path: Path) -> None:
        if self._run is not None:
            import wandb

            self._run.log({key: wandb.Image(str(path))})

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
