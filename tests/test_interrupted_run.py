"""Killing ``run.py`` half way through its sweep: SIGKILL resumes from the kept batches and ends
with the same bytes as an uninterrupted run; SIGTERM ends with one line, an ``interrupted``
run_info.json, the line in run.log and a failed W&B run."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import start, wait_for, wandb_records

# 16 pairs in batches of 2: 8 sweep batches of 5 multipliers each.
ARGS = ["stages=[train,sweep]", "dataset.limit=8", "sweep.batch_size=2", "sweep.grid=[-8,-2,0,2,8]", "progress=false"]
BATCHES = 8


def start_run(run_dir: Path, *extra: str) -> subprocess.Popen:
    """``run.py`` in the background (one OpenMP thread in every run: the same bits)."""
    return start("run.py", *ARGS, *extra, f"hydra.run.dir={run_dir}")


def parts(run_dir: Path) -> list[Path]:
    return [p for p in (run_dir / "sweep.parts").rglob("*.parquet") if not p.name.startswith(".")]


def wait_for_parts(proc: subprocess.Popen, run_dir: Path, n: int) -> None:
    wait_for(lambda: len(parts(run_dir)) >= n, proc, f"{n} finished sweep batches")


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sigkilled_run_resumes_its_sweep_and_ends_identical_to_an_uninterrupted_one(tmp_path):
    run_dir = tmp_path / "killed"
    first = start_run(run_dir, "tracking.wandb=false")
    wait_for_parts(first, run_dir, 3)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=60)
    kept = len(parts(run_dir))
    assert 3 <= kept < BATCHES and not (run_dir / "sweep.parquet").exists()

    second = start_run(run_dir, "tracking.wandb=false")
    out, err = second.communicate(timeout=600)
    assert second.returncode == 0, out + err
    computed, total = map(int, re.search(r"sweep: computed (\d+) of (\d+) batches", out).groups())
    assert total == BATCHES and computed == BATCHES - kept < BATCHES
    assert "stage train: done for this config and inputs, skipped" in out
    assert not (run_dir / "sweep.parts").exists()
    print(f"killed after {kept} of {BATCHES} sweep batches; the re-run computed {computed}")

    plain = start_run(tmp_path / "plain", "tracking.wandb=false")
    out, err = plain.communicate(timeout=600)
    assert plain.returncode == 0, out + err
    for name in ("sweep.parquet", "intervention.safetensors"):
        assert (run_dir / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


@pytest.mark.e2e
@pytest.mark.slow
def test_sigterm_ends_the_run_with_one_line_and_records_it(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    run_dir = tmp_path / "run"
    proc = start_run(run_dir, "tracking.wandb=true")
    wait_for_parts(proc, run_dir, 2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out + err
    assert "Traceback" not in out + err
    line = err.strip().splitlines()[-1]
    assert re.fullmatch(
        r"interrupted \(SIGTERM\): kept finished stages: data, train; \d+ finished chunk\(s\) in "
        rf"sweep.parts/ in {re.escape(str(run_dir))}. Run the same command again to resume",
        line,
    ), line
    assert line in (run_dir / "run.log").read_text()
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["status"] == "interrupted" and info["ended"]
    assert wandb_exit_code(run_dir) == 128 + signal.SIGTERM


def wandb_exit_code(run_dir: Path) -> int | None:
    """The exit code the offline W&B run recorded (its ``exit`` record)."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    codes = [r.exit.exit_code for r in wandb_records(path) if r.WhichOneof("record_type") == "exit"]
    return codes[-1] if codes else None
