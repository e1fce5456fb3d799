"""The sweep stage: PrefOdds/UtilOdds of every pair at every m of ``sweep.grid``.

Data-parallel under ``accelerate launch``: process r scores pairs r, r + N, r + 2N, ... of
``pairs.jsonl`` (``RunContext.map_sharded``); the main process puts the rows back in the order one
process would write them and alone writes ``sweep.parquet``. Losses match one process to ~1e-6:
a different batch composition changes the padding, hence the last bits of a sum.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from steer import rundir
from steer.interventions import DynamicAffine
from steer.stages.base import Stage
from steer.stages.context import RunContext
from steer.sweep import by_record, check_grid, from_records, summarize, sweep

log = logging.getLogger("steer")


class SweepStage(Stage):
    name = "sweep"
    keys = ("sweep",)
    ignore = ("sweep.batch_size",)
    outputs = (rundir.SWEEP,)
    after = ("train",)
    parallel = True

    def check(self, cfg: DictConfig) -> None:
        check_grid(cfg.sweep.grid)

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        intervention = DynamicAffine.load(ctx.run_dir)

        def score(part: list) -> list:
            if not part:  # fewer pairs than processes
                return []
            frame = sweep(
                ctx.model,
                ctx.tokenizer,
                part,
                intervention,
                [float(m) for m in cfg.sweep.grid],
                batch_size=cfg.sweep.batch_size,
                per_token=cfg.sweep.per_token,
                progress=cfg.progress,
            )
            return by_record(frame, len(part))

        rows = ctx.map_sharded(ctx.records(), score)
        if not ctx.is_main:
            return
        frame = from_records(rows)
        rundir.write_sweep(ctx.run_dir, frame)
        table = summarize(frame)
        for m, row in table.iterrows():
            ctx.tracker.log({"sweep/m": m, **{f"sweep/{k}": v for k, v in row.items()}})
        ctx.tracker.table("sweep/mean_by_m", table.reset_index())

    def summary(self, run_dir: Path) -> str | None:
        if not (run_dir / rundir.SWEEP).is_file():
            return None
        table = summarize(rundir.read_sweep(run_dir))
        return "Mean log-odds per multiplier m:\n" + table.to_string(float_format=lambda x: f"{x:8.3f}")
