"""The judge stage: steered generation on the test prompts, an LLM judge, and the data set's metrics.

Glue only: settings, protocols, rubrics, cache, client, local server, the choice of m and the
metrics live in ``steer.judge``. Per run:

1. choose m (``judge/select``: fixed, validation on half of the test prompts, or fit);
2. generate under the intervention at m = 0 (Vanilla) and the chosen m on the report prompts, all
   multipliers of a prompt in one batch, the prompts sharded over the processes when launched as
   several;
3. on the main process, judge every generation with the protocol's rubrics (accuracy from a scoring
   pass needs no judge);
4. write ``generations.parquet``, ``judgments.parquet``, ``accuracy.parquet`` (PrefOdds per test
   pair at m = 0 and the judged m, empty without accuracy) and the ``judge`` section of ``metrics.json``.

Every judge answer is cached (``$STEER_CACHE/judge``): a re-run makes no HTTP call for what was
answered, and with ``judge=local`` starts no server when nothing is missing. If the endpoint fails
after its retries, the judgments so far are written to ``judgments.parquet`` (and are in the cache)
before the error propagates.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from accelerate.utils import broadcast_object_list
from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.core.generate import generate
from steer.core.interventions import DynamicAffine
from steer.core.sweep import sweep
from steer.io.resumable import finish
from steer.judge.cache import AnswerCache
from steer.judge.client import JudgeClient
from steer.judge.evaluate import (
    GENERATION_COLUMNS,
    JUDGMENT_COLUMNS,
    Work,
    condition,
    generation_rows,
    judge_rows,
    metrics,
    scored_generations,
    tracked,
)
from steer.judge.select import Choice, by_fit, by_validation, fixed, split_records
from steer.judge.settings import Settings, make_client, parse_settings
from steer.pairs import QUERY, PairRecord, render_prompt
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext
from steer.stages.schema import choices

log = logging.getLogger("steer")


def judge_settings(cfg: DictConfig) -> Settings:
    """The checked settings; ``judge.select`` carries its option's name (``judge/select=...``) as ``method``."""
    judge = OmegaConf.to_container(cfg.judge, resolve=True)
    judge["select"] = {**judge["select"], "method": choices(cfg)["judge/select"]}
    return parse_settings(judge, cfg.dataset.loader, list(cfg.sweep.grid or []))


class JudgeStage(Stage):
    name = "judge"
    keys = ("judge", "sweep.grid", "sweep.batch_size", "dataset.loader", "dataset.instruction")
    ignore = (
        "sweep.batch_size",
        "judge.concurrency",
        "judge.max_retries",
        "judge.timeout",
        "judge.startup_timeout",
        "judge.device",
        "judge.cache_dir",
        "judge.generation.batch_size",
    )
    outputs = (rundir.GENERATIONS, rundir.JUDGMENTS, rundir.ACCURACY, rundir.METRICS)
    after = ("fit",)
    parallel = True  # generation is sharded over the processes; the main one judges and writes

    def check(self, cfg: DictConfig) -> None:
        """The judge settings against the data set (the API key variable too); no model loads."""
        judge_settings(cfg)

    def run(self, ctx: RunContext) -> None:
        job = Job(ctx, judge_settings(ctx.cfg))
        cache = AnswerCache(job.s.cache_dir) if ctx.is_main else None
        try:
            with contextlib.ExitStack() as stack:
                if cache is not None:
                    job.client = make_client(job.s, stack, ctx.path(rundir.SERVER_LOG), cache, ctx.progress)
                job.evaluate()
        except BaseException:  # the endpoint failed, or Ctrl-C: keep what was generated and judged
            if ctx.is_main:
                job.write_tables()
            raise
        finally:
            if cache is not None:
                cache.close()
        if ctx.is_main:
            job.finish()

    def summary(self, run_dir: Path) -> str | None:
        judge = rundir.read_metrics(run_dir).get("judge")
        if not judge:
            return None
        lines = [f"Judge ({judge['judge']['backend']}: {judge['judge']['model']}), m={judge['m']:g}: {judge['reason']}"]
        for name in ("vanilla", "steered"):
            values = {k: v for k, v in judge[name].items() if isinstance(v, float) and "_" not in k}
            lines.append(f"  {name:8s} " + "  ".join(f"{k}={v:.3f}" for k, v in values.items()))
        return "\n".join(lines)


