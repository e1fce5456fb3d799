"""The run directory: every file a run writes, by name, and the typed readers and writers of them.

One run = one directory. The stages communicate only through these files, the report reads
them, and nothing else should spell a file name. Importing this module loads no torch, so the
report and other readers of finished runs stay light.

    pairs.jsonl                the data stage's rendered pairs (train and test)
    intervention.safetensors   the trained Δ tensors (``steer.core.interventions``)
    intervention.json          what the tensors are: form, layer, site, shapes, training summary
    train_log.csv              one row per optimiser step
    train_checkpoint.pt        end-of-epoch checkpoint while training runs (deleted after)
    sweep.parquet              losses and log-odds per (split, example, m)
    fit.json                   the validity-decay fits (written last: marks a finished run)
    dynamics.png               the run's dynamics figure
    dynamics.pdf               the same figure as a vector PDF (for papers)
    generations.parquet        the judge stage's steered answers (split, example, part, m, text, tokens)
    judgments.parquet          every judge reply, its rubric, parsed and expected score, cached or not
    accuracy.parquet           the judge stage's PrefOdds per test pair at m = 0 and the judged m (accuracy)
    judge_server.log           the log of the local judge server (judge=local)
    metrics.json               one section per stage of headline numbers
    config.yaml                the resolved config of the run (secrets redacted)
    overrides.yaml             the overrides that made the run a variant of its cell (its subdirectory's name)
    stages.json                the ledger of finished stages: fingerprints of their inputs and outputs
    run_info.json              provenance: versions, git commit, model and data hashes, command, times, status
    run.log                    the run's log
    sweep.parts/               finished sweep batches while the sweep runs (deleted after)
    generations.parts/         finished chunks of the judge stage's generation while it runs (deleted after)
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import yaml

from steer.io.artifacts import read_json as read_json
from steer.io.artifacts import read_parquet
from steer.io.atomic import atomic_path, atomic_write_text
from steer.pairs import PairRecord
from steer.pairs import read_pairs as _read_pairs_file
from steer.pairs import write_pairs as _write_pairs_file

PAIRS = "pairs.jsonl"
WEIGHTS = "intervention.safetensors"
META = "intervention.json"
TRAIN_LOG = "train_log.csv"
CHECKPOINT = "train_checkpoint.pt"
SWEEP = "sweep.parquet"
FIT = "fit.json"
FIGURE = "dynamics.png"
FIGURE_PDF = "dynamics.pdf"
GENERATIONS = "generations.parquet"
JUDGMENTS = "judgments.parquet"
ACCURACY = "accuracy.parquet"
SERVER_LOG = "judge_server.log"
METRICS = "metrics.json"
CONFIG = "config.yaml"
OVERRIDES = "overrides.yaml"
LEDGER = "stages.json"
RUN_LOG = "run.log"
RUN_INFO = "run_info.json"
SWEEP_PARTS = "sweep.parts"
GENERATION_PARTS = "generations.parts"
# Folders of resumable parts a killed run leaves to resume from (``steer.io.resumable``).
PARTS = (SWEEP_PARTS, GENERATION_PARTS)
SWEEP_COLUMNS = ("split", "example_id", "m", "loss_pos", "loss_neg", "pref_odds", "util_odds")


def read_pairs(run_dir: str | Path, split: str | None = None) -> list[PairRecord]:
    """The records of ``pairs.jsonl`` (one split, or all)."""
    return [r for r in _read_pairs_file(Path(run_dir) / PAIRS) if split is None or r.split == split]


def write_pairs(run_dir: str | Path, records: list[PairRecord]) -> None:
    _write_pairs_file(Path(run_dir) / PAIRS, records)


def read_sweep(run_dir: str | Path) -> pd.DataFrame:
    """``sweep.parquet``; a damaged file or one without the sweep's columns is a ``CorruptArtifact``."""
    return read_parquet(Path(run_dir) / SWEEP, SWEEP_COLUMNS)


def write_sweep(run_dir: str | Path, frame: pd.DataFrame) -> None:
    write_table(run_dir, SWEEP, frame)


def read_table(run_dir: str | Path, name: str) -> pd.DataFrame:
    """A parquet table of the run (``GENERATIONS``, ``JUDGMENTS``, ``ACCURACY``)."""
    return pd.read_parquet(Path(run_dir) / name)


def write_table(run_dir: str | Path, name: str, frame: pd.DataFrame) -> None:
    with atomic_path(Path(run_dir) / name) as tmp:
        frame.to_parquet(tmp, index=False)


def write_json(path: Path, value: dict) -> None:
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def read_fit(run_dir: str | Path) -> dict:
    return read_json(Path(run_dir) / FIT)


def write_fit(run_dir: str | Path, fit: dict) -> None:
    write_json(Path(run_dir) / FIT, fit)


def read_meta(run_dir: str | Path) -> dict:
    """``intervention.json``: the intervention's form, layer, shapes and training summary."""
    return read_json(Path(run_dir) / META)


def read_metrics(run_dir: str | Path) -> dict:
    """``metrics.json`` (one section per stage); empty when no stage has written one."""
    path = Path(run_dir) / METRICS
    return read_json(path) if path.is_file() else {}


def update_metrics(run_dir: str | Path, section: str, values: dict, replace: bool = False) -> None:
    """Merge ``values`` into ``section`` of ``metrics.json`` (or replace the section), atomically;
    other sections are kept."""
    metrics = read_metrics(run_dir)
    metrics[section] = dict(values) if replace else {**metrics.get(section, {}), **values}
    write_json(Path(run_dir) / METRICS, metrics)


def read_config(run_dir: str | Path) -> dict:
    """The resolved config a run wrote (``config.yaml``) as plain dicts and lists."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        raise ValueError(f"{path} is missing")
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return config


def write_config(run_dir: str | Path, config: dict) -> None:
    """Write the resolved config (plain containers, secrets already scrubbed) as ``config.yaml``."""
    from omegaconf import OmegaConf

    atomic_write_text(Path(run_dir) / CONFIG, OmegaConf.to_yaml(OmegaConf.create(config)))


def read_overrides(run_dir: str | Path) -> dict[str, str]:
    """``overrides.yaml``: the fingerprinted keys the run's command line set (``key: value`` as
    written); empty for a run of the default config or one written before the file existed."""
    path = Path(run_dir) / OVERRIDES
    if not path.is_file():
        return {}
    value = yaml.safe_load(path.read_text()) or {}
    if not isinstance(value, dict):
        raise ValueError(f"{path} does not hold a mapping")
    return {str(k): str(v) for k, v in value.items()}


def write_overrides(run_dir: str | Path, overrides: dict[str, str]) -> None:
    atomic_write_text(Path(run_dir) / OVERRIDES, yaml.safe_dump(dict(overrides), sort_keys=True))
