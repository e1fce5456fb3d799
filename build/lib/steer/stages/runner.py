"""Running stages in order, skipping the finished ones.

Stages talk only through files in the run directory. ``stages.json`` (the ledger) records, for
every finished stage, its fingerprint: a hash of the config keys it depends on, of the external
inputs it reads (``Stage.reads``: the model's weights identity, the data files' content) and of
the stages before it, *including the bytes of the files they wrote*. The ledger is content
addressed: a stage whose outputs exist under the same fingerprint is skipped; a changed key, an
edited data file, other model weights or an upstream file changed on disk re-runs it and
everything after it. Before a stage runs, its outputs and those of every stage after it are
deleted (a re-run sweep never leaves the old ``fit.json`` beside the new ``sweep.parquet``). The
ledger is written only after a stage's outputs are in place, so an interrupted stage simply runs
again.

Several processes (``accelerate launch``): every process walks the same stage list. Before each
stage all of them meet at a barrier and read the ledger, so they take the same decision; a
``parallel`` stage (data, train, sweep) runs in every process and splits its work with
``RunContext.shard``/``map_sharded``, any other stage in the main process alone while the rest
wait at the next barrier. Only the main process writes the ledger and deletes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.core.models import resolve_source
from steer.datasets.files import hub_file
from steer.io.artifacts import CorruptArtifact, read_json
from steer.io.atomic import atomic_write_text
from steer.io.provenance import file_digest, path_digest, weights_identity
from steer.io.resumable import kept_parts
from steer.stages.base import ConfigError, Stage

log = logging.getLogger("steer")


def config_subset(cfg: DictConfig, keys: Sequence[str], ignore: Sequence[str] = ()) -> dict:
    """The resolved values of ``keys`` (dotted paths) minus ``ignore`` (dotted paths at any depth
    under a key, e.g. ``judge.generation.batch_size`` under ``judge``): what a stage depends on."""
    subset = {}
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            value = OmegaConf.to_container(value, resolve=True)
        subset[key] = value
    for key in ignore:
        if key in subset:
            subset.pop(key)
            continue
        head = next((k for k in keys if key.startswith(k + ".")), None)
        node, path = subset.get(head), key[len(head or "") + 1 :].split(".")
        for part in path[:-1]:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return subset


def fingerprinted(stages: Sequence[Stage]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(keys, ignore) of all ``stages`` together: a config key some stage's fingerprint covers is
    under one of the keys and not under that stage's ignored ones (``steer.runtime.resolvers``
    names run directories by them). An ignored key counts when another stage covers it."""
    keys = tuple(dict.fromkeys(k for s in stages for k in s.keys))
    ignore = tuple(
        i
        for i in dict.fromkeys(i for s in stages for i in s.ignore)
        if all(i in s.ignore for s in stages if _under(i, s.keys))
    )
    return keys, ignore


