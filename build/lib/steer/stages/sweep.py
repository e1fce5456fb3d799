"""The sweep stage: PrefOdds/UtilOdds of every pair at every m of ``sweep.grid``.

Data-parallel under ``accelerate launch``: process r scores pairs r, r + N, r + 2N, ... of
``pairs.jsonl`` (``RunContext.map_sharded``); the main process puts the rows back in the order one
process would write them and alone writes ``sweep.parquet``. Losses match one process to ~1e-6:
a different batch composition changes the padding, hence the last bits of a sum.
The intervention is verified on load against the run's config (form, layer, model, objective,
sizes): an ``intervention.json`` edited to another layer is refused, never swept. The sweep is
resumable: every finished batch is kept in ``sweep.parts/<rank>-of-<world>/`` under the stage's
fingerprint, a killed sweep computes only the batches it had not finished, and the parts are
deleted once ``sweep.parquet`` is written.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from steer import rundir
from steer.core.interventions import DynamicAffine
from steer.core.sweep import by_record, check_grid, from_records, summarize, sweep
from steer.io.resumable import finish
from steer.stages.base import ConfigError, Stage
from steer.stages.context import RunContext
from steer.stages.train import expected_intervention

log = logging.getLogger("steer")


class SweepStage(Stage):
    name = "sweep"
    keys = ("sweep", "model.name", "layer", "intervention", "objective.name")
    ignore = ("sweep.batch_size",)
    outputs = (rundir.SWEEP,)
    after = ("train",)
    parallel = True
    reads = ("model",)

    def check(self, cfg: DictConfig) -> None:
        check_grid(cfg.sweep.grid)
        if cfg.sweep.batch_size < 1:  # an int: the schema types it
            raise ConfigError(
                f"sweep.batch_size must be a positive integer (pairs per forward pass), got {cfg.sweep.batch_size}"
            )

    def run(self, ctx: RunContext) -> None:
        cfg = ctx.cfg
        intervention = DynamicAffine.load(ctx.run_dir, expected_intervention(cfg, ctx.model))
        parts = ctx.path(rundir.SWEEP_PARTS)

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
                progress=ctx.progress,
                parts_dir=parts / f"{ctx.state.process_index}-of-{ctx.state.num_processes}",
                key=ctx.fingerprint or "",
            )
            return by_record(frame, len(part))

        rows = ctx.map_sharded(ctx.records(), score)
        if not ctx.is_main:
            return
        frame = from_records(rows)
        rundir.write_sweep(ctx.run_dir, frame)
        finish(parts)
        table = summarize(frame)
        for m, row in table.iterrows():
            ctx.tracker.log({"sweep/m": m, **{f"sweep/{k}": v for k, v in row.items()}})
        ctx.tracker.table("sweep/mean_by_m", table.reset_index())

    def summary(self, run_dir: Path) -> str | None:
        if not (run_dir / rundir.SWEEP).is_file():
            return None
        table = summarize(rundir.read_sweep(run_dir))
        return "Mean log-odds per multiplier m:\n" + table.to_string(float_format=lambda x: f"{x:8.3f}")
