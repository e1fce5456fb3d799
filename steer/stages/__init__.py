"""The stages of a run and the one function that runs them: the only code that reads Hydra config.

``STAGES`` is the pipeline in order: (data) → train → sweep → fit → judge. ``data`` is implicit: it
writes ``pairs.jsonl`` whenever a later stage needs it. Each stage checks its own config keys
before any model loads, and nothing is written to the run directory until every check passed.
Adding a stage is one ``Stage`` subclass (``steer.stages.base``) and one entry in ``STAGES``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from steer import rundir
from steer.models import load_config, num_layers
from steer.precision import PRECISIONS
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext
from steer.stages.data import DataStage
from steer.stages.fit import FitStage
from steer.stages.judge import JudgeStage
from steer.stages.runner import run_stage_list
from steer.stages.sweep import SweepStage
from steer.stages.train import TrainStage
from steer.tracking import Tracker, scrub

__all__ = ["STAGES", "ConfigError", "RunContext", "RunResult", "Stage", "check", "compose_config", "report", "run"]

log = logging.getLogger("steer")

CONF = Path(__file__).resolve().parents[2] / "conf"
STAGES: tuple[Stage, ...] = (DataStage(), TrainStage(), SweepStage(), FitStage(), JudgeStage())


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    ran: list[str]


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The repo's Hydra config with ``overrides``, as ``run.py`` would see it, for entry points
    other than ``run.py`` (data-check) and for tests."""
    from hydra import compose, initialize_config_dir

    from steer.resolvers import register

    register()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)


def check_stage_list(cfg: DictConfig, stages: Sequence[Stage]) -> None:
    """``stages`` names at least one stage, each one of the pipeline's (implicit ones are not named)."""
    available = [s.name for s in stages if not s.implicit]
    if not cfg.stages:
        raise ConfigError("stages is empty: name at least one of " + ", ".join(available))
    for name in cfg.stages:
        if name not in available:
            raise ConfigError(f"stages: unknown stage {name!r} (the pipeline is {', '.join(available)})")


def check_layer(cfg: DictConfig) -> None:
    """``layer`` is an index into the model's decoder layers (read from its config: no weights load)."""
    if not isinstance(cfg.layer, int) or isinstance(cfg.layer, bool):
        raise ConfigError(f"layer must be an integer (a 0-based decoder layer index), got {cfg.layer!r}")
    try:
        n = num_layers(load_config(cfg.model.source))
    except OSError as err:
        raise ConfigError(str(err)) from err
    if not 0 <= cfg.layer < n:
        raise ConfigError(f"layer={cfg.layer} is out of range: model {cfg.model.name} has layers 0..{n - 1}")


def check(cfg: DictConfig, stages: Sequence[Stage] = STAGES) -> None:
    """Fail on a bad key before anything is loaded or written: the stage list, the layer, and the
    ``check`` of every stage that may run (the requested ones and the implicit ones)."""
    check_stage_list(cfg, stages)
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    for stage in stages:
        if stage.implicit or stage.name in cfg.stages:
            try:
                stage.check(cfg)
            except ConfigError:
                raise
            except (ValueError, OmegaConfBaseException) as err:
                raise ConfigError(str(err)) from err
    check_layer(cfg)


def run(cfg: DictConfig, run_dir: str | Path, stages: Sequence[Stage] = STAGES) -> RunResult:
    """Check, then run ``cfg.stages`` (of ``stages``, in its order) in ``run_dir``; print the summary."""
    run_dir = Path(run_dir)
    check(cfg, stages)
    ctx = RunContext(cfg, run_dir)
    if not ctx.is_main:  # under accelerate launch: the main process writes files, logs and reports
        logging.getLogger("steer").setLevel(logging.WARNING)
        return RunResult(run_dir, run_stage_list(stages, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force)))
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rundir.write_config(run_dir, scrub(resolved))
    handler = logging.FileHandler(run_dir / rundir.RUN_LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.getLogger().addHandler(handler)
    if cfg.tracking.wandb:
        ctx.tracker = Tracker.start(
            run_dir, cfg.run_id, resolved, cfg.tracking.project, cfg.tracking.entity, group=cfg.tracking.group
        )
    try:
        ran = run_stage_list(stages, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force))
    finally:
        ctx.tracker.finish()
        logging.getLogger().removeHandler(handler)
        handler.close()
    report(run_dir, stages)
    return RunResult(run_dir, ran)


def report(run_dir: Path, stages: Sequence[Stage] = STAGES) -> None:
    """Print every stage's summary and the files of the run."""
    for stage in stages:
        text = stage.summary(run_dir)
        if text:
            print("\n" + text)
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"\nRun directory: {run_dir}\nFiles: {', '.join(files)}")