def _under(key: str, prefixes: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def model_identity(cfg: DictConfig) -> str | None:
    """The model's weights identity (``steer.io.provenance.weights_identity``: sampled, milliseconds)."""
    source = str(cfg.model.source)
    return weights_identity(source, resolve_source(source))["digest"]


def data_identity(cfg: DictConfig) -> str | None:
    """sha256 of the data file (or folder) ``dataset.path`` names, streamed; for a hub data set
    (``dataset.hub``, no path) the commit ``dataset.revision`` resolves to and the sha256 of the
    file there; None for the built-in data sets (named by their config keys). A hub file that cannot
    be fetched gets an identity of its keys: the data stage then fails with the message to fix it."""
    dataset = cfg.get("dataset") or {}
    if dataset.get("path"):
        return path_digest(Path(str(dataset.path)).expanduser())
    if not (dataset.get("hub") and dataset.get("file")):
        return None
    try:
        local, source = hub_file(str(dataset.hub), str(dataset.file), dataset.get("revision"))
    except ValueError:
        return f"unreachable hub:{dataset.hub}/{dataset.file}@{dataset.get('revision')}"
    return f"{source} sha256:{file_digest(local)}"


# What a stage may read besides its config keys and upstream files (``Stage.reads``).
INPUTS: dict[str, Callable[[DictConfig], str | None]] = {"model": model_identity, "data": data_identity}


def output_digests(stage: Stage, run_dir: Path) -> dict[str, str | None]:
    """sha256 of each file ``stage`` wrote (None when absent): what a stage after it reads."""
    return {name: file_digest(run_dir / name) if (run_dir / name).is_file() else None for name in stage.outputs}


class Fingerprints:
    """The fingerprints of one run's stages. External inputs are hashed once per run; the files of
    upstream stages afresh on every call, since they change as stages run."""

    def __init__(self, cfg: DictConfig, run_dir: Path, stages: Sequence[Stage]) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.stages = {s.name: s for s in stages}
        self._inputs: dict[str, str | None] = {}

    def input(self, name: str) -> str | None:
        if name not in self._inputs:
            self._inputs[name] = INPUTS[name](self.cfg)
        return self._inputs[name]

    def inputs(self, stage: Stage) -> dict[str, str | None]:
        """What ``stage`` reads besides config: external inputs by name, upstream files by file name."""
        values = {name: self.input(name) for name in stage.reads}
        for name in stage.after:
            values.update(output_digests(self.stages[name], self.run_dir))
        return values

    def of(self, stage: Stage) -> str:
        """A hash of the stage's config keys, its inputs and, recursively, the stages before it."""
        upstream = [self.of(self.stages[name]) for name in stage.after]
        payload = [config_subset(self.cfg, stage.keys, stage.ignore), self.inputs(stage), upstream]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


class Ledger:
    """``stages.json``: fingerprints, inputs and timings of the finished stages of one run directory."""

    def __init__(self, run_dir: Path, stages: Sequence[Stage], prints: Fingerprints) -> None:
        self.path = run_dir / rundir.LEDGER
        self.run_dir = run_dir
        self.stages = {s.name: s for s in stages}
        self.prints = prints
        self.entries: dict = read_json(self.path) if self.path.is_file() else {}

    def is_done(self, stage: Stage) -> bool:
        """Finished for this config and these inputs. A finished stage's file that changed on disk
        since (edited, truncated, garbled) is never trusted: ``CorruptArtifact`` naming it."""
        entry = self.entries.get(stage.name)
        done = (
            entry is not None
            and all((self.run_dir / out).exists() for out in stage.outputs)
            and entry.get("fingerprint") == self.prints.of(stage)
        )
        if done:
            self.vouch(stage, entry.get("outputs", {}))
        return done

    def vouch(self, stage: Stage, recorded: dict) -> None:
        """The stage's files are the ones it wrote: same sha256 as recorded, else the stage's own
        ``verify`` names what is wrong, else a ``CorruptArtifact`` naming the changed file."""
        now = output_digests(stage, self.run_dir)
        changed = [name for name, digest in recorded.items() if digest and now.get(name) != digest]
        if changed:
            stage.verify(self.prints.cfg, self.run_dir)
            raise CorruptArtifact(
                self.run_dir / changed[0],
                f"changed since the {stage.name} stage wrote it (its sha256 differs from the one in {rundir.LEDGER})",
            )

    def changes(self, stage: Stage, cfg: DictConfig) -> list[str]:
        """The config keys and inputs (model, data, upstream files) that differ from the entry's."""
        entry = self.entries.get(stage.name, {})
        changed = []
        for recorded, now in (
            (entry.get("config", {}), config_subset(cfg, stage.keys, stage.ignore)),
            (entry.get("inputs", {}), self.prints.inputs(stage)),
        ):
            changed += sorted(k for k in set(recorded) | set(now) if recorded.get(k) != now.get(k))
        return changed

    def record(self, stage: Stage, cfg: DictConfig, fingerprint: str, seconds: float) -> None:
        self.entries[stage.name] = {
            "fingerprint": fingerprint,
            "config": config_subset(cfg, stage.keys, stage.ignore),
            "inputs": self.prints.inputs(stage),
            "outputs": output_digests(stage, self.run_dir),
            "seconds": round(seconds, 3),
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        self.save()

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.entries, indent=2) + "\n")

    def downstream(self, name: str) -> list[Stage]:
        """Every stage built on ``name``, transitively, in pipeline order."""
        found = {name}
        for stage in self.stages.values():
            if found & set(stage.after):
                found.add(stage.name)
        return [s for s in self.stages.values() if s.name in found - {name}]

    def clear(self, stage: Stage) -> None:
        """Before ``stage`` runs: delete its outputs and those of every stage after it, and their
        entries, so no file of an earlier config survives beside the new ones."""
        for gone in (stage, *self.downstream(stage.name)):
            for name in gone.outputs:
                if (self.run_dir / name).is_file():
                    log.info("stage %s: removing %s (%s re-runs)", gone.name, name, stage.name)
                    (self.run_dir / name).unlink()
            self.entries.pop(gone.name, None)
        if self.path.is_file():
            self.save()


