"""Polarity pairs, seeded splits, prompt rendering and the ``pairs.jsonl`` record.

A ``PolarityPair`` is one query with a concept-positive and a concept-negative answer. The run
renders each query through the model's chat template once, and writes the exact strings it scores
to ``pairs.jsonl`` so any later tool can re-score them independently.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from steer.io.atomic import atomic_write_text


@dataclass(frozen=True)
class PolarityPair:
    """One example: query, concept-positive answer A_p, concept-negative answer A_n.

    ``negative=None`` means A_n is the model's own greedy answer to the prompt (AxBench): the data
    stage generates it (``steer.core.own_answers``) before the pair is written. ``meta`` carries what
    downstream stages need (e.g. AxBench's ``concept_id`` and ``concept``).
    """

    id: str
    prompt: str
    positive: str
    negative: str | None
    meta: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Splits:
    train: list[PolarityPair]
    test: list[PolarityPair]
    # sha256 of the data the pairs were read from: keys caches derived from it (generated A_n).
    digest: str = ""
    # What the pairs were read from (a file, folder or hub file); recorded in pairs.jsonl with the digest.
    source: str = ""
    # Carved from train by ``carve_validation`` (``dataset.validation``): what tuning reads; empty by default.
    validation: list[PolarityPair] = field(default_factory=list)

    def items(self) -> Iterable[tuple[str, list[PolarityPair]]]:
        """The non-empty splits in the order ``pairs.jsonl`` holds them (train, validation, test)."""
        named = (("train", self.train), ("validation", self.validation), ("test", self.test))
        return ((name, pairs) for name, pairs in named if pairs or name != "validation")


# The key of a record's raw prompt (before the chat template and the instruction) in pairs.jsonl.
QUERY = "query"


@dataclass(frozen=True)
class PairRecord:
    """A line of ``pairs.jsonl``: a pair as it is scored, with the rendered prompt."""

    split: str
    example_id: str
    prompt_text: str
    positive: str
    negative: str
    meta: dict = field(default_factory=dict)

    def to_json(self) -> str:
        row = {
            "split": self.split,
            "example_id": self.example_id,
            "prompt_text": self.prompt_text,
            "positive": self.positive,
            "negative": self.negative,
        }
        return json.dumps({**row, **self.meta}, ensure_ascii=False)

    @classmethod
    def from_json(cls, line: str) -> PairRecord:
        row = json.loads(line)
        core = {k: row.pop(k) for k in ("split", "example_id", "prompt_text", "positive", "negative")}
        return cls(**core, meta=row)


def seeded_split(pairs: Sequence[PolarityPair], n_train: int, n_test: int, seed: int) -> Splits:
    """Shuffle with ``seed`` and cut ``n_train`` then ``n_test`` examples."""
    if n_train + n_test > len(pairs):
        raise ValueError(f"asked for {n_train} train + {n_test} test examples, the data set has {len(pairs)}")
    order = list(pairs)
    random.Random(seed).shuffle(order)
    return Splits(order[:n_train], order[n_train : n_train + n_test])


def sample(pairs: Sequence[PolarityPair], n: int | None, seed: int) -> list[PolarityPair]:
    """A seeded subsample of ``n`` pairs in their original order (all of them when n is None)."""
    if n is None or n >= len(pairs):
        return list(pairs)
    keep = sorted(random.Random(seed).sample(range(len(pairs)), n))
    return [pairs[i] for i in keep]


def validation_size(validation: int | float | None, n_train: int) -> int:
    """How many train pairs ``dataset.validation`` asks for: a count (int ≥ 0) or a fraction of
    train (0 < f < 1); 0 or null = none. At least one pair must stay in train."""
    if validation is None or validation == 0:
        return 0
    if isinstance(validation, bool) or not isinstance(validation, (int, float)):
        raise ValueError(f"dataset.validation must be a count, a fraction in (0, 1) or 0, got {validation!r}")
    if isinstance(validation, float) and not validation.is_integer():
        if not 0 < validation < 1:
            raise ValueError(f"dataset.validation={validation}: a fraction must lie in (0, 1)")
        n = max(1, round(validation * n_train))
    else:
        n = int(validation)
        if n < 0:
            raise ValueError(f"dataset.validation must be >= 0, got {validation!r}")
    if n >= n_train:
        raise ValueError(
            f"dataset.validation={validation} asks for {n} of {n_train} train pairs; at least one must stay in train"
        )
    return n


def carve_validation(splits: Splits, validation: int | float | None, seed: int) -> Splits:
    """Move ``validation_size`` train pairs, drawn with ``seed``, to the validation split (train
    keeps its order). Disjoint from train by construction and from test since it comes from train."""
    n = validation_size(validation, len(splits.train))
    if n == 0:
        return splits
    chosen = set(random.Random(seed).sample(range(len(splits.train)), n))
    train = [p for i, p in enumerate(splits.train) if i not in chosen]
    held = [p for i, p in enumerate(splits.train) if i in chosen]
    return replace(splits, train=train, validation=held)


def apply_limit(splits: Splits, limit: int | None) -> Splits:
    """Cap every split at ``limit`` examples (``dataset.limit``), keeping the split order."""
    if limit is None:
        return splits
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
        raise ValueError(f"dataset.limit must be a positive integer or null, got {limit!r}")
    return replace(splits, train=splits.train[:limit], test=splits.test[:limit], validation=splits.validation[:limit])


def check_nonempty(splits: Splits, name: str) -> Splits:
    for split, pairs in splits.items():
        if not pairs:
            raise ValueError(f"dataset={name}: the {split} split is empty (check dataset.path and dataset.limit)")
    return splits


def strip_answer(text: str) -> str:
    """The answer-whitespace rule, applied by every loader to every answer: strip both ends.

    The files carry answers like " Yes" (written to follow "Answer:" in a plain-text prompt). In
    steer an answer follows the chat template's generation prompt, which already ends the
    assistant header with a newline, so the natural first token is "Yes", not " Yes".
    """
    return text.strip()


def render_prompt(tokenizer, prompt: str, instruction: str | None = None, system: str | None = None) -> str:
    """The user turn (after an optional system turn) rendered through the chat template with the
    generation prompt, as text.

    Rendering to text (not ids) keeps the token rule in one place, and avoids transformers 5's
    ``apply_chat_template(tokenize=True)`` returning a BatchEncoding.
    """
    content = prompt if not instruction else f"{prompt}\n\n{instruction}"
    if getattr(tokenizer, "chat_template", None):
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        return tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    return (f"{system}\n\n" if system else "") + content + "\n"


def to_records(tokenizer, splits: Splits, instruction: str | None = None) -> list[PairRecord]:
    records = []
    for split, pairs in splits.items():
        for pair in pairs:
            meta = {**pair.meta, QUERY: pair.prompt}  # the raw prompt: the judge asks about it
            if splits.source:
                meta.update(source=splits.source, source_sha256=splits.digest)
            if instruction:
                meta["instruction"] = instruction
            if pair.negative is None:
                raise ValueError(f"pair {pair.id}: A_n (the model's own answer) has not been generated")
            text = render_prompt(tokenizer, pair.prompt, instruction)
            records.append(PairRecord(split, pair.id, text, pair.positive, pair.negative, meta))
    return records


def write_pairs(path: str | Path, records: Sequence[PairRecord]) -> None:
    atomic_write_text(path, "".join(r.to_json() + "\n" for r in records))


def read_pairs(path: str | Path) -> list[PairRecord]:
    path = Path(path)
    records = []
    with open(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if line.strip():
                try:
                    records.append(PairRecord.from_json(line))
                except (KeyError, TypeError, json.JSONDecodeError) as err:
                    raise ValueError(f"{path}:{lineno}: not a pairs.jsonl record ({err})") from err
    return records
