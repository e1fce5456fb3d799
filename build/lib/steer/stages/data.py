"""The data stage (implicit): load the data set, render prompts, write ``pairs.jsonl``.

Where a data set leaves A_n to the model (AxBench: ``negative=None``), the stage loads the model
and fills A_n with its greedy answer to the rendered prompt (``steer.core.own_answers``, cached under
``$STEER_CACHE``), under the same whitespace rule as every other answer.

The stage is ``parallel``: under ``accelerate launch`` every process loads the data (cheap); when
A_n must be generated, process r generates the answers of prompts r, r + N, ... of the missing
ones (``RunContext.map_sharded``) and the main process gathers them, writes the cache and alone
writes ``pairs.jsonl``. With nothing to generate the other processes return at once.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.core.own_answers import own_answers
from steer.datasets import load_splits, loader_options
from steer.pairs import (
    PairRecord,
    PolarityPair,
    Splits,
    apply_limit,
    carve_validation,
    check_nonempty,
    render_prompt,
    strip_answer,
    to_records,
)
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext

log = logging.getLogger("steer")


def needs_own_answers(splits: Splits) -> bool:
    return any(p.negative is None for _, pairs in splits.items() for p in pairs)


def generation_settings(dataset: dict) -> tuple[int, int]:
    """``dataset.generation.{max_new_tokens,batch_size}``: how A_n is generated, checked."""
    gen = dataset.get("generation") or {}
    values = []
    for key in ("max_new_tokens", "batch_size"):
        value = gen.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(
                f"dataset.generation.{key} must be a positive integer (dataset={dataset['name']} generates A_n), "
                f"got {value!r}"
            )
        values.append(value)
    return values[0], values[1]


def load_dataset(cfg: DictConfig) -> Splits:
    """The train/validation/test splits the config asks for, limited, checked non-empty. Cheap: no
    model. The validation pairs (``dataset.validation``) are drawn from the full train split with
    ``seed`` before ``dataset.limit`` caps each split."""
    dataset = OmegaConf.to_container(cfg.dataset, resolve=True)
    splits = load_splits(dataset["loader"], loader_options(dataset))
    splits = carve_validation(splits, dataset.get("validation"), int(cfg.seed))
    splits = check_nonempty(apply_limit(splits, dataset.get("limit")), dataset["name"])
    if needs_own_answers(splits):
        generation_settings(dataset)
    return splits


def with_own_answers(ctx: RunContext, splits: Splits, instruction: str | None) -> Splits | None:
    """``splits`` with every missing A_n set to the model's greedy answer to the rendered prompt.
    A collective under several processes (the generation is sharded): None on all but the main one."""
    if not needs_own_answers(splits):
        return splits
    max_new_tokens, batch_size = generation_settings(OmegaConf.to_container(ctx.cfg.dataset, resolve=True))
    todo = [p for _, pairs in splits.items() for p in pairs if p.negative is None]
    prompts = [render_prompt(ctx.tokenizer, p.prompt, instruction) for p in todo]
    found = own_answers(
        ctx.model,
        ctx.tokenizer,
        prompts,
        splits.digest,
        max_new_tokens,
        batch_size,
        ctx.progress,
        map_items=ctx.map_sharded,
    )
    if found is None:
        return None
    answers = iter(found)

    def fill(pairs: list[PolarityPair]) -> list[PolarityPair]:
        out = []
        for pair in pairs:
            if pair.negative is None:
                answer = strip_answer(next(answers))
                if not answer:
                    raise ValueError(f"pair {pair.id}: the model's greedy answer is empty, it cannot serve as A_n")
                pair = replace(pair, negative=answer)
            out.append(pair)
        return out

    return replace(splits, train=fill(splits.train), validation=fill(splits.validation), test=fill(splits.test))


def pair_records(ctx: RunContext, splits: Splits, instruction: str | None) -> list[PairRecord] | None:
    """The records of ``pairs.jsonl`` for ``splits`` rendered with ``instruction`` (None on all but
    the main process when A_n is generated across processes)."""
    filled = with_own_answers(ctx, splits, instruction)
    return None if filled is None else to_records(ctx.tokenizer, filled, instruction)


class DataStage(Stage):
    """Implicit: runs whenever a later stage needs ``pairs.jsonl`` for this config."""

    name = "data"
    keys = ("model.source", "precision", "dataset")
    ignore = ("dataset.answer_format",)
    outputs = (rundir.PAIRS,)
    reads = ("model", "data")
    implicit = True
    parallel = True  # only while A_n is generated do the other processes do anything

    def check(self, cfg: DictConfig) -> None:
        """The data set loads (options, files, limit, non-empty splits); no model is needed."""
        try:
            load_dataset(cfg)  # a bad data set fails before anything is written
        except FileNotFoundError as err:
            raise ConfigError(str(err)) from err

    def run(self, ctx: RunContext) -> None:
        splits = load_dataset(ctx.cfg)
        if not (ctx.is_main or needs_own_answers(splits)):
            return
        records = pair_records(ctx, splits, ctx.cfg.dataset.get("instruction"))
        if records is None:
            return
        rundir.write_pairs(ctx.run_dir, records)
        log.info("pairs: %s -> %s", ", ".join(f"{len(p)} {name}" for name, p in splits.items()), ctx.path(rundir.PAIRS))
