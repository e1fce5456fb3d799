"""One judged evaluation: generation rows, judgment rows, and the metrics of the judge section.

The judge stage (``steer.stages.judge``) is glue around these functions: it generates (sharded
over processes), calls ``judge_rows`` on the main process, and writes what ``Work`` holds.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import pandas as pd

from steer.core.generate import Generation
from steer.judge.client import Answer, Call, JudgeClient, JudgeError
from steer.judge.protocols import condition_metrics
from steer.judge.rubrics import Rubric
from steer.judge.select import Choice
from steer.judge.settings import Settings
from steer.pairs import PairRecord

log = logging.getLogger("steer")

GENERATION_COLUMNS = ["split", "example_id", "part", "m", "prompt", "text", "tokens"]
JUDGMENT_COLUMNS = [
    "split",
    "example_id",
    "part",
    "m",
    "rubric",
    "rubric_version",
    "reply",
    "score",
    "parsed",
    "expected",
    "cached",
    "prompt_tokens",
    "completion_tokens",
]


@dataclass
class Work:
    """What one run of the stage accumulates: generation rows, judgment rows, timing."""

    generations: list[dict] = field(default_factory=list)
    judgments: list[dict] = field(default_factory=list)
    generation_seconds: float = 0.0

    @property
    def generated_tokens(self) -> int:
        return sum(int(row["tokens"]) for row in self.generations)


def generation_rows(record: PairRecord, prompt: str, part: str, generations: Sequence[Generation]) -> list[dict]:
    """The ``generations.parquet`` rows of one prompt's answers (one per m)."""
    return [
        {
            "split": record.split,
            "example_id": record.example_id,
            "part": part,
            "m": float(g.m),
            "prompt": prompt,
            "text": g.text,
            "tokens": len(g.token_ids),
        }
        for g in generations
    ]


def judgment(row: dict, rubric: Rubric, answer: Answer) -> dict:
    """The ``judgments.parquet`` row of one judge ``answer`` to one generation ``row``."""
    parsed = rubric.parse(answer.text)
    expected = rubric.expected(answer.text, answer.logprobs)
    return {
        **{k: row[k] for k in ("split", "example_id", "part", "m")},
        "rubric": rubric.name,
        "rubric_version": rubric.version,
        "reply": answer.text,
        "score": float("nan") if parsed.score is None else parsed.score,
        "parsed": parsed.parsed,
        "expected": float("nan") if expected is None else expected,
        "cached": answer.cached,
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
    }


def judge_rows(
    client: JudgeClient,
    s: Settings,
    rows: list[dict],
    records: dict[str, PairRecord],
    queries: dict[str, str],
    work: Work,
) -> list[dict]:
    """Judge every generation row with every rubric; the judgment rows (also appended to ``work``,
    the partial ones too when the endpoint fails)."""
    calls, meta = [], []
    for row in rows:
        record = records[row["example_id"]]
        values = s.protocol.fields(queries[record.example_id], record, row["text"])
        for rubric in s.rubrics:
            calls.append(
                Call(rubric.name, rubric.version, tuple(rubric.messages(values)), s.max_tokens or rubric.max_tokens)
            )
            meta.append((row, rubric))
    try:
        answers = client.judge(calls)
    except JudgeError as err:
        work.judgments += [judgment(r, rb, a) for (r, rb), a in zip(meta, err.answers, strict=True) if a is not None]
        raise
    out = [judgment(row, rubric, a) for (row, rubric), a in zip(meta, answers, strict=True)]
    work.judgments += out
    return out


def accuracy_at(frame: pd.DataFrame, ids: set[str], m: float) -> float:
    """Share of the pairs ``ids`` with PrefOdds > 0 at ``m`` in a sweep frame."""
    rows = frame[(frame["m"] == m) & frame["example_id"].isin(ids)]
    return float((rows["pref_odds"] > 0).mean())


def condition(s: Settings, judgments: list[dict], frame: pd.DataFrame | None, ids: set[str], m: float) -> dict:
    """The metrics of the prompts ``ids`` at ``m``: accuracy (from ``frame``) and the rubrics' scores."""
    rows = pd.DataFrame(judgments, columns=JUDGMENT_COLUMNS)
    rows = rows[(rows["m"] == m) & rows["example_id"].isin(ids)]
    accuracy = accuracy_at(frame, ids, m) if frame is not None else None
    return condition_metrics([r.name for r in s.rubrics], rows, accuracy)


def metrics(
    s: Settings, client: JudgeClient | None, choice: Choice, work: Work, frame, report_ids, n_validation
) -> dict:
    """The ``judge`` section of ``metrics.json``: the choice of m, Vanilla and steered metrics on the
    report prompts, the judge, its usage, and generation speed."""
    report = [j for j in work.judgments if j["part"] == "report"]
    conditions = {
        name: {"m": m, **condition(s, report, frame, report_ids, m)}
        for name, m in (("vanilla", 0.0), ("steered", choice.m))
    }
    seconds, tokens = work.generation_seconds, work.generated_tokens
    return {
        "protocol": {
            "accuracy": s.protocol.accuracy,
            "rubrics": {r.name: r.version for r in s.rubrics},
            "headline": s.headline,
        },
        "m": choice.m,
        "select": choice.method,
        "reason": choice.reason,
        "selection": choice.details,
        "prompts": {"validation": n_validation, "report": len(report_ids)},
        **conditions,
        "judge": {
            "backend": s.backend,
            "model": s.model,
            "scoring": s.scoring,
            "temperature": s.temperature,
            "base_url": client.base_url if client is not None and s.backend == "openai" else None,
        },
        "usage": client.usage.as_dict() if client is not None else {},
        "generation": {
            "max_new_tokens": s.generation.max_new_tokens,
            "do_sample": s.generation.do_sample,
            "temperature": s.generation.temperature if s.generation.do_sample else None,
            "answers": len(work.generations),
            "tokens": tokens,
            "seconds": seconds,
            "tokens_per_s": tokens / seconds if seconds > 0 else None,
        },
    }


def tracked(metrics: dict) -> dict:
    """The judge section flattened for W&B's summary: ``judge/<condition>/<metric>``, usage, m."""
    flat = {}
    for name in ("vanilla", "steered"):
        flat.update({f"judge/{name}/{k}": v for k, v in metrics[name].items() if v is not None})
    flat.update({f"judge/usage/{k}": v for k, v in metrics["usage"].items() if v is not None})
    flat["judge/m"] = metrics["m"]
    return flat


def scored_generations(generations: pd.DataFrame, judgments: pd.DataFrame) -> pd.DataFrame:
    """Every generation (without its prompt) with one column per rubric holding its parsed score."""
    table = generations.drop(columns=["prompt"])
    if judgments.empty:
        return table
    scores = judgments.pivot_table(index=["example_id", "part", "m"], columns="rubric", values="score", aggfunc="first")
    return table.join(scores, on=["example_id", "part", "m"])
