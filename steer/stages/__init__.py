"""The stages of a run and the one function that runs them: the only code that reads Hydra config.

``STAGES`` is the pipeline in order: (data) → train → sweep → fit → judge. ``data`` is implicit: it
writes ``pairs.jsonl`` whenever a later stage needs it. Each stage checks its own config keys
before any model loads, and nothing is written to the run directory until every check passed.
Adding a stage is one ``Stage`` subclass (``steer.stages.base``) and one entry in ``STAGES``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from steer import rundir
from steer.core.forms import get_form
from steer.core.models import check_model_folder, load_config, num_layers, resolve_source
from steer.core.precision import PRECISIONS
from steer.io.artifacts import CorruptArtifact
from steer.io.provenance import finish_run_info, run_info, weights_identity, write_run_info
from steer.io.secrets import RedactingFilter, redact_config
from steer.runtime.interrupt import interruptible
from steer.runtime.tracking import Tracker
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext
from steer.stages.data import DataStage
from steer.stages.fit import FitStage
from steer.stages.ignored import check_ignored, composition_error, failing_key
from steer.stages.judge import JudgeStage
from steer.stages.runner import Fingerprints, fingerprinted, kept, plan, run_stage_list
from steer.stages.schema import choices, mismatched_identity
from steer.stages.schema import register as register_schema
from steer.stages.slots import node_slot
from steer.stages.sweep import SweepStage
from steer.stages.train import TrainStage
from steer.stages.tune import check_tune

__all__ = [
    "STAGES",
    "ConfigError",
    "RunContext",
    "RunResult",
    "Stage",
    "check",
    "compose_config",
    "remove_empty_run_dir",
    "report",
    "run",
]

log = logging.getLogger("steer")

CONF = Path(__file__).resolve().parents[1] / "conf"
STAGES: tuple[Stage, ...] = (DataStage(), TrainStage(), SweepStage(), FitStage(), JudgeStage())
register_schema()


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    ran: list[str]


def compose_config(overrides: Sequence[str] = (), return_hydra_config: bool = False) -> DictConfig:
    """The repo's Hydra config with ``overrides``, as ``run.py`` would see it, for entry points
    other than ``run.py`` (data-check) and for tests. A setting the schema refuses is a
    ``ConfigError`` naming the key (``steer.stages.ignored.composition_error``)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException

    from steer.runtime.resolvers import register

    register(fingerprinted(STAGES))
    register_schema()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        try:
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
        except HydraException as err:
            raise ConfigError(refusal(err, overrides, lambda o: compose("config", overrides=o))) from None


def refusal(err: Exception, overrides: Sequence[str], compose) -> str:
    """One line for a composition error; the group choices from composing the overrides without the failing one."""
    key = failing_key(err)
    try:
        found = choices(compose([o for o in overrides if key is None or o.split("=")[0].lstrip("+~") != key]))
    except Exception:  # the rest does not compose either (a sweep, another error): say it without the choices
        found = {}
    return composition_error(err, overrides, found)


def check_stage_list(cfg: DictConfig, stages: Sequence[Stage]) -> None:
    """``stages`` names at least one stage, each one of the pipeline's (implicit ones are not named)."""
    available = [s.name for s in stages if not s.implicit]
    if not cfg.stages:
        raise ConfigError("stages is empty: name at least one of " + ", ".join(available))
    for name in cfg.stages:
        if name not in available:
            raise ConfigError(f"stages: unknown stage {name!r} (the pipeline is {', '.join(available)})")


def check_layer(cfg: DictConfig) -> None:
    """``layer`` is an index into the model's decoder layers, and the architecture has the form's
    site (both read from its config: no weights load)."""
    if not isinstance(cfg.layer, int) or isinstance(cfg.layer, bool):
        raise ConfigError(f"layer must be an integer (a 0-based decoder layer index), got {cfg.layer!r}")
    try:
        config = load_config(cfg.model.source)
    except OSError as err:
        raise ConfigError(str(err)) from err
    n = num_layers(config)
    if not 0 <= cfg.layer < n:
        raise ConfigError(f"layer={cfg.layer} is out of range: model {cfg.model.name} has layers 0..{n - 1}")
    try:
        get_form(cfg.intervention.form).check_config(config)
    except ValueError as err:
        raise ConfigError(f"intervention={cfg.intervention.form} on model {cfg.model.name}: {err}") from None


