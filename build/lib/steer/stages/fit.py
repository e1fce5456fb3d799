"""The fit stage: the validity-decay model fitted to the run's sweep, ``fit.json`` and ``dynamics.png``."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig

from steer import rundir
from steer.analysis.bootstrap import fit_intervals
from steer.analysis.fit import PREF_PARAMS, SPLITS, SweepFit, check_restarts, fit_sweep
from steer.analysis.forms import fit_alternative
from steer.analysis.plots import Panel, save_dynamics_figure
from steer.core.sweep import check_grid
from steer.runtime.tracking import log_fit
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext
from steer.stages.tune import target_of

log = logging.getLogger("steer")


def r2_table(fit_json: dict) -> pd.DataFrame:
    """R² per curve (rows pref, util) and fit (columns train, test, transfer) of a ``fit.json``."""
    return pd.DataFrame(
        {which: {kind: fit_json[kind][which]["r2"] for kind in ("pref", "util")} for which in (*SPLITS, "transfer")}
    )


def form_lines(fit_json: dict) -> list[str]:
    """Per train and test fit: the parameters at a bound, the withheld R², and the form test in words."""
    lines = []
    for kind in ("pref", "util"):
        for split in SPLITS:
            entry = fit_json[kind][split]
            parts = []
            if entry.get("at_bound"):
                parts.append("at a bound: " + ", ".join(f"{k} ({v})" for k, v in entry["at_bound"].items()))
            if entry.get("r2_withheld"):
                parts.append("R² withheld: " + entry["r2_withheld"])
            form = entry.get("form")
            if form:
                paper = form["paper"]
                cv, ex = (paper.get(key) for key in ("cv_r2", "example_r2"))
                parts.append(f"CV R² {cv:.3f}" if cv is not None else "CV R² n/a")
                if ex is not None:
                    parts.append(f"per-example R² {ex:.3f}")
                parts.append(form["verdict"])
            lines.append(f"{kind} {split}: " + ("; ".join(parts) or "no parameter at a bound"))
    return lines


def run_panels(result: SweepFit) -> list[Panel]:
    """One panel per split, each with that split's own fits and the alternative AICc prefers to them."""
    return [
        Panel(
            title=f"{split} split",
            curves={kind: result.curves[kind, split] for kind in ("pref", "util")},
            fits={kind: result.fits[kind, split] for kind in ("pref", "util")},
            alternatives=preferred_alternatives(result, split),
        )
        for split in result.splits
    ]


def preferred_alternatives(result: SweepFit, split: str) -> dict:
    """Per kind, (name, predictor) of the simpler curve AICc prefers to the paper's form on ``split``."""
    out = {}
    for kind in ("pref", "util"):
        best = result.forms.get((kind, split), {}).get("best")
        if best and best != "paper":
            curve = result.curves[kind, split]
            out[kind] = (best, fit_alternative(best, curve["m"], curve["mean"]))
    return out


class FitStage(Stage):
    name = "fit"
    keys = ("fit", "sweep.grid", "model.name", "layer", "intervention.form", "objective.name", "dataset.name")
    outputs = (rundir.FIT, rundir.FIGURE, rundir.FIGURE_PDF)
    after = ("sweep",)

    def check(self, cfg: DictConfig) -> None:
        """The fit needs at least as many distinct multipliers as the preference model has parameters."""
        check_restarts(cfg.fit.restarts)
        if cfg.fit.bootstrap < 0:
            n = cfg.fit.bootstrap
            raise ConfigError(f"fit.bootstrap must be a whole number >= 0 (replicates; 0 = off), got {n}")
        distinct = len(check_grid(cfg.sweep.grid))  # finite and distinct: nine NaNs are not nine multipliers
        if distinct < len(PREF_PARAMS):
            raise ConfigError(
                f"sweep.grid has {distinct} distinct multipliers; the fit stage needs at least {len(PREF_PARAMS)} "
                f"(the preference model has {len(PREF_PARAMS)} parameters)"
            )

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        frame = rundir.read_sweep(ctx.run_dir)
        result = fit_sweep(frame, cfg.fit.restarts, cfg.fit.seed, ctx.progress)
        if cfg.fit.bootstrap:
            intervals = fit_intervals(frame, result, cfg.fit.bootstrap, cfg.fit.seed, progress=ctx.progress)
            result = replace(result, intervals=intervals)
        summary = result.to_json()
        parts = (cfg.model.name, f"layer {cfg.layer}", cfg.intervention.form, cfg.objective.name, cfg.dataset.name)
        title = " · ".join(str(p) for p in parts)
        figure = save_dynamics_figure(ctx.path(rundir.FIGURE), [run_panels(result)], title)
        rundir.write_fit(ctx.run_dir, summary)  # last: its presence marks a finished run for steer.report
        table = r2_table(summary)
        log.info("fit R² (train/test fits, train fit scored on test = transfer):\n%s", table.to_string())
        log.info("fit form:\n%s", "\n".join(form_lines(summary)))
        log_fit(ctx.tracker, result, summary)
        ctx.tracker.image("fit/dynamics", figure)
        if cfg.get("tune", {}).get("split"):  # a tuning trial: its target beside its parameters in W&B
            best = target_of(cfg, ctx.run_dir)
            ctx.tracker.summary({"tune/target": best.pref, "tune/m": best.m, "tune/util": best.util})

    def summary(self, run_dir: Path) -> str | None:
        if not (run_dir / rundir.FIT).is_file():
            return None
        table = r2_table(rundir.read_fit(run_dir))
        text = table.to_string(float_format=lambda x: f"{x:8.4f}")
        lines = form_lines(rundir.read_fit(run_dir))
        return "R² of the validity-decay fits (transfer = train fit scored on test):\n" + text + "\n" + "\n".join(lines)
