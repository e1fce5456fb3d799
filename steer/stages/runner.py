"""Running stages in order, skipping the finished ones.

Stages talk only through files in the run directory. ``stages.json`` (the ledger) records, for
every finished stage, a fingerprint of the config keys it depends on and of the stages before it.
A stage whose outputs exist under the same fingerprint is skipped; a changed key re-runs it and
everything after it. The ledger is written only after a stage's outputs are in place, so an
interrupted stage simply runs again.

Several processes (``accelerate launch``): every process walks the same stage list. Before each
stage all of them meet at a barrier and read the ledger, so they take the same decision; a
``parallel`` stage (data, train, sweep) runs in every process and splits its work with
``RunContext.shard``/``map_sharded``, any other stage in the main process alone while the rest
wait at the next barrier. Only the main process writes the ledger.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.atomic import atomic_write_text
from steer.stages.base import Stage

log = logging.getLogger("steer")


def config_subset(cfg: DictConfig, keys: Sequence[str], ignore: Sequence[str] = ()) -> dict:
    """The resolved values of ``keys`` (dotted paths) minus ``ignore``: what a stage depends on."""
    subset = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = OmegaConf.to_container(value, resolve=True)
        subset[key] = value
    for key in ignore:
        head, _, tail = key.partition(".")
        if tail and isinstance(subset.get(head), dict):
            subset[head].pop(tail, None)
        else:
            subset.pop(key, None)
    return subset


def fingerprint(stage: Stage, cfg: DictConfig, stages: Sequence[Stage]) -> str:
    """A hash of the stage's config keys and, recursively, of every stage before it (in ``stages``)."""
    by_name = {s.name: s for s in stages}
    upstream = [fingerprint(by_name[name], cfg, stages) for name in stage.after]
    payload = json.dumps([config_subset(cfg, stage.keys, stage.ignore), upstream], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


class Ledger:
    """``stages.json``: fingerprints and timings of the finished stages of one run directory."""

    def __init__(self, run_dir: Path, stages: Sequence[Stage]) -> None:
        self.path = run_dir / rundir.LEDGER
        self.stages = {s.name: s for s in stages}
        self.entries: dict = json.loads(self.path.read_text()) if self.path.is_file() else {}

    def fingerprint(self, stage: Stage, cfg: DictConfig) -> str:
        return fingerprint(stage, cfg, list(self.stages.values()))

    def is_done(self, stage: Stage, cfg: DictConfig, run_dir: Path) -> bool:
        entry = self.entries.get(stage.name)
        return (
            entry is not None
            and entry.get("fingerprint") == self.fingerprint(stage, cfg)
            and all((run_dir / out).exists() for out in stage.outputs)
        )

    def changed_keys(self, stage: Stage, cfg: DictConfig) -> list[str]:
        old = self.entries.get(stage.name, {}).get("config", {})
        new = config_subset(cfg, stage.keys, stage.ignore)
        return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))

    def record(self, stage: Stage, cfg: DictConfig, seconds: float) -> None:
        self.entries[stage.name] = {
            "fingerprint": self.fingerprint(stage, cfg),
            "config": config_subset(cfg, stage.keys, stage.ignore),
            "seconds": round(seconds, 3),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        atomic_write_text(self.path, json.dumps(self.entries, indent=2) + "\n")

    def forget_downstream(self, name: str) -> None:
        """A stage that ran again invalidates every stage built on it, transitively."""
        for stage in self.stages.values():
            if name in stage.after and stage.name in self.entries:
                del self.entries[stage.name]
                self.forget_downstream(stage.name)


def run_stage_list(
    stages: Sequence[Stage], requested: Sequence[str], cfg: DictConfig, run_dir: Path, ctx, force: bool
) -> list[str]:
    """Run the ``requested`` stages in the order of ``stages``, implicit ones where needed.

    ``ctx.state`` is accelerate's process state (main process, barrier). Returns the names of the
    stages that ran (in any process).
    """
    state = ctx.state
    ran: list[str] = []
    for stage in stages:
        state.wait_for_everyone()  # what the main process wrote for earlier stages is in place
        ledger = Ledger(run_dir, stages)
        run_it = _should_run(stage, stages, requested, cfg, run_dir, ledger, ran, force)
        state.wait_for_everyone()  # every process has decided before the main process writes again
        if not run_it:
            continue
        start = time.perf_counter()
        if stage.parallel or state.is_main_process:
            stage.run(ctx)
        if state.is_main_process:
            ledger.forget_downstream(stage.name)
            ledger.record(stage, cfg, time.perf_counter() - start)
        ran.append(stage.name)
        log.info("stage %s: finished in %.1f s", stage.name, time.perf_counter() - start)
    state.wait_for_everyone()
    return ran


def _should_run(
    stage: Stage,
    stages: Sequence[Stage],
    requested: Sequence[str],
    cfg: DictConfig,
    run_dir: Path,
    ledger: Ledger,
    ran: list[str],
    force: bool,
) -> bool:
    wanted = stage.name in requested
    if ledger.is_done(stage, cfg, run_dir) and not (force and wanted):
        log.info("stage %s: done for this config, skipped (force=true re-runs it)", stage.name)
        return False
    if not wanted and not (stage.implicit and any(stage.name in s.after for s in stages if s.name in requested)):
        return False
    missing = [up for up in stage.after if up not in ran and not ledger.is_done(ledger.stages[up], cfg, run_dir)]
    if missing:
        raise RuntimeError(
            f"stage {stage.name} needs the outputs of {', '.join(missing)} for this config in "
            f"{run_dir}; add {', '.join(missing)} to stages (e.g. stages=[{', '.join([*missing, stage.name])}])"
        )
    if stage.name in ledger.entries:
        changed = ledger.changed_keys(stage, cfg)
        log.info(
            "stage %s: re-running (%s)", stage.name, ", ".join(changed) if changed else "forced or upstream changed"
        )
    log.info("stage %s: running", stage.name)
    return True
