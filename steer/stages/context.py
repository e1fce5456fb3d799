"""What the stages of one run share: the config, the run directory, the processes, and a lazily
loaded model.

Under ``accelerate launch`` every process builds its own context; ``state`` (accelerate's
``PartialState``) says which one is the main process and holds the barrier the runner uses.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from functools import cached_property
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType
from omegaconf import DictConfig

from steer.data import PairRecord, Splits, read_pairs
from steer.models import load_model, load_tokenizer
from steer.precision import model_dtype
from steer.tracking import Tracker

log = logging.getLogger("steer")

PAIRS_FILE = "pairs.jsonl"
# While the main process runs a stage alone (data, sweep), the others wait at a barrier: allow long.
BARRIER_TIMEOUT = timedelta(hours=48)


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class RunContext:
    """One run: stages call ``ctx.model``/``ctx.tokenizer`` and the model loads once, on first use."""

    def __init__(self, cfg: DictConfig, run_dir: Path, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.tracker = tracker or Tracker.disabled()
        self.state = PartialState(cpu=pick_device(cfg.device) == "cpu", timeout=BARRIER_TIMEOUT)
        # The data set as checked before the run started: the data stage writes it without reading
        # the files (or the hub) a second time.
        self.splits: Splits | None = None

    def path(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def device(self) -> str:
        """This process's device: its own GPU (or the CPU) when launched as several processes."""
        if self.state.distributed_type == DistributedType.NO:
            return pick_device(self.cfg.device)
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    @cached_property
    def _loaded(self):
        log.info("loading model %s (%s)", self.cfg.model.name, self.cfg.model.source)
        return load_model(self.cfg.model.source, model_dtype(self.cfg.precision, self.device), self.device)

    @property
    def model(self):
        return self._loaded[0]

    @cached_property
    def tokenizer(self):
        if "_loaded" in self.__dict__:
            return self._loaded[1]
        return load_tokenizer(self.cfg.model.source)

    def records(self, split: str | None = None) -> list[PairRecord]:
        """The pairs of ``pairs.jsonl`` (one split, or all)."""
        records = read_pairs(self.path(PAIRS_FILE))
        return [r for r in records if split is None or r.split == split]
