"""Hydra's Optuna sweeper (``hydra-optuna-sweeper``) made resumable, and the best trial written down.

``steer/conf/experiment/tune.yaml`` selects ``hydra_plugins.steer_tuning.ResumableOptunaSweeper`` as
``hydra.sweeper._target_`` (Hydra loads plugins only from the ``hydra_plugins`` package); it is the
plugin's ``OptunaSweeper`` with the three additions below, whose code lives here:

- **Resume.** The study lives in SQLite under the output root (``hydra.sweeper.storage``). A study
  killed during a trial leaves that trial RUNNING in the database; on the next run of the same
  command it is marked FAIL and its parameters are queued again (its run directory resumes from
  what the run kept), and only ``n_trials`` minus the trials already COMPLETE are launched. A
  finished trial is never re-run: the command asks for a number of finished trials, not for more.
  The sampler is seeded by the run's ``seed`` (unless ``hydra.sweeper.sampler.seed`` is set) plus
  the number of trials the study holds (``reseeded``), so a resumed study does not draw the first
  trials' parameters again.
- **Where each trial ran.** Every launched job's overrides and run directory are kept as a study
  attribute, so the best trial's run directory is known in any later process.
- **The best trial, reusable.** When the sweep ends: ``<output_root>/tune/experiment/best_<study>.yaml``,
  an experiment config (``# @package _global_``) with the best trial's group choices and overrides,
  usable by a later run as ``hydra.searchpath=[file://<output_root>/tune] experiment=best_<study>``
  (its runs go to ``output_root=<output_root>/tuned``, apart from ad-hoc runs), and
  ``<output_root>/tune/best/<study>.json`` (target, parameters, run directory, trials) that
  ``python -m steer.report compare`` reads.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser

from steer import rundir
from steer.io.atomic import atomic_write_text

log = logging.getLogger("steer")

RUNS_ATTR = "steer_runs"
# Keys of a trial's overrides that do not belong in a reusable experiment.
NOT_REUSED = ("hydra", "experiment", "output_root", "tracking", "progress", "device", "node", "force")


def study_slug(name: str) -> str:
    """A study name as a file name (``a/b/vector-split`` -> ``a_b_vector-split``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def open_study(storage: str, name: str):
    import optuna

    if storage.startswith("sqlite:///"):
        Path(storage.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    return optuna.create_study(study_name=name, storage=storage, load_if_exists=True, direction="maximize")


def resume(study, n_trials: int) -> int:
    """Mark trials left RUNNING by a killed sweep FAIL, queue their parameters again, and return
    how many trials are still to run for ``n_trials`` COMPLETE ones."""
    from optuna.trial import TrialState

    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
        study.enqueue_trial(dict(trial.params))
        log.info("tune: trial %d was interrupted; its parameters run again %s", trial.number, trial.params)
    done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    return max(0, n_trials - done)


def reseeded(sampler_config, sampler, seed: int, trials: int):
    """The sampler a study continues with: seeded ``hydra.sweeper.sampler.seed`` (else the run's
    ``seed``) plus the trials the study already holds. A fresh process seeded like the first would
    draw the first trials' parameters again; this keeps a study deterministic for its history and
    its draws new. A sampler without a seed (the grid: ``_partial_``) is returned as it is."""
    if sampler_config.get("_partial_") or "seed" not in sampler_config:
        return sampler
    from hydra.utils import instantiate

    base = sampler_config.get("seed")
    return instantiate(sampler_config, seed=int(seed if base is None else base) + trials)


class RecordingLauncher:
    """The sweeper's launcher, recording each job's overrides and run directory in the study."""

    def __init__(self, launcher, study) -> None:
        self.launcher, self.study = launcher, study

    def launch(self, job_overrides, initial_job_idx: int):
        returns = self.launcher.launch(job_overrides, initial_job_idx=initial_job_idx)
        runs = list(self.study.user_attrs.get(RUNS_ATTR, []))
        for ret in returns:
            runs.append({"overrides": list(ret.overrides), "run_dir": str(ret.hydra_cfg.hydra.runtime.output_dir)})
        self.study.set_user_attr(RUNS_ATTR, runs)
        return returns


def trial_run(study, params: dict[str, Any]) -> dict | None:
    """The recorded job (overrides, run directory) whose overrides set ``params``."""
    wanted = {f"{k}={v}" for k, v in params.items()}
    for run in reversed(study.user_attrs.get(RUNS_ATTR, [])):
        if wanted <= set(run["overrides"]):
            return run
    return None


def reusable(overrides: list[str], config: dict) -> dict:
    """A trial's overrides as a nested config (values parsed as YAML), minus ``NOT_REUSED`` keys and
    group choices (a top-level key whose value in the run's ``config`` is a mapping)."""
    nested: dict = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element().lstrip("+~")
        if key.split(".")[0] in NOT_REUSED or ("." not in key and isinstance(config.get(key), dict)):
            continue
        *path, leaf = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(override.get_value_element_as_str())
    return nested


def write_best(study, output_root: Path, requested: int) -> Path | None:
    """``best_<study>.yaml`` (an experiment) and ``best/<study>.json`` for the study's best trial."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    best = study.best_trial
    run = trial_run(study, best.params)
    if run is None:
        log.warning("tune: the run directory of best trial %d is not recorded; best.yaml not written", best.number)
        return None
    run_dir = Path(run["run_dir"])
    config = rundir.read_config(run_dir)
    slug = study_slug(study.study_name)
    root = output_root / "tune"
    groups = {
        "intervention": config["intervention"]["form"],
        "objective": config["objective"]["name"],
        "dataset": config["dataset"]["loader"],
        "model": config["model"]["name"],
    }
    values = reusable(run["overrides"], config)
    values["output_root"] = str(output_root / "tuned")
    head = (
        f"# @package _global_\n# Best of {len(complete)} trial(s) of study {study.study_name} (trial {best.number}): "
        f"front value {best.value:.4f} on the validation split.\n# Run directory: {run_dir}\n"
        f"#   python run.py hydra.searchpath=[file://{root}] experiment=best_{slug}\n"
    )
    body = {"defaults": [{f"override /{g}": v} for g, v in groups.items()], **values}
    path = root / "experiment" / f"best_{slug}.yaml"
    atomic_write_text(path, head + yaml.safe_dump(body, sort_keys=False))
    summary = {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "params": best.params,
        "run_dir": str(run_dir),
        "overrides": run["overrides"],
        "trials_complete": len(complete),
        "distinct_complete": len({json.dumps(t.params, sort_keys=True) for t in complete}),
        "trials_requested": requested,
        "experiment": str(path),
    }
    atomic_write_text(root / "best" / f"{slug}.json", json.dumps(summary, indent=2) + "\n")
    log.info("tune: best trial %d (%.4f) -> %s", best.number, best.value, path)
    return path