def plan(
    stages: Sequence[Stage],
    requested: Sequence[str],
    cfg: DictConfig,
    run_dir: Path,
    force: bool,
    prints: Fingerprints | None = None,
) -> list[str]:
    """The stages a run will execute, decided before anything is written: a requested stage whose
    inputs no stage provides is a ``ConfigError`` now, not after the others ran, and a finished
    stage's file changed on disk a ``CorruptArtifact``."""
    ledger = Ledger(Path(run_dir), stages, prints or Fingerprints(cfg, Path(run_dir), stages))
    planned: list[str] = []
    for stage in stages:
        if _should_run(stage, stages, requested, cfg, Path(run_dir), ledger, planned, force, quiet=True):
            planned.append(stage.name)
    return planned


def kept(run_dir: Path, stages: Sequence[Stage]) -> str:
    """What an interrupted run leaves to resume from: its finished stages and resumable chunks."""
    path = Path(run_dir) / rundir.LEDGER
    try:
        done = [name for name in (read_json(path) if path.is_file() else {}) if name in {s.name for s in stages}]
    except ValueError:
        done = []
    what = f"finished stages: {', '.join(done) if done else 'none'}"
    for folder in rundir.PARTS:
        parts = sum(kept_parts(d) for d in (Path(run_dir) / folder).glob("*") if d.is_dir())
        if parts:
            what += f"; {parts} finished chunk(s) in {folder}/"
    return f"kept {what} in {run_dir}. Run the same command again to resume"


def run_stage_list(
    stages: Sequence[Stage],
    requested: Sequence[str],
    cfg: DictConfig,
    run_dir: Path,
    ctx,
    force: bool,
    prints: Fingerprints | None = None,
) -> list[str]:
    """Run the ``requested`` stages in the order of ``stages``, implicit ones where needed.

    ``ctx.state`` is accelerate's process state (main process, barrier); ``ctx.fingerprint`` is set
    to the running stage's fingerprint (the key of its resumable parts and checkpoints); ``prints``
    carries the input digests already taken by ``plan``. Returns the names of the stages that ran
    (in any process).
    """
    state = ctx.state
    prints = prints or Fingerprints(cfg, run_dir, stages)
    ran: list[str] = []
    for stage in stages:
        state.wait_for_everyone()  # what the main process wrote for earlier stages is in place
        ledger = Ledger(run_dir, stages, prints)
        run_it = _should_run(stage, stages, requested, cfg, run_dir, ledger, ran, force)
        ctx.fingerprint = prints.of(stage) if run_it else None
        state.wait_for_everyone()  # every process has decided before the main process writes again
        if not run_it:
            continue
        if state.is_main_process:
            ledger.clear(stage)
        state.wait_for_everyone()
        start = time.perf_counter()
        if stage.parallel or state.is_main_process:
            stage.run(ctx)
        if state.is_main_process:
            ledger.record(stage, cfg, ctx.fingerprint, time.perf_counter() - start)
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
    quiet: bool = False,
) -> bool:
    say = (lambda *args: None) if quiet else log.info
    wanted = stage.name in requested
    if not (force and wanted) and ledger.is_done(stage):
        say("stage %s: done for this config and inputs, skipped (force=true re-runs it)", stage.name)
        return False
    if not wanted and not (stage.implicit and any(stage.name in s.after for s in stages if s.name in requested)):
        return False
    missing = [up for up in stage.after if up not in ran and not ledger.is_done(ledger.stages[up])]
    if missing:
        raise ConfigError(
            f"stages: stage {stage.name} needs the outputs of {', '.join(missing)} for this config in "
            f"{run_dir}; add {', '.join(missing)} to stages (e.g. stages=[{', '.join([*missing, stage.name])}])"
        )
    if stage.name in ledger.entries:
        changed = ledger.changes(stage, cfg)
        say("stage %s: re-running (%s)", stage.name, ", ".join(changed) if changed else "forced or upstream changed")
    say("stage %s: running", stage.name)
    return True
