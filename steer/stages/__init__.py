"""The stages of a run and the one function that runs them: the only code that reads Hydra config.

Order: (data) → train → sweep → fit → judge. ``data`` is implicit: it writes ``pairs.jsonl``
whenever a later stage needs it. Everything that can be checked cheaply is checked before the
model loads, and nothing is written to the run directory until the config and data are valid.
"""

from __future__ import annotations

import json
import logging
import numbers
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from steer.atomic import atomic_write_text
from steer.fit import PREF_PARAMS
from steer.interventions import FORMS
from steer.models import load_config, num_layers
from steer.stages import data, fit, judge, sweep, train
from steer.stages.context import RunContext
from steer.stages.runner import Ledger, run_stage_list
from steer.tracking import Tracker, scrub

log = logging.getLogger("steer")

CONF = Path(__file__).resolve().parents[2] / "conf"
STAGES = (data.STAGE, train.STAGE, sweep.STAGE, fit.STAGE, judge.STAGE)
# Stages of the full pipeline, in order; those without a module yet are refused by name.
PIPELINE = ("train", "sweep", "fit", "judge")
# Which intervention forms each objective can train.
OBJECTIVES = {"diffmean": ("vector",), "sft": FORMS, "reps": FORMS, "split": FORMS}


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    ran: list[str]


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The repo's Hydra config with ``overrides``, as ``run.py`` would see it, for entry points
    other than ``run.py`` (data-check) and for tests."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def validate(cfg: DictConfig) -> None:
    """Fail on a bad key before anything is loaded or written."""
    available = [s.name for s in STAGES if not s.implicit]
    stages = list(cfg.stages)
    if not stages:
        raise ConfigError("stages is empty: name at least one of " + ", ".join(available))
    for name in stages:
        if name not in PIPELINE:
            raise ConfigError(f"stages: unknown stage {name!r} (the pipeline is {', '.join(PIPELINE)})")
        if name not in available:
            raise ConfigError(f"stages: stage {name!r} is not available yet (available: {', '.join(available)})")
    form = cfg.intervention.form
    if form not in FORMS:
        raise ConfigError(f"intervention.form={form!r} is not one of {', '.join(FORMS)}")
    if form == "lora" and not (isinstance(cfg.intervention.rank, int) and cfg.intervention.rank > 0):
        raise ConfigError(f"intervention.rank must be a positive integer for lora, got {cfg.intervention.rank!r}")
    objective = cfg.objective.name
    if objective not in OBJECTIVES:
        raise ConfigError(f"objective={objective!r} is not one of {', '.join(OBJECTIVES)}")
    if form not in OBJECTIVES[objective]:
        raise ConfigError(
            f"objective={objective} trains only intervention={'/'.join(OBJECTIVES[objective])}, not intervention={form}"
        )
    if not isinstance(cfg.layer, int) or isinstance(cfg.layer, bool):
        raise ConfigError(f"layer must be an integer (a 0-based decoder layer index), got {cfg.layer!r}")
    grid = cfg.sweep.grid
    if "sweep" in stages:
        if grid is None or len(grid) == 0:
            raise ConfigError("sweep.grid is empty: give the multipliers to score, e.g. sweep.grid=[-4,0,4]")
        bad = [m for m in grid if not isinstance(m, numbers.Real) or isinstance(m, bool)]
        if bad:
            raise ConfigError(f"sweep.grid: {bad[0]!r} is not a number")
    if "fit" in stages:
        check_fit(cfg)
    limit = cfg.dataset.get("limit")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ConfigError(f"dataset.limit must be a positive integer or null, got {limit!r}")
    for name, module in (("train", train), ("judge", judge)):
        if name not in stages:
            continue
        try:
            module.check(cfg)
        except (ValueError, OmegaConfBaseException) as err:
            raise ConfigError(str(err)) from err


def check_fit(cfg: DictConfig) -> None:
    """The fit needs at least as many distinct multipliers as the preference model has parameters."""
    restarts = cfg.fit.restarts
    if not isinstance(restarts, int) or isinstance(restarts, bool) or restarts < 1:
        raise ConfigError(f"fit.restarts must be a positive integer, got {restarts!r}")
    distinct = len({float(m) for m in cfg.sweep.grid or [] if isinstance(m, numbers.Real)})
    if distinct < len(PREF_PARAMS):
        raise ConfigError(
            f"sweep.grid has {distinct} distinct multipliers; the fit stage needs at least {len(PREF_PARAMS)} "
            f"(the preference model has {len(PREF_PARAMS)} parameters)"
        )


def check_layer(cfg: DictConfig) -> None:
    """The layer index against the model's config (no weights are loaded for this)."""
    try:
        n = num_layers(load_config(cfg.model.source))
    except OSError as err:
        raise ConfigError(str(err)) from err
    if not 0 <= cfg.layer < n:
        raise ConfigError(f"layer={cfg.layer} is out of range: model {cfg.model.name} has layers 0..{n - 1}")


def run(cfg: DictConfig, run_dir: str | Path) -> RunResult:
    """Validate, then run ``cfg.stages`` in ``run_dir``; print where the results are."""
    run_dir = Path(run_dir)
    validate(cfg)
    check_layer(cfg)
    ctx = RunContext(cfg, run_dir)
    if not Ledger(run_dir, STAGES).is_done(data.STAGE, cfg, run_dir):
        try:
            ctx.splits = data.load_dataset(cfg)  # fails on a bad data set before anything is written
        except (ValueError, FileNotFoundError) as err:
            raise ConfigError(str(err)) from err
    if not ctx.is_main:  # under accelerate launch: the main process writes files, logs and reports
        logging.getLogger("steer").setLevel(logging.WARNING)
        ran = run_stage_list(STAGES, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force))
        return RunResult(run_dir, ran)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(scrub(resolved))))
    handler = logging.FileHandler(run_dir / "run.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    if cfg.tracking.wandb:
        ctx.tracker = Tracker.start(
            run_dir, cfg.run_id, resolved, cfg.tracking.project, cfg.tracking.entity, group=cfg.dataset.name
        )
    try:
        ran = run_stage_list(STAGES, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force))
    finally:
        ctx.tracker.finish()
        logging.getLogger().removeHandler(handler)
        handler.close()
    report(run_dir)
    return RunResult(run_dir, ran)


def report(run_dir: Path) -> None:
    """Print the mean log-odds per m and split, and the files of the run."""
    from steer.sweep import summarize

    sweep_file = run_dir / sweep.SWEEP_FILE
    if sweep_file.is_file():
        table = summarize(pd.read_parquet(sweep_file))
        print("\nMean log-odds per multiplier m:")
        print(table.to_string(float_format=lambda x: f"{x:8.3f}"))
    fit_file = run_dir / fit.FIT_FILE
    if fit_file.is_file():
        print("\nR² of the validity-decay fits (transfer = train fit scored on test):")
        print(fit.r2_table(json.loads(fit_file.read_text())).to_string(float_format=lambda x: f"{x:8.4f}"))
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"\nRun directory: {run_dir}\nFiles: {', '.join(files)}")
