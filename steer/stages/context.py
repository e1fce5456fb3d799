"""What the stages of one run share: the config, the run directory, and a lazily loaded model."""

from __future__ import annotations

import logging
from functools import cached_property
from pathlib import Path

import torch
from omegaconf import DictConfig

from steer.data import PairRecord, read_pairs
from steer.models import load_model, load_tokenizer
from steer.tracking import Tracker

log = logging.getLogger("steer")

PAIRS_FILE = "pairs.jsonl"


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

    def path(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def device(self) -> str:
        return pick_device(self.cfg.device)

    @cached_property
    def _loaded(self):
        log.info("loading model %s (%s)", self.cfg.model.name, self.cfg.model.source)
        return load_model(self.cfg.model.source, self.cfg.model.dtype, self.device)

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
