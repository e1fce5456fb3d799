"""steer's command line, ``python run.py [overrides]`` or ``steer run [overrides]`` (``-m``: a multirun).

``main`` is Hydra's entry point around ``steer.stages.run``. A setting the schema refuses fails
Hydra's composition: ``main`` prints one line naming the key (``steer.stages.refusal``) and exits 2,
as a refused run does. A job returns None, or under tuning (``tune.split`` set) its front value on
that split: the number Hydra's Optuna sweeper maximises (docs/tuning.md).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import hydra
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException, HydraException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.io.artifacts import CorruptArtifact
from steer.runtime.resolvers import register, variant_overrides
from steer.stages import CONF, STAGES, ConfigError, compose_config, refusal, remove_empty_run_dir, run
from steer.stages.runner import fingerprinted
from steer.stages.schema import register as register_schema
from steer.stages.tune import check_sweeper, trial_target

log = logging.getLogger("steer")


def record_variant(run_dir: Path) -> None:
    """``overrides.yaml``: the fingerprinted overrides that named this run's subdirectory
    (``steer.runtime.resolvers``), for every report that shows two runs of one cell."""
    hydra_cfg = HydraConfig.get()
    choices = OmegaConf.to_container(hydra_cfg.runtime.choices)
    variant = variant_overrides(list(hydra_cfg.overrides.task), choices, *fingerprinted(STAGES))
    if (run_dir / rundir.CONFIG).is_file() and (variant or (run_dir / rundir.OVERRIDES).is_file()):
        rundir.write_overrides(run_dir, variant)


class JobRefused(CompactHydraException):
    """A multirun job refused before any work: Hydra prints its message alone, not a traceback."""


@hydra.main(version_base="1.3", config_path=str(CONF), config_name="config")
def job(cfg: DictConfig) -> float | None:
    """One job: ``steer.stages.run`` in Hydra's run directory; a refusal is one line and exit 2."""
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        try:
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


def check_multirun(overrides: Sequence[str]) -> None:
    """Before any job: the sweeper gets a value to maximise. Composed from the overrides less the
    sweeps (``a=1,2``, ``choice(...)``); if that does not compose, the jobs' own composition says why."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    plain = [
        o.input_line for o in OverridesParser.create().parse_overrides(list(overrides)) if not o.is_sweep_override()
    ]
    try:
        cfg = compose_config(plain, return_hydra_config=True)
    except ConfigError:
        return
    check_sweeper(cfg)


def main(argv: Sequence[str] | None = None) -> int:
    """``run.py``'s one call: Hydra's command line with ``argv`` (default: ``sys.argv[1:]``). Hydra's
    own errors are raised to here (HYDRA_FULL_ERROR) so a composition error is one line naming the key."""
    register(fingerprinted(STAGES))
    register_schema()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    overrides = [a for a in sys.argv[1:] if not a.startswith("-")]
    if {"-m", "--multirun"} & set(sys.argv[1:]):
        try:
            check_multirun(overrides)
        except ConfigError as err:
            print(f"config error: {err}", file=sys.stderr)
            return 2
    full = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        job()
    except JobRefused as err:
        print(err, file=sys.stderr)
        return 1
    except HydraException as err:
        GlobalHydra.instance().clear()
        print(f"config error: {refusal(err, overrides, compose_config)}", file=sys.stderr)
        return 2
    except ConfigError as err:  # raised by compose_config itself (a sweeper's check, steer/runtime/tuning.py)
        print(f"config error: {err}", file=sys.stderr)
        return 2
    finally:
        if full is None:
            os.environ.pop("HYDRA_FULL_ERROR")
    return 0
