"""Multiruns end to end: a real submitit job array, the per-device node launcher, a multirun under
``accelerate launch``, the end-of-multirun table (failed jobs included) and the W&B offline runs."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import accelerate_launch, python, run_py, wandb_records

SECRETS = {"WANDB_API_KEY": "wandb-key-7f3c9e1d55aa", "OPENAI_API_KEY": "sk-judge-key-0b8d2c4e9f"}
TINY = [
    "experiment=smoke",
    "progress=false",
    "dataset.limit=2",
    "train.batch_size=2",
]


def jobs_csv(root: Path) -> pd.DataFrame:
    (csv,) = root.glob("multirun-*.csv")
    return pd.read_csv(csv)


def history(records: list) -> list[dict]:
    return [
        {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
        for r in records
        if r.HasField("history")
    ]


@pytest.mark.e2e
@pytest.mark.slow
def test_submitit_multirun_table_report_and_wandb(tmp_path):
    """Four submitit jobs: two finish (DiffMean and SFT vectors), two fail at run time (a layer the
    model lacks). The table lists all four, the report picks up the two runs, W&B wrote one offline
    run per finished job in one group, and no key from the environment reached any file."""
    root = tmp_path / "out"
    done = run_py(
        *["-m", "hydra/launcher=submitit_local", *TINY, "objective=diffmean,sft", "layer=15,99", f"output_root={root}"],
        env={"WANDB_MODE": "offline", **SECRETS},
        timeout=1500,
    )
    assert done.returncode != 0, done.stdout  # Hydra reports the failed jobs
    table = jobs_csv(root)
    assert len(table) == 4
    ok, failed = table[table.status == "completed"], table[table.status == "failed"]
    assert sorted(ok.objective) == ["diffmean", "sft"] and set(ok.layer) == {15}
    assert (ok.r2_pref.notna() & ok.r2_util.notna()).all()
    assert set(failed.layer) == {99} and failed.error.str.contains("layer=99 is out of range").all()
    assert done.stdout.count("Multirun: 4 job(s), 2 failed") == 1
    assert done.stdout.count("wandb sync") == 1

    report = python("-m", "steer.report", "table2", "--outputs", str(root))
    assert report.returncode == 0 and "## Runs used (2)" in report.stdout

    runs = {}
    for run_dir in ok.run_dir:
        (folder,) = Path(run_dir).glob("wandb/offline-run-*")
        assert str(folder) in done.stdout  # the one sync line names every run
        (path,) = folder.glob("*.wandb")
        records = wandb_records(path)
        (run,) = [r.run for r in records if r.HasField("run")]
        runs[run.job_type] = (run, history(records), folder)
    assert set(runs) == {"vector-diffmean", "vector-sft"}
    groups = {run.run_group for run, _, _ in runs.values()}
    assert len(groups) == 1 and groups.pop().startswith("out-")
    run, rows, folder = runs["vector-sft"]
    assert list(run.tags) == ["vector", "sft", "sentiment", "smollm2-135m"]
    losses = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(losses) >= 1 and all(isinstance(x, float) for x in losses)
    for split in ("train", "test"):
        (chart,) = [row for row in rows if f"sweep/curves_{split}_table/path" in row]
        table_file = folder / "files" / chart[f"sweep/curves_{split}_table/path"]
        data = json.loads(table_file.read_text())
        assert data["columns"] == ["step", "lineKey", "lineVal"]  # wandb's line-series table: x, series, y
        assert {r[1] for r in data["data"]} == {"pref mean", "pref fit", "util mean", "util fit"}
        assert sum(r[1] == "pref mean" for r in data["data"]) == 11  # one point per m of the smoke grid
    assert any("fit/dynamics/path" in row for row in rows)

    for path in root.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            for name, secret in SECRETS.items():
                assert secret.encode() not in content, f"{name} leaked into {path}"


@pytest.mark.e2e
@pytest.mark.slow
def test_node_launcher_gives_each_job_a_slot(tmp_path):
    """hydra/launcher=node with 2 jobs on this 2-core CPU: each job runs with one thread."""
    root = tmp_path / "out"
    args = ["-m", "hydra/launcher=node", "node.jobs=2", "device=cpu", *TINY, "stages=[train]"]
    more = ["objective=diffmean", "layer=14,15", "tracking.wandb=false", f"output_root={root}"]
    done = run_py(*args, *more, timeout=1500)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout + done.stderr
    assert out.count("device cpu, 1 CPU thread(s)") == 2, out
    assert list(jobs_csv(root).status) == ["completed", "completed"]


@pytest.mark.e2e
@pytest.mark.slow
def test_multirun_under_accelerate_launch(tmp_path):
    """A 2x2 multirun under two CPU processes: all four run directories complete, and the table
    is written once (by the first process)."""
    root = tmp_path / "out"
    args = ["-m", *TINY, "device=cpu", "stages=[train,sweep]", "sweep.grid=[-1,0,1]", "train.batch_size=1"]
    more = ["objective=diffmean,sft", "layer=14,15", "tracking.wandb=false", f"output_root={root}"]
    done = run_py(*args, *more, launcher=accelerate_launch(2), timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    dirs = sorted(p.parent for p in root.rglob("sweep.parquet"))
    assert len(dirs) == 4
    for run_dir in dirs:
        assert set(json.loads((run_dir / "stages.json").read_text())) == {"data", "train", "sweep"}
    assert list(jobs_csv(root).status) == ["completed"] * 4
    assert done.stdout.count("Multirun: 4 job(s), 0 failed") == 1


def test_jobs_table_reads_fits_metrics_and_failures(tmp_path):
    """The table from job records: R² from fit.json, every metrics.json value, a failed job's error."""
    from hydra.core.utils import JobReturn, JobStatus
    from omegaconf import OmegaConf

    from steer.runtime.multirun import job_record, jobs_table

    done, failed = tmp_path / "a", tmp_path / "b"
    done.mkdir()
    fit = {"pref": {"train": {"r2": 0.91}}, "util": {"train": {"r2": None}}}
    (done / "fit.json").write_text(json.dumps(fit))
    (done / "metrics.json").write_text(json.dumps({"judge": {"concept": 1.25, "harmonic": 0.5}, "accuracy": 0.75}))

    def config(num: int, run_dir: Path, form: str):
        return OmegaConf.create(
            {
                "hydra": {"job": {"num": num}, "runtime": {"output_dir": str(run_dir)}},
                "intervention": {"form": form},
                "objective": {"name": "sft"},
                "dataset": {"name": "axbench-c${layer}"},
                "model": {"name": "smollm2-135m"},
                "layer": 3,
            }
        )

    ok = JobReturn(overrides=["intervention=vector"], status=JobStatus.COMPLETED)
    bad = JobReturn(overrides=["intervention=lora"], status=JobStatus.FAILED)
    bad.return_value = RuntimeError("stage sweep needs the outputs of train\nsecond line")
    records = [job_record(config(1, failed, "lora"), bad, 2.04), job_record(config(0, done, "vector"), ok, 10.0)]
    table = jobs_table(records)
    assert list(table.job) == [0, 1] and list(table.form) == ["vector", "lora"]
    assert list(table.dataset) == ["axbench-c3", "axbench-c3"]
    first, second = table.iloc[0], table.iloc[1]
    assert first.r2_pref == 0.91 and pd.isna(first.r2_util) and first["judge/concept"] == 1.25
    assert first.accuracy == 0.75 and first.status == "completed" and first.seconds == 10.0
    assert second.status == "failed" and second.error == "RuntimeError: stage sweep needs the outputs of train"
    assert pd.isna(second.r2_pref) and second.seconds == 2.0
    assert list(table.columns[-5:]) == ["status", "seconds", "error", "run_dir", "overrides"]
