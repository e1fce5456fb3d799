"""The data stage (implicit): load the data set, render prompts, write ``pairs.jsonl``."""

from __future__ import annotations

import logging

from omegaconf import OmegaConf

from steer.data import apply_limit, check_nonempty, to_records, write_pairs
from steer.datasets import load_splits, loader_options
from steer.stages.context import PAIRS_FILE, RunContext
from steer.stages.runner import Stage

log = logging.getLogger("steer")


def load_dataset(cfg):
    """The train/test splits the config asks for, limited, checked non-empty."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    splits = load_splits(dataset["loader"], loader_options(dataset))
    return check_nonempty(apply_limit(splits, dataset.get("limit")), dataset["name"])


def run(ctx: RunContext) -> None:
    splits = load_dataset(ctx.cfg)
    records = to_records(ctx.tokenizer, splits, ctx.cfg.dataset.get("instruction"))
    write_pairs(ctx.path(PAIRS_FILE), records)
    log.info("pairs: %d train, %d test -> %s", len(splits.train), len(splits.test), ctx.path(PAIRS_FILE))


STAGE = Stage(name="data", run=run, keys=("model.source", "dataset"), outputs=(PAIRS_FILE,), implicit=True)
