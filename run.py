"""steer's one entry point: ``python run.py [overrides]`` or ``python run.py -m ...`` (multirun).

A job returns None, or under tuning (``tune.split`` set, e.g. ``experiment=tune_vector_split``) its
front value on that split: the number Hydra's Optuna sweeper maximises (docs/tuning.md).
"""

import contextlib
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict

from steer.runtime.resolvers import register, variant_overrides
from steer.stages import STAGES
from steer.stages.runner import fingerprinted

register(fingerprinted(STAGES))
log = logging.getLogger("steer")


@contextlib.contextmanager
def node_slot(cfg: DictConfig):
    """With ``node.jobs`` > 1 (``hydra/launcher=node``): hold a device slot for this job's life and
    run on its device with its share of the CPU threads."""
    from steer.stages import ConfigError

    jobs = cfg.node.jobs
    if not isinstance(jobs, int) or isinstance(jobs, bool) or jobs < 1:
        raise ConfigError(f"node.jobs must be a positive integer, got {jobs!r}")
    if jobs == 1:
        yield
        return
    import torch

    from steer.runtime.devices import claim_slot, pin, slot_plan

    devices = cfg.node.devices
    if devices is None and cfg.device != "cpu" and torch.cuda.is_available():
        devices = list(range(torch.cuda.device_count()))
    with claim_slot(Path(HydraConfig.get().sweep.dir) / ".node-slots", jobs) as index:
        slot = slot_plan(index, jobs, None if cfg.device == "cpu" else devices, len(os.sched_getaffinity(0)))
        pin(slot)
        with open_dict(cfg):
            cfg.device = slot.device
        yield


def record_variant(run_dir: Path) -> None:
    """``overrides.yaml``: the fingerprinted overrides that named this run's subdirectory
    (``steer.runtime.resolvers``), for every report that shows two runs of one cell."""
    from steer import rundir

    hydra_cfg = HydraConfig.get()
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
    variant = variant_overrides(list(hydra_cfg.overrides.task), choices, *fingerprinted(STAGES))
    if (run_dir / rundir.CONFIG).is_file() and (variant or (run_dir / rundir.OVERRIDES).is_file()):
        rundir.write_overrides(run_dir, variant)


class JobRefused(CompactHydraException):
    """A multirun job refused before any work: Hydra prints its message alone, not a traceback."""


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from steer.io.artifacts import CorruptArtifact
    from steer.stages import ConfigError, remove_empty_run_dir, run
    from steer.stages.tune import check_tune, trial_target

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        check_tune(cfg)
        try:
            with node_slot(cfg):
                run(cfg, run_dir)
        finally:
            record_variant(run_dir)
        return trial_target(cfg, run_dir)
    except (ConfigError, CorruptArtifact) as err:
        log.error("%s: %s", "config error" if isinstance(err, ConfigError) else "damaged file", err)
        remove_empty_run_dir(run_dir, Path(cfg.output_root))  # Hydra made them; nothing was written
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            # Hydra records the job as failed, runs the others, then prints this one line (no traceback)
            raise JobRefused(f"{type(err).__name__}: {err}") from None
        sys.exit(2)


if __name__ == "__main__":
    main()
