"""The end of a multirun: one table of every job, printed and written as CSV beside the jobs.

A Hydra callback (registered in ``steer/conf/config.yaml`` under ``hydra.callbacks``). Each job, in
whatever process the launcher ran it (in-process, a joblib worker, a submitit/SLURM job), writes
one record when it ends: its choices, status, error and seconds. When the multirun ends, the
launching process reads every record and the jobs' ``fit.json``/``metrics.json`` and writes
``<sweep dir>/multirun-<start>.csv``. A failed job is a row with status ``failed`` and its error.

Hydra skips ``on_multirun_end`` when a job failed (the sweeper re-raises the first failure), so
the table is also written at interpreter exit. Under ``accelerate launch`` every process walks the
same multirun; only the first (``RANK`` 0) records and reports.
"""

from __future__ import annotations

import atexit
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from hydra.core.utils import JobReturn, JobStatus
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from steer import rundir
from steer.io.atomic import atomic_write_text
from steer.runtime.tracking import MULTIRUN_ENV

# Where a multirun's jobs leave their records (set by the launching process, inherited by workers).
RECORDS_ENV = "STEER_MULTIRUN_RECORDS"
# The job's choices the table shows, as (column, config key).
CHOICES = (
    ("form", "intervention.form"),
    ("objective", "objective.name"),
    ("dataset", "dataset.name"),
    ("model", "model.name"),
    ("layer", "layer"),
)


def is_first_process() -> bool:
    """False in every process of an ``accelerate launch`` but the first."""
    return int(os.environ.get("RANK", "0")) == 0


def job_record(config: DictConfig, job_return: JobReturn, seconds: float) -> dict[str, Any]:
    """What the table needs of one ended job (plain values, JSON-ready)."""
    record: dict[str, Any] = {
        "job": int(config.hydra.job.num),
        "overrides": " ".join(job_return.overrides or ()),
        "run_dir": str(config.hydra.runtime.output_dir),
        "status": "completed" if job_return.status == JobStatus.COMPLETED else "failed",
        "seconds": round(seconds, 1),
        "error": None,
    }
    for column, key in CHOICES:
        record[column] = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if job_return.status != JobStatus.COMPLETED:
        err = job_return._return_value  # the exception; .return_value would re-raise it
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        named = isinstance(err, CompactHydraException)  # run.py's one-line refusal names its own error
        record["error"] = (first if named else f"{type(err).__name__}: {first}")[:500]
    return record


def results(run_dir: Path) -> dict[str, Any]:
    """R² of the train fits (``fit.json``) and every judge metric (``metrics.json``) of a run."""
    row: dict[str, Any] = {}
    fit = run_dir / rundir.FIT
    if fit.is_file():
        fits = json.loads(fit.read_text())
        for kind in ("pref", "util"):
            row[f"r2_{kind}"] = fits.get(kind, {}).get("train", {}).get("r2")
    metrics = run_dir / rundir.METRICS
    if metrics.is_file():
        for section, values in json.loads(metrics.read_text()).items():
            if isinstance(values, dict):
                row.update({f"{section}/{k}": v for k, v in values.items() if isinstance(v, (int, float, str))})
            elif isinstance(values, (int, float, str)):
                row[section] = values
    return row


def jobs_table(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per job, in job order: choices, results, status, seconds, error, run directory."""
    rows = [{**r, **results(Path(r["run_dir"]))} for r in sorted(records, key=lambda r: r["job"])]
    frame = pd.DataFrame(rows)
    first = ["job", *(c for c, _ in CHOICES)]
    last = ["status", "seconds", "error", "run_dir", "overrides"]
    middle = [c for c in frame.columns if c not in first and c not in last]
    return frame[first + middle + last]


def offline_runs(records: list[dict[str, Any]], since: float) -> list[Path]:
    """The W&B offline run folders the jobs wrote during this multirun."""
    found = []
    for record in records:
        for path in sorted(Path(record["run_dir"]).glob("wandb/offline-run-*")):
            if path.stat().st_mtime >= since:
                found.append(path)
    return found


class JobsTable(Callback):
    """Hydra callback: records each job's end, and writes the table when the multirun ends."""

    def __init__(self) -> None:
        self._records: Path | None = None
        self._csv: Path | None = None
        self._started = 0.0
        self._job_started = 0.0
        self._done = False

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not is_first_process():
            return
        self._started = time.time()
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        sweep_dir = Path(config.hydra.sweep.dir)
        self._records = sweep_dir / ".multirun" / stamp
        self._csv = sweep_dir / f"multirun-{stamp}.csv"
        self._records.mkdir(parents=True, exist_ok=True)
        os.environ[RECORDS_ENV] = str(self._records.resolve())
        # The W&B group of every job of this multirun: its directory and start time.
        os.environ[MULTIRUN_ENV] = f"{sweep_dir.resolve().name}-{stamp}"
        atexit.register(self.finish)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._job_started = time.time()

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        records = os.environ.get(RECORDS_ENV)
        if not records or not is_first_process():
            return
        record = job_record(config, job_return, time.time() - self._job_started)
        atomic_write_text(Path(records) / f"job-{record['job']:05d}.json", json.dumps(record) + "\n")

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self.finish()

    def finish(self) -> None:
        """Print and write the table once (at the multirun's end, or at exit after a failure)."""
        if self._done or self._records is None:
            return
        self._done = True
        records = [json.loads(p.read_text()) for p in sorted(self._records.glob("job-*.json"))]
        if not records:
            return
        table = jobs_table(records)
        atomic_write_text(self._csv, table.to_csv(index=False))
        failed = int((table["status"] == "failed").sum())
        shown = table.drop(columns=["run_dir", "overrides"])
        with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 80):
            print(f"\nMultirun: {len(table)} job(s), {failed} failed -> {self._csv}")
            print(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
        runs = offline_runs(records, self._started)
        if runs:
            print("W&B runs are offline; to upload them: wandb sync " + " ".join(str(p) for p in runs))
