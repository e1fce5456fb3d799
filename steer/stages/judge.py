"""The judge stage: steered generation on the test prompts, an LLM judge, and the data set's metrics.

Glue only: the protocol per data set (``steer.judge.protocols``), rubrics, cache, client, local
server and the choice of m live in ``steer.judge``. Per run:

1. choose m (``judge.select``: fixed, validation on half of the test prompts, or fit);
2. generate under the intervention at m = 0 (Vanilla) and the chosen m on the report prompts;
3. judge every generation with the protocol's rubrics (accuracy from a scoring pass needs no judge);
4. write ``generations.parquet``, ``judgments.parquet`` and the ``judge`` section of ``metrics.json``.

Every judge answer is cached (``$STEER_CACHE/judge``): a re-run makes no HTTP call for what was
answered, and with ``judge=local`` starts no server when nothing is missing. If the endpoint fails
after its retries, the judgments so far are written to ``judgments.parquet`` (and are in the cache)
before the error propagates.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import numbers
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from steer.atomic import atomic_path, atomic_write_text
from steer.data import PairRecord, render_prompt
from steer.interventions import DynamicAffine
from steer.judge.cache import AnswerCache
from steer.judge.client import Answer, Call, JudgeClient, JudgeError
from steer.judge.protocols import Protocol, condition_metrics, get_protocol
from steer.judge.rubrics import Rubric, get_rubric
from steer.judge.select import METHODS, Choice, by_fit, by_validation, fixed
from steer.judge.server import local_server
from steer.models import resolve_source
from steer.stages.context import RunContext
from steer.stages.fit import FIT_FILE
from steer.stages.runner import Stage
from steer.sweep import sweep

log = logging.getLogger("steer")

GENERATIONS = "generations.parquet"
JUDGMENTS = "judgments.parquet"
METRICS = "metrics.json"
SERVER_LOG = "judge_server.log"
SCORINGS = ("parsed", "expected")
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


# ---------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """The ``judge`` config as plain, checked values."""

    protocol: Protocol
    rubrics: tuple[Rubric, ...]
    # The metric judge.select=validation maximises: the protocol's; with judge.rubrics overridden,
    # the first rubric's mean score (accuracy when no rubric is left).
    headline: str
    backend: str
    model: str
    base_url: str | None
    api_key_env: str | None
    device: str
    startup_timeout: float
    select: str
    m: float | None
    candidates: tuple[float, ...]
    max_util_drop: float
    scoring: str
    top_logprobs: int
    temperature: float
    max_tokens: int | None
    concurrency: int
    max_retries: int
    timeout: float
    max_new_tokens: int
    do_sample: bool
    gen_temperature: float
    top_p: float
    seed: int
    batch_size: int
    cache_dir: str | None


def _positive_int(value, key: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{key} must be a positive integer, got {value!r}")
    return value


def _number(value, key: str) -> float:
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or not math.isfinite(value):
        raise ValueError(f"{key} must be a finite number, got {value!r}")
    return float(value)


def settings(cfg: DictConfig) -> Settings:
    """Check the ``judge`` config against the data set; every error names its key. No model loads."""
    j = OmegaConf.to_container(cfg.judge, resolve=True)
    try:
        protocol = get_protocol(cfg.dataset.loader)
    except KeyError as err:
        raise ValueError(err.args[0]) from None
    names = protocol.rubrics if j.get("rubrics") is None else tuple(j["rubrics"])
    try:
        rubrics = tuple(get_rubric(name) for name in names)
    except KeyError as err:
        raise ValueError(f"judge.rubrics: {err.args[0]}") from None
    backend = j.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"judge.backend={backend!r} is not one of {', '.join(BACKENDS)} (choose judge=local|openai)")
    if not j.get("model"):
        raise ValueError("judge.model is empty: name the judge model")
    select = j.get("select")
    if select not in METHODS:
        raise ValueError(f"judge.select={select!r} is not one of {', '.join(METHODS)}")
    m = None if j.get("m") is None else _number(j["m"], "judge.m")
    if select == "fixed" and m is None:
        raise ValueError("judge.select=fixed needs judge.m (the multiplier to judge), e.g. judge.m=8")
    raw = j.get("candidates")
    if raw is None:
        raw = [x for x in cfg.sweep.grid or [] if isinstance(x, numbers.Real) and x > 0]
    candidates = tuple(sorted({_number(x, "judge.candidates") for x in raw}))
    if select == "validation" and not candidates:
        raise ValueError("judge.select=validation needs judge.candidates (multipliers to try), e.g. [2,4,8]")
    scoring = j.get("scoring")
    if scoring not in SCORINGS:
        raise ValueError(f"judge.scoring={scoring!r} is not one of {', '.join(SCORINGS)}")
    gen = j.get("generation") or {}
    max_new = protocol.max_new_tokens if gen.get("max_new_tokens") is None else gen["max_new_tokens"]
    do_sample = protocol.do_sample if gen.get("do_sample") is None else bool(gen["do_sample"])
    gen_t = protocol.temperature if gen.get("temperature") is None else gen["temperature"]
    if names == protocol.rubrics:
        headline = protocol.headline
    elif names:
        headline = names[0]
    elif protocol.accuracy:
        headline = "accuracy"
    else:
        raise ValueError(
            f"judge.rubrics is empty and dataset.loader={cfg.dataset.loader} has no accuracy: nothing to judge"
        )
    out = Settings(
        protocol=protocol,
        rubrics=rubrics,
        headline=headline,
        backend=backend,
        model=str(j["model"]),
        base_url=j.get("base_url"),
        api_key_env=j.get("api_key_env"),
        device=str(j.get("device") or "auto"),
        startup_timeout=_number(j.get("startup_timeout", 300), "judge.startup_timeout"),
        select=select,
        m=m,
        candidates=candidates,
        max_util_drop=_number(j.get("max_util_drop"), "judge.max_util_drop"),
        scoring=scoring,
        top_logprobs=_positive_int(j.get("top_logprobs"), "judge.top_logprobs") if scoring == "expected" else 0,
        temperature=_number(j.get("temperature"), "judge.temperature"),
        max_tokens=None if j.get("max_tokens") is None else _positive_int(j["max_tokens"], "judge.max_tokens"),
        concurrency=_positive_int(j.get("concurrency"), "judge.concurrency"),
        max_retries=int(_number(j.get("max_retries"), "judge.max_retries")),
        timeout=_number(j.get("timeout"), "judge.timeout"),
        max_new_tokens=_positive_int(max_new, "judge.generation.max_new_tokens"),
        do_sample=do_sample,
        gen_temperature=_number(gen_t, "judge.generation.temperature"),
        top_p=_number(gen.get("top_p", 1.0), "judge.generation.top_p"),
        seed=int(_number(gen.get("seed", 0), "judge.generation.seed")),
        batch_size=_positive_int(gen.get("batch_size"), "judge.generation.batch_size"),
        cache_dir=j.get("cache_dir"),
    )
    if out.max_util_drop < 0:
        raise ValueError(f"judge.max_util_drop must be >= 0, got {out.max_util_drop!r}")
    if out.max_retries < 0 or out.timeout <= 0:
        raise ValueError("judge.max_retries must be >= 0 and judge.timeout > 0")
    if out.do_sample and not hasattr(steer_generate(), "generate"):
        raise ValueError(
            "judge.generation.do_sample=true needs steered sampling (steer.generate.generate), which this "
            "version lacks; set judge.generation.do_sample=false for greedy generation"
        )
    if rubrics:  # accuracy alone (psychopathy) calls no judge
        BACKENDS[backend].check(out)
    return out


def check(cfg: DictConfig) -> None:
    """Cheap checks before any model loads (``steer.stages.validate`` turns errors into ConfigError)."""
    settings(cfg)


# ---------------------------------------------------------------- backends


class LocalBackend:
    """``transformers serve`` for ``judge.model`` (a model source) on 127.0.0.1, started on demand."""

    @staticmethod
    def check(s: Settings) -> None:
        if s.base_url:
            raise ValueError("judge=local starts its own server: leave judge.base_url null (or use judge=openai)")

    @staticmethod
    def model_name(s: Settings) -> str:
        return resolve_source(s.model)  # transformers serve names a model by its folder path

    @staticmethod
    def connect(s: Settings, stack: contextlib.ExitStack, run_dir: Path):
        def start() -> tuple[str, str]:
            server = stack.enter_context(
                local_server(LocalBackend.model_name(s), run_dir / SERVER_LOG, s.device, s.startup_timeout)
            )
            return server.base_url, "unused-by-transformers-serve"

        return start


class OpenAIBackend:
    """Any OpenAI-compatible endpoint at ``judge.base_url``; the key from ``$judge.api_key_env``."""

    @staticmethod
    def check(s: Settings) -> None:
        if not s.base_url:
            raise ValueError("judge.base_url is empty: give the endpoint, e.g. https://api.openai.com/v1")
        if not s.api_key_env:
            raise ValueError("judge.api_key_env is empty: name the environment variable that holds the API key")
        if not os.environ.get(s.api_key_env):
            raise ValueError(
                f"the judge's API key variable {s.api_key_env} is not set (judge.api_key_env): "
                f"export {s.api_key_env}=... before running judge=openai"
            )

    @staticmethod
    def model_name(s: Settings) -> str:
        return s.model

    @staticmethod
    def connect(s: Settings, stack: contextlib.ExitStack, run_dir: Path):
        return lambda: (s.base_url, os.environ[s.api_key_env])


BACKENDS = {"local": LocalBackend, "openai": OpenAIBackend}


# ---------------------------------------------------------------- generation


def steer_generate():
    import steer.generate

    return steer.generate


@dataclass(frozen=True)
class Generation:
    prompt_index: int
    m: float
    text: str
    n_tokens: int


def generate_steered(
    model, tokenizer, prompts: Sequence[str], intervention: DynamicAffine, multipliers: Sequence[float], s: Settings
) -> list[Generation]:
    """The one adapter to steered generation: every prompt at every multiplier.

    Until ``steer.generate.generate`` (one pass for all multipliers, sampling) is merged, this runs
    ``greedy_generate`` once per m under ``intervention.attached``; the token count is that of the
    decoded answer re-tokenised.
    """
    gen = steer_generate()
    out: list[Generation] = []
    for m in multipliers:
        with intervention.attached(model, multiplier=float(m)):
            texts = gen.greedy_generate(model, tokenizer, prompts, s.max_new_tokens, s.batch_size, progress=False)
        for i, text in enumerate(texts):
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            out.append(Generation(i, float(m), text, n))
    return out


# ---------------------------------------------------------------- the stage


@dataclass
class Work:
    """What one run of the stage accumulates: generation rows, judgment rows, timing."""

    generations: list[dict]
    judgments: list[dict]
    generation_seconds: float = 0.0
    generated_tokens: int = 0


def _queries(ctx: RunContext) -> dict[str, str]:
    """example_id → the raw query (question / instruction) of the data set, for the rubrics."""
    from steer.stages.data import load_dataset

    splits = ctx.splits if ctx.splits is not None else load_dataset(ctx.cfg)
    return {pair.id: pair.prompt for _, pairs in splits.items() for pair in pairs}


def _generate(ctx, s: Settings, iv, records, queries, part: str, grid: Sequence[float], work: Work) -> list[dict]:
    """Generate for ``records`` at every m of ``grid``; the rows (also appended to ``work``)."""
    system = s.protocol.system_prompt
    instruction = ctx.cfg.dataset.get("instruction")
    prompts = [
        r.prompt_text if system is None else render_prompt(ctx.tokenizer, queries[r.example_id], instruction, system)
        for r in records
    ]
    start = time.perf_counter()
    results = generate_steered(ctx.model, ctx.tokenizer, prompts, iv, grid, s)
    work.generation_seconds += time.perf_counter() - start
    rows = []
    for g in results:
        r = records[g.prompt_index]
        rows.append(
            {
                "split": r.split,
                "example_id": r.example_id,
                "part": part,
                "m": g.m,
                "prompt": prompts[g.prompt_index],
                "text": g.text,
                "tokens": g.n_tokens,
            }
        )
        work.generated_tokens += g.n_tokens
    work.generations += rows
    log.info("judge: generated %d answers (%s, m in %s)", len(rows), part, ", ".join(f"{m:g}" for m in grid))
    return rows


def _judge(client: JudgeClient, s: Settings, rows: list[dict], records, queries, work: Work) -> list[dict]:
    """Judge every generation row with every rubric; judgment rows (also appended to ``work``)."""
    by_id = {r.example_id: r for r in records}
    calls, meta = [], []
    for row in rows:
        record: PairRecord = by_id[row["example_id"]]
        values = s.protocol.fields(queries[record.example_id], record, row["text"])
        for rubric in s.rubrics:
            max_tokens = s.max_tokens or rubric.max_tokens
            calls.append(Call(rubric.name, rubric.version, tuple(rubric.messages(values)), max_tokens))
            meta.append((row, rubric))
    try:
        answers = client.judge(calls)
    except JudgeError as err:
        work.judgments += [
            _judgment(row, rubric, a) for (row, rubric), a in zip(meta, err.answers, strict=True) if a is not None
        ]
        raise
    out = [_judgment(row, rubric, a) for (row, rubric), a in zip(meta, answers, strict=True)]
    work.judgments += out
    return out


def _judgment(row: dict, rubric: Rubric, answer: Answer) -> dict:
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


def _accuracy(ctx, iv, records: list[PairRecord], grid: Sequence[float], batch_size: int) -> pd.DataFrame:
    """PrefOdds of ``records`` at every m of ``grid`` (the sweep engine), for accuracy."""
    return sweep(ctx.model, ctx.tokenizer, records, iv, sorted(set(grid)), batch_size=batch_size, progress=False)


def _accuracy_at(frame: pd.DataFrame, ids: set[str], m: float) -> float:
    rows = frame[(frame["m"] == m) & frame["example_id"].isin(ids)]
    return float((rows["pref_odds"] > 0).mean())


def _headline(s: Settings, judgments: list[dict], frame, ids: set[str], m: float) -> float | None:
    rows = pd.DataFrame(judgments, columns=JUDGMENT_COLUMNS)
    rows = rows[(rows["m"] == m) & rows["example_id"].isin(ids)]
    accuracy = _accuracy_at(frame, ids, m) if frame is not None else None
    return condition_metrics([r.name for r in s.rubrics], rows, accuracy).get(s.headline)


def run(ctx: RunContext) -> None:
    cfg = ctx.cfg
    s = settings(cfg)
    records = ctx.records("test")
    queries = _queries(ctx)
    iv = DynamicAffine.load(ctx.run_dir)
    if s.select == "validation":
        if len(records) < 2:
            raise ValueError("judge.select=validation needs at least 2 test pairs (half validate, half report)")
        half = (len(records) + 1) // 2
        validation, report = records[:half], records[half:]
    else:
        validation, report = [], records
    work = Work([], [])
    cache = AnswerCache(s.cache_dir)
    try:
        with contextlib.ExitStack() as stack:
            backend = BACKENDS[s.backend]
            client = JudgeClient(
                model=backend.model_name(s) if s.rubrics else s.model,
                connect=backend.connect(s, stack, ctx.run_dir),
                cache=cache,
                temperature=s.temperature,
                top_logprobs=s.top_logprobs,
                concurrency=s.concurrency,
                max_retries=s.max_retries,
                timeout=s.timeout,
                local=s.backend == "local",
            )
            choice = _choose(ctx, s, iv, client, validation, records, queries, work)
            frame = _accuracy(ctx, iv, records, [0.0, choice.m], cfg.sweep.batch_size) if s.protocol.accuracy else None
            if s.rubrics:
                rows = _generate(ctx, s, iv, report, queries, "report", sorted({0.0, choice.m}), work)
                _judge(client, s, rows, records, queries, work)
    except BaseException:  # the endpoint failed, or Ctrl-C: keep what was generated and judged
        _write_tables(ctx, work)
        raise
    finally:
        cache.close()
    _write_tables(ctx, work)
    metrics = _metrics(s, client, choice, work, frame, {r.example_id for r in report}, len(validation))
    _update_metrics(ctx.path(METRICS), "judge", metrics)
    _track(ctx, metrics, work)


def _choose(ctx, s: Settings, iv, client, validation, records, queries, work: Work) -> Choice:
    if s.select == "fixed":
        return fixed(s.m)
    if s.select == "fit":
        fit_json = json.loads(ctx.path(FIT_FILE).read_text())
        return by_fit(fit_json, (min(ctx.cfg.sweep.grid), max(ctx.cfg.sweep.grid)), s.max_util_drop)
    ids = {r.example_id for r in validation}
    candidates = list(s.candidates)
    frame = _accuracy(ctx, iv, validation, candidates, ctx.cfg.sweep.batch_size) if s.protocol.accuracy else None
    if s.rubrics:
        rows = _generate(ctx, s, iv, validation, queries, "validation", candidates, work)
        _judge(client, s, rows, records, queries, work)
    scores = {m: _headline(s, work.judgments, frame, ids, m) for m in candidates}
    return by_validation(scores, s.headline)


def _metrics(s: Settings, client: JudgeClient, choice: Choice, work: Work, frame, report_ids, n_validation) -> dict:
    table = pd.DataFrame(work.judgments, columns=JUDGMENT_COLUMNS)
    table = table[table["part"] == "report"]
    conditions = {}
    for name, m in (("vanilla", 0.0), ("steered", choice.m)):
        accuracy = _accuracy_at(frame, report_ids, m) if frame is not None else None
        conditions[name] = {"m": m, **condition_metrics([r.name for r in s.rubrics], table[table["m"] == m], accuracy)}
    usage = client.usage.as_dict()
    seconds = work.generation_seconds
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
            "base_url": client.base_url if s.backend == "openai" else None,
        },
        "usage": usage,
        "generation": {
            "max_new_tokens": s.max_new_tokens,
            "do_sample": s.do_sample,
            "answers": len(work.generations),
            "tokens": work.generated_tokens,
            "seconds": seconds,
            "tokens_per_s": work.generated_tokens / seconds if seconds > 0 else None,
        },
    }


def _write_tables(ctx: RunContext, work: Work) -> None:
    for name, rows, columns in (
        (GENERATIONS, work.generations, GENERATION_COLUMNS),
        (JUDGMENTS, work.judgments, JUDGMENT_COLUMNS),
    ):
        with atomic_path(ctx.path(name)) as tmp:
            pd.DataFrame(rows, columns=columns).to_parquet(tmp, index=False)


def _update_metrics(path: Path, section: str, values: dict) -> None:
    """Merge ``section`` into ``metrics.json`` atomically (the other sections are kept)."""
    current = json.loads(path.read_text()) if path.is_file() else {}
    current[section] = values
    atomic_write_text(path, json.dumps(current, indent=2, allow_nan=False) + "\n")


def _track(ctx: RunContext, metrics: dict, work: Work) -> None:
    flat = {}
    for condition in ("vanilla", "steered"):
        flat.update({f"judge/{condition}/{k}": v for k, v in metrics[condition].items() if v is not None})
    flat.update({f"judge/usage/{k}": v for k, v in metrics["usage"].items() if v is not None})
    flat["judge/m"] = metrics["m"]
    ctx.tracker.summary(flat)
    if work.generations:
        generations = pd.DataFrame(work.generations, columns=GENERATION_COLUMNS).drop(columns=["prompt"])
        scores = pd.DataFrame(work.judgments, columns=JUDGMENT_COLUMNS).pivot_table(
            index=["example_id", "part", "m"], columns="rubric", values="score", aggfunc="first"
        )
        ctx.tracker.table("judge/generations", generations.join(scores, on=["example_id", "part", "m"]))


STAGE = Stage(
    name="judge",
    run=run,
    keys=("judge",),
    ignore=(
        "judge.concurrency",
        "judge.max_retries",
        "judge.timeout",
        "judge.startup_timeout",
        "judge.device",
        "judge.cache_dir",
    ),
    outputs=(GENERATIONS, JUDGMENTS, METRICS),
    after=("fit",),
)
