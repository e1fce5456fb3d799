"""What a tuning trial returns: its front value on the validation split (``tune.*`` keys).

Hydra's Optuna sweeper (``hydra/sweeper=optuna``, ``steer/conf/experiment/tune_*.yaml``) maximises the
value ``run.py`` returns. With ``tune.split`` set, that is the best PrefOdds the run reaches on that
split while UtilOdds stays within ``tune.delta`` of its value at m = 0 (``steer.analysis.front``),
from the fitted curves or the swept points (``tune.value``). The test split is refused here, so a
choice made by tuning never sees a test row; the comparison report reads test afterwards.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from steer import rundir
from steer.analysis.front import VALUES, Best, front_value
from steer.pairs import validation_size
from steer.stages.base import ConfigError

log = logging.getLogger("steer")

# Splits a trial may be scored on: never test.
TUNE_SPLITS = ("validation", "train")


def check_tune(cfg: DictConfig) -> None:
    """``tune.*`` can work, before anything runs: a known split that is not test (validation needs
    ``dataset.validation`` > 0), a known value, a budget ≥ 0, and the stages that produce it."""
    tune = cfg.get("tune") or {}
    split = tune.get("split")
    if split is None:
        return
    if split not in TUNE_SPLITS:
        raise ConfigError(
            f"tune.split={split!r}: a trial is scored on {' or '.join(TUNE_SPLITS)}, never on test "
            "(the test split stays untouched until the comparison report)"
        )
    if tune.get("value") not in VALUES:
        raise ConfigError(f"tune.value={tune.get('value')!r} is not one of {', '.join(VALUES)}")
    delta = tune.get("delta")
    if delta < 0:  # a float: the schema types it
        raise ConfigError(f"tune.delta must be a number >= 0 (nats of UtilOdds), got {delta!r}")
    if split == "validation":
        try:
            if validation_size(cfg.dataset.get("validation"), 2**31) == 0:
                raise ConfigError(
                    "tune.split=validation but dataset.validation is 0: set dataset.validation to a count or a "
                    "fraction of train (e.g. dataset.validation=0.25)"
                )
        except ValueError as err:
            raise ConfigError(str(err)) from err
    needed = "fit" if tune.get("value") == "fit" else "sweep"
    if needed not in cfg.stages:
        raise ConfigError(f"tune.value={tune.get('value')} reads the {needed} stage: add it to stages")


# Hydra's sweeper that maximises nothing; every other one (Optuna, Nevergrad, Ax) needs each job's value.
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_sweeper(cfg: DictConfig) -> None:
    """A sweeper that optimises a value gets one: ``tune.split`` must be set (a ``tune_*`` preset sets it),
    or every trial would run in full and return None. ``cfg`` holds Hydra's config."""
    sweeper = str(cfg.hydra.sweeper.get("_target_"))
    if sweeper != BASIC_SWEEPER and cfg.tune.get("split") is None:
        raise ConfigError(
            f"hydra/sweeper={sweeper.rsplit('.', 1)[-1]} maximises each trial's value, but tune.split is null, so a "
            "trial returns none: choose a tuning preset, e.g. experiment=tune_vector_split (steer/conf/experiment/"
            "tune_*.yaml, docs/tuning.md), or set tune.split=validation with dataset.validation > 0"
        )


def target_of(cfg: DictConfig, run_dir: Path) -> Best:
    """The front value of the run in ``run_dir`` on ``tune.split`` (rows of that split only)."""
    fit_json = rundir.read_fit(run_dir) if cfg.tune.value == "fit" else {}
    return front_value(rundir.read_sweep(run_dir), fit_json, str(cfg.tune.split), float(cfg.tune.delta), cfg.tune.value)


def trial_target(cfg: DictConfig, run_dir: Path) -> float | None:
    """None for a plain run; under tuning the front value on ``tune.split``, also recorded in
    ``metrics.json`` (section ``tune``) with the m and UtilOdds that attain it."""
    if cfg.get("tune", {}).get("split") is None:
        return None
    best = target_of(cfg, run_dir)
    record = {"split": cfg.tune.split, "delta": float(cfg.tune.delta), "value": cfg.tune.value}
    record.update(target=best.pref, m=best.m, util=best.util)
    rundir.update_metrics(run_dir, "tune", record, replace=True)
    log.info(
        "tune: best PrefOdds %.4f on %s within δ=%g of UtilOdds(0), at m=%g (%s)",
        best.pref,
        cfg.tune.split,
        cfg.tune.delta,
        best.m,
        cfg.tune.value,
    )
    return best.pref
