"""A killed sweep resumes where it stopped and ends identical to an uninterrupted one; the same
seed gives the same sweep bit for bit."""

from __future__ import annotations

import re
import signal
import subprocess

import pandas as pd
import pytest

from steer.core.sweep import sweep
from tests.conftest import start, wait_for
from tests.sweep_job import GRID, intervention, records

BATCHES = 8  # 16 pairs in batches of 2 (tests/sweep_job.py)


def job(parts_dir, out) -> subprocess.Popen:
    """``tests/sweep_job.py`` in the background (one OpenMP thread in every run: same bits)."""
    return start("-m", "tests.sweep_job", str(parts_dir), str(out), stderr=subprocess.DEVNULL)


def finished_parts(parts_dir) -> list:
    return sorted(p for p in parts_dir.glob("*.parquet") if not p.name.startswith("."))


@pytest.mark.e2e
@pytest.mark.slow
def test_a_sigkilled_sweep_resumes_and_ends_identical_to_an_uninterrupted_one(tmp_path):
    parts = tmp_path / "parts"
    first = job(parts, tmp_path / "never.parquet")
    wait_for(lambda: parts.is_dir() and len(finished_parts(parts)) >= 3, first, "3 finished sweep parts")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL
    kept = len(finished_parts(parts))
    assert 3 <= kept < BATCHES
    assert not (tmp_path / "never.parquet").exists()

    second = job(parts, tmp_path / "resumed.parquet")
    out, _ = second.communicate(timeout=600)
    assert second.returncode == 0, out
    computed, total = map(int, re.search(r"sweep: computed (\d+) of (\d+) batches", out).groups())
    assert total == BATCHES and computed == BATCHES - kept < BATCHES
    print(f"killed after {kept} of {BATCHES} batches; the re-run computed {computed}")

    plain = job("none", tmp_path / "plain.parquet")
    assert plain.wait(timeout=600) == 0
    resumed, uninterrupted = pd.read_parquet(tmp_path / "resumed.parquet"), pd.read_parquet(tmp_path / "plain.parquet")
    assert len(resumed) == len(GRID) * 16
    pd.testing.assert_frame_equal(resumed, uninterrupted, check_exact=True)


def test_same_seed_twice_gives_a_bitwise_identical_sweep(smol, tmp_path):
    model, tok = smol
    pairs = records(tok)[:4]
    files = []
    for run in range(2):
        frame = sweep(model, tok, pairs, intervention(model), [-4.0, 0.0, 4.0], batch_size=2, progress=False)
        files.append(tmp_path / f"sweep{run}.parquet")
        frame.to_parquet(files[-1], index=False)
    assert files[0].read_bytes() == files[1].read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(files[0]), pd.read_parquet(files[1]), check_exact=True)


def test_a_resumable_sweep_equals_the_plain_one_and_reuses_its_parts(smol, tmp_path, caplog):
    model, tok = smol
    pairs, grid = records(tok)[:5], [-4.0, 0.0, 4.0]
    plain = sweep(model, tok, pairs, intervention(model), grid, batch_size=2, progress=False)
    with caplog.at_level("INFO", logger="steer"):
        chunked = sweep(model, tok, pairs, intervention(model), grid, batch_size=2, progress=False, parts_dir=tmp_path)
        again = sweep(model, tok, pairs, intervention(model), grid, batch_size=2, progress=False, parts_dir=tmp_path)
        other = sweep(
            model, tok, pairs, intervention(model), [-4.0, 0.0], batch_size=2, progress=False, parts_dir=tmp_path
        )
    pd.testing.assert_frame_equal(chunked, plain, check_exact=True)
    pd.testing.assert_frame_equal(again, plain, check_exact=True)
    assert len(other) == 2 * len(pairs)
    counts = re.findall(r"sweep: computed (\d+) of (\d+) batches", caplog.text)
    assert counts == [("3", "3"), ("0", "3"), ("3", "3")]  # another grid is another computation