class Job:
    """One run of the judge stage: the records, prompts and queries, and what has been done so far."""

    def __init__(self, ctx: RunContext, s: Settings) -> None:
        self.ctx, self.s = ctx, s
        self.records = ctx.records("test")
        self.by_id = {r.example_id: r for r in self.records}
        if any(QUERY not in r.meta for r in self.records):
            raise ConfigError(f"{rundir.PAIRS} holds no raw prompts ({QUERY}), which the judge asks about: an older "
                              "steer wrote it; run the data stage again with force=true")  # fmt: skip
        self.queries = {r.example_id: r.meta[QUERY] for r in self.records}
        self.validation, self.report = split_records(self.records, s.select)
        self.iv = DynamicAffine.load(ctx.run_dir)
        self.client: JudgeClient | None = None
        self.work = Work()
        self.choice: Choice | None = None
        self.frame: pd.DataFrame | None = None

    def prompt(self, record: PairRecord) -> str:
        """The generation prompt: the pair's rendered prompt, or re-rendered under the protocol's system turn."""
        system = self.s.protocol.system_prompt
        if system is None:
            return record.prompt_text
        instruction = self.ctx.cfg.dataset.get("instruction")
        return render_prompt(self.ctx.tokenizer, self.queries[record.example_id], instruction, system)

    def evaluate(self) -> None:
        self.choice = self.choose()
        if self.ctx.is_main and self.s.protocol.accuracy:
            self.frame = self.accuracy(self.records, [0.0, self.choice.m])
        if self.s.rubrics:
            rows = self.generate(self.report, "report", sorted({0.0, self.choice.m}))
            if self.client is not None:
                judge_rows(self.client, self.s, rows, self.by_id, self.queries, self.work)

    def generate(self, records: list[PairRecord], part: str, grid: Sequence[float]) -> list[dict]:
        """Every record at every m of ``grid``, one pass (each batch holds several m), the records
        sharded over the processes; on the main process the rows of all (also kept in ``work``)."""
        ctx, g = self.ctx, self.s.generation
        mine = ctx.shard(records)
        prompts = [self.prompt(r) for r in mine]
        parts = ctx.path(rundir.GENERATION_PARTS) / f"{part}-{ctx.state.process_index}-of-{ctx.state.num_processes}"
        start = time.perf_counter()
        answers = generate(
            ctx.model, ctx.tokenizer, prompts, intervention=self.iv, multipliers=list(grid),
            max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, do_sample=g.do_sample,
            temperature=g.temperature, top_p=g.top_p, seed=g.seed, progress=ctx.progress,
            parts_dir=parts, key=ctx.fingerprint or "",
        )  # fmt: skip
        k = len(grid)
        local = [generation_rows(r, prompts[i], part, answers[i * k : (i + 1) * k]) for i, r in enumerate(mine)]
        per_prompt = ctx.gather(local)
        self.work.generation_seconds += time.perf_counter() - start
        if per_prompt is None:
            return []
        rows = [row for prompt_rows in per_prompt for row in prompt_rows]
        self.work.generations += rows
        log.info("judge: generated %d answers (%s, m in %s)", len(rows), part, ", ".join(f"{m:g}" for m in grid))
        return rows

    def accuracy(self, records: list[PairRecord], grid: Sequence[float]) -> pd.DataFrame:
        """PrefOdds of ``records`` at every m of ``grid`` (the sweep engine), for accuracy."""
        return sweep(
            self.ctx.model, self.ctx.tokenizer, records, self.iv, sorted(set(grid)),
            batch_size=self.ctx.cfg.sweep.batch_size, progress=False,
        )  # fmt: skip

    def choose(self) -> Choice:
        s, cfg = self.s, self.ctx.cfg
        if s.select == "fixed":
            return fixed(s.m)
        if s.select == "fit":
            return by_fit(
                rundir.read_fit(self.ctx.run_dir), (min(cfg.sweep.grid), max(cfg.sweep.grid)), s.max_util_drop
            )
        rows = self.generate(self.validation, "validation", s.candidates) if s.rubrics else []
        outcome: list = [None, None]  # (choice, error): the other processes must not wait forever on a failure
        if self.ctx.is_main:
            try:
                outcome[0] = self.choose_on_validation(rows)
            except Exception as err:
                outcome[1] = err
        if self.ctx.state.num_processes > 1:
            broadcast_object_list(outcome)
        if outcome[1] is not None:
            raise outcome[1]
        return outcome[0]

    def choose_on_validation(self, rows: list[dict]) -> Choice:
        """The candidate with the best headline metric on the validation prompts (main process)."""
        s = self.s
        frame = self.accuracy(self.validation, s.candidates) if s.protocol.accuracy else None
        if rows and self.client is not None:
            judge_rows(self.client, s, rows, self.by_id, self.queries, self.work)
        ids = {r.example_id for r in self.validation}
        scores = {m: condition(s, self.work.judgments, frame, ids, m).get(s.headline) for m in s.candidates}
        return by_validation(scores, s.headline)

    def write_tables(self) -> None:
        run_dir = self.ctx.run_dir
        rundir.write_table(run_dir, rundir.GENERATIONS, pd.DataFrame(self.work.generations, columns=GENERATION_COLUMNS))
        rundir.write_table(run_dir, rundir.JUDGMENTS, pd.DataFrame(self.work.judgments, columns=JUDGMENT_COLUMNS))
        accuracy = self.frame if self.frame is not None else pd.DataFrame(columns=list(rundir.SWEEP_COLUMNS))
        rundir.write_table(run_dir, rundir.ACCURACY, accuracy)

    def finish(self) -> None:
        """Write the tables and the judge section of ``metrics.json``; log them to the tracker."""
        self.write_tables()
        finish(self.ctx.path(rundir.GENERATION_PARTS))
        ids = {r.example_id for r in self.report}
        section = metrics(self.s, self.client, self.choice, self.work, self.frame, ids, len(self.validation))
        rundir.update_metrics(self.ctx.run_dir, "judge", section, replace=True)
        tracker = self.ctx.tracker
        tracker.summary(tracked(section))
        if self.work.generations:
            generations = pd.DataFrame(self.work.generations, columns=GENERATION_COLUMNS)
            judgments = pd.DataFrame(self.work.judgments, columns=JUDGMENT_COLUMNS)
            tracker.table("judge/generations", scored_generations(generations, judgments))
