"""The model's own greedy answers (AxBench's A_n), generated once and cached under ``$STEER_CACHE``.

A cache file holds the answers of one model to the prompts of one data file at one length cap:
its name hashes ``model_fingerprint(model)``, the data's digest and ``max_new_tokens``, so a
different model, checkpoint, dtype or data file never reads another's answers. Inside, answers are
keyed by the exact prompt text (chat template and any instruction included). Runs that need only
some prompts (``dataset.limit``) generate only those; later runs add the rest. Writes are atomic
and merge with what is on disk, so a crash never leaves a half-written cache.

Several processes: ``map_items`` (``RunContext.map_sharded``) splits the missing prompts across
them; only the main process, which gets every answer back, writes the cache, so processes never
race on the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from torch import nn

from steer.core.generate import greedy_generate
from steer.core.models import model_fingerprint
from steer.io.atomic import atomic_write_text
from steer.io.cache import cache_root

log = logging.getLogger("steer")

# (items, fn) -> fn's results for all items in order, or None on a process that gets none back.
Mapper = Callable[[list[str], Callable[[list[str]], list[str]]], list[str] | None]


def in_one_process(items: list[str], fn: Callable[[list[str]], list[str]]) -> list[str]:
    return list(fn(items))


def cache_file(model_key: str, data_digest: str, max_new_tokens: int) -> Path:
    key = hashlib.sha256(json.dumps([model_key, data_digest, max_new_tokens]).encode()).hexdigest()[:20]
    return cache_root() / "own_answers" / f"{key}.json"


def read_cache(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    try:
        answers = json.loads(path.read_text())["answers"]
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a cache of generated answers ({err}); delete it to regenerate") from err
    return answers


def own_answers(
    model: nn.Module,
    tokenizer,
    prompts: Sequence[str],
    data_digest: str,
    max_new_tokens: int,
    batch_size: int = 8,
    progress: bool = True,
    map_items: Mapper = in_one_process,
) -> list[str] | None:
    """The model's greedy answer to every prompt text, from the cache where it has them.

    ``map_items`` runs the generation of the missing answers (``in_one_process``, or
    ``RunContext.map_sharded`` across processes; every process must then call this function).
    Returns None on a process that ``map_items`` returns nothing to; that process writes nothing."""
    if not data_digest:
        raise ValueError("own_answers: the data digest is empty; it keys the cache")
    model_key = model_fingerprint(model)
    path = cache_file(model_key, data_digest, max_new_tokens)
    answers = read_cache(path)
    missing = list(dict.fromkeys(p for p in prompts if p not in answers))
    if missing:
        log.info(
            "generating the model's own answers: %d new prompt(s), %d cached (%s)", len(missing), len(answers), path
        )

    def generate(part: list[str]) -> list[str]:
        return greedy_generate(model, tokenizer, part, max_new_tokens, batch_size, progress) if part else []

    new = map_items(missing, generate)  # a collective under several processes, even with nothing missing
    if new is None:
        return None
    if new:
        answers = {**read_cache(path), **dict(zip(missing, new, strict=True))}
        record = {"model": model_key, "data": data_digest, "max_new_tokens": max_new_tokens, "answers": answers}
        atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    else:
        log.info("the model's own answers: all %d from the cache %s", len(prompts), path)
    return [answers[p] for p in prompts]
