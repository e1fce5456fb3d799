"""The fit stage: the validity-decay model fitted to the run's sweep, ``fit.json`` and ``dynamics.png``."""

from __future__ import annotations

import json
import logging

import pandas as pd

from steer.atomic import atomic_write_text
from steer.fit import SPLITS, SweepFit, fit_sweep
from steer.plots import Panel, save_dynamics_figure
from steer.stages.context import RunContext
from steer.stages.runner import Stage
from steer.stages.sweep import SWEEP_FILE
from steer.tracking import log_fit

log = logging.getLogger("steer")

FIT_FILE = "fit.json"
FIGURE_FILE = "dynamics.png"


def r2_table(fit_json: dict) -> pd.DataFrame:
    """R² per curve (rows pref, util) and fit (columns train, test, transfer) of a ``fit.json``."""
    return pd.DataFrame(
        {which: {kind: fit_json[kind][which]["r2"] for kind in ("pref", "util")} for which in (*SPLITS, "transfer")}
    )


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    result = fit_sweep(pd.read_parquet(ctx.path(SWEEP_FILE)), restarts=cfg.fit.restarts, seed=cfg.fit.seed)
    summary = result.to_json()
    title = (
        f"{cfg.model.name} · layer {cfg.layer} · {cfg.intervention.form} · {cfg.objective.name} · {cfg.dataset.name}"
    )
    figure = save_dynamics_figure(ctx.path(FIGURE_FILE), [run_panels(result)], title)
    # fit.json last: its presence marks a finished run for steer.report.
    atomic_write_text(ctx.path(FIT_FILE), json.dumps(summary, indent=2) + "\n")
    table = r2_table(summary)
    log.info("fit R² (train/test fits, train fit scored on test = transfer):\n%s", table.to_string())
    log_fit(ctx.tracker, result, summary)
    ctx.tracker.image("fit/dynamics", figure)


def run_panels(result: SweepFit) -> list[Panel]:
    """One panel per split, each with that split's own fits."""
    return [
        Panel(
            title=f"{split} split",
            curves={kind: result.curves[kind, split] for kind in ("pref", "util")},
            fits={kind: result.fits[kind, split] for kind in ("pref", "util")},
        )
        for split in SPLITS
    ]


STAGE = Stage(name="fit", run=run, keys=("fit",), outputs=(FIT_FILE, FIGURE_FILE), after=("sweep",))