def check_seed(seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in 0..2**32-1, got {seed!r}")


def check_device(device) -> None:
    """``device`` is auto, cpu, cuda or cuda:<index>, and a named GPU exists on this machine."""
    match = re.fullmatch(r"cuda(?::(\d+))?", str(device))
    if device in ("auto", "cpu"):
        return
    if match is None:
        raise ConfigError(f"device={device!r} is not one of auto, cpu, cuda, cuda:<index>")
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(f"device={device} but this machine has no CUDA GPU; use device=cpu or device=auto")
    if match.group(1) is not None and int(match.group(1)) >= torch.cuda.device_count():
        raise ConfigError(f"device={device}: this machine has GPUs cuda:0..cuda:{torch.cuda.device_count() - 1}")


def check(cfg: DictConfig, stages: Sequence[Stage] = STAGES, overrides: Sequence[str] | None = None) -> None:
    """Fail on a bad key before anything is loaded or written: the stage list, seed, device,
    precision, the model folder, the layer, the ``check`` of every stage that may run (the
    requested ones and the implicit ones), and any of the ``overrides`` (default: Hydra's, when
    Hydra runs the job) that the config makes ineffective (``steer.stages.ignored``)."""
    check_stage_list(cfg, stages)
    if mismatch := mismatched_identity(cfg):
        raise ConfigError(mismatch)
    check_tune(cfg)
    check_seed(cfg.seed)
    check_device(cfg.device)
    if cfg.precision not in PRECISIONS:
        raise ConfigError(f"precision={cfg.precision!r} is not one of {', '.join(PRECISIONS)}")
    try:
        check_model_folder(str(cfg.model.source))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    for stage in stages:
        if stage.implicit or stage.name in cfg.stages:
            try:
                stage.check(cfg)
            except ConfigError:
                raise
            except (ValueError, OmegaConfBaseException) as err:
                raise ConfigError(str(err)) from err
    check_layer(cfg)
    multirun = False
    if overrides is None:
        overrides, multirun = hydra_overrides()
    check_ignored(cfg, overrides, multirun, stages, choices(cfg))


def hydra_overrides() -> tuple[list[str], bool]:
    """(the command line's overrides, whether this is a multirun job) when Hydra runs the job."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], False
    return list(HydraConfig.get().overrides.task), HydraConfig.get().mode == RunMode.MULTIRUN


def run(
    cfg: DictConfig, run_dir: str | Path, stages: Sequence[Stage] = STAGES, overrides: Sequence[str] | None = None
) -> RunResult:
    """Check, then run ``cfg.stages`` (of ``stages``, in its order) in ``run_dir``; print the summary.
    ``overrides``: the keys set explicitly (default: Hydra's command line), checked for ones that
    have no effect.

    Nothing is written before every check and the stage plan passed. Then ``config.yaml``
    (secrets redacted), ``run_info.json`` (provenance, stamped finished/failed/interrupted at the
    end) and ``run.log`` (every error, secrets redacted). Ctrl-C or SIGTERM ends the run with one
    line saying what was kept and how to resume (``steer.runtime.interrupt``); W&B records the exit code.
    """
    run_dir = Path(run_dir)
    check(cfg, stages, overrides)
    with node_slot(cfg):
        return _run(cfg, run_dir, stages)


def _run(cfg: DictConfig, run_dir: Path, stages: Sequence[Stage]) -> RunResult:
    prints = Fingerprints(cfg, run_dir, stages)  # the model and data digests are taken once per run
    plan(stages, list(cfg.stages), cfg, run_dir, bool(cfg.force), prints)
    ctx = RunContext(cfg, run_dir)
    if not ctx.is_main:  # under accelerate launch: the main process writes files, logs and reports
        logging.getLogger("steer").setLevel(logging.WARNING)
        ran = run_stage_list(stages, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force), prints)
        return RunResult(run_dir, ran)
    run_dir.mkdir(parents=True, exist_ok=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    rundir.write_config(run_dir, redact_config(resolved))
    info_path = run_dir / rundir.RUN_INFO
    write_run_info(info_path, provenance(cfg, ctx.device, prints))
    handler = logging.FileHandler(run_dir / rundir.RUN_LOG)
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    run_log = logging.getLogger("steer.run_log")  # run.log alone: the console shows errors once, at the top
    run_log.propagate = False
    run_log.addHandler(handler)
    if cfg.tracking.wandb:
        ctx.tracker = Tracker.start(
            run_dir, cfg.run_id, resolved, cfg.tracking.project, cfg.tracking.entity, group=cfg.tracking.group
        )
    status, exit_code = "failed", 1
    try:
        with interruptible(lambda: kept(run_dir, stages), logger=run_log) as interrupted:
            try:
                ran = run_stage_list(stages, list(cfg.stages), cfg, run_dir, ctx, bool(cfg.force), prints)
                status, exit_code = "finished", 0
            except KeyboardInterrupt:
                status, exit_code = "interrupted", interrupted.exit_code
                raise
            except (ConfigError, CorruptArtifact) as err:
                run_log.error("%s", err)
                exit_code = 2
                raise
            except Exception:
                run_log.exception("the run failed")
                raise
            finally:  # before the interruption's line, so that line is the last one printed
                ctx.tracker.finish(exit_code=exit_code)
                finish_run_info(info_path, status)
    finally:
        run_log.removeHandler(handler)
        logging.getLogger().removeHandler(handler)
        handler.close()
    report(run_dir, stages)
    return RunResult(run_dir, ran)


def remove_empty_run_dir(run_dir: Path, root: Path) -> None:
    """After a refused config: remove ``run_dir`` when empty, and its empty parents up to (not
    including) ``root``: the folders Hydra made for the run, so nothing is left behind."""
    run_dir, root = Path(run_dir).resolve(), Path(root).resolve()
    if run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
    run_dir = run_dir.parent
    while run_dir != root and root in run_dir.parents and run_dir.is_dir() and not any(run_dir.iterdir()):
        run_dir.rmdir()
        run_dir = run_dir.parent


def provenance(cfg: DictConfig, device: str, prints: Fingerprints) -> dict:
    """``run_info.json`` of a run of ``cfg``: model weights identity, data file hashes (a hub data
    set's commit and sha256, as the run's ``prints`` took it), seed, command."""
    source = str(cfg.model.source)
    path = OmegaConf.select(cfg, "dataset.path", default=None)
    return run_info(
        seed=cfg.seed,
        model=weights_identity(source, resolve_source(source)),
        data_files=[Path(str(path)).expanduser()] if path else [],
        device=device,
        extra={
            "run_id": cfg.run_id,
            "stages": list(cfg.stages),
            "status": "running",
            "data_hub": None if path else prints.input("data"),
        },
    )


def report(run_dir: Path, stages: Sequence[Stage] = STAGES) -> None:
    """Print every stage's summary and the files of the run."""
    for stage in stages:
        text = stage.summary(run_dir)
        if text:
            print("\n" + text)
    files = sorted(p.name for p in run_dir.iterdir() if p.is_file() and not p.name.startswith("."))
    print(f"\nRun directory: {run_dir}\nFiles: {', '.join(files)}")
