"""Chunked resumable computation: an interrupted run resumes and ends with exactly the frame of an
uninterrupted one; stale and damaged parts are never trusted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from steer.io.resumable import finish, kept_parts, part_path, run_resumable

ITEMS = list(range(23))


class Compute:
    """A deterministic chunk computation that counts its calls and can be made to stop at a chunk."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls = 0
        self.stop_at = stop_at

    def __call__(self, chunk: list[int]) -> pd.DataFrame:
        if self.calls == self.stop_at:
            raise KeyboardInterrupt  # what Ctrl-C (or SIGTERM via steer.runtime.interrupt) raises mid-loop
        self.calls += 1
        values = np.asarray(chunk, dtype=np.float64)
        return pd.DataFrame(
            {"item": chunk, "root": np.sqrt(values) / 3.0, "label": [f"x{i}" for i in chunk], "m": values * 0.1}
        )


def reference() -> pd.DataFrame:
    return pd.concat([Compute()(ITEMS[i : i + 5]) for i in range(0, len(ITEMS), 5)], ignore_index=True)


def test_uninterrupted_run_is_the_concatenation_in_item_order(tmp_path):
    compute = Compute()
    done = run_resumable(ITEMS, 5, compute, tmp_path / "parts", "k")
    pd.testing.assert_frame_equal(done.frame, reference(), check_exact=True)
    assert (done.computed, done.reused, compute.calls) == (5, 0, 5)
    assert sorted(p.name for p in (tmp_path / "parts").iterdir()) == [
        part_path(tmp_path / "parts", "k", i).name for i in range(5)
    ]


def test_interrupted_run_resumes_and_ends_identical(tmp_path):
    parts = tmp_path / "parts"
    assert kept_parts(parts) == 0
    with pytest.raises(KeyboardInterrupt):
        run_resumable(ITEMS, 5, Compute(stop_at=3), parts, "k")
    assert len(list(parts.iterdir())) == 3
    (parts / ".half.parquet.tmp-0000abcd").write_bytes(b"")  # a write the kill cut short
    assert kept_parts(parts) == 3
    compute = Compute()
    seen = []
    done = run_resumable(ITEMS, 5, compute, parts, "k", progress=seen.append)
    assert (done.computed, done.reused, compute.calls) == (2, 3, 2)
    assert seen == [5, 5, 5, 5, 3]
    pd.testing.assert_frame_equal(done.frame, reference(), check_exact=True)
    again = run_resumable(ITEMS, 5, Compute(stop_at=0), parts, "k")  # nothing left to compute
    assert again.computed == 0
    pd.testing.assert_frame_equal(again.frame, reference(), check_exact=True)


def test_another_key_discards_stale_parts_and_temporary_files(tmp_path):
    parts = tmp_path / "parts"
    run_resumable(ITEMS, 5, Compute(), parts, "old")
    (parts / ".x.parquet.tmp-1234abcd").write_bytes(b"half a write")
    compute = Compute()
    done = run_resumable(ITEMS, 5, compute, parts, "new")
    assert (done.computed, done.reused) == (5, 0)
    assert sorted(parts.iterdir()) == [part_path(parts, "new", i) for i in range(5)]


def test_a_damaged_part_is_recomputed(tmp_path):
    parts = tmp_path / "parts"
    run_resumable(ITEMS, 5, Compute(), parts, "k")
    part_path(parts, "k", 2).write_bytes(b"PAR1 garbage")
    compute = Compute()
    done = run_resumable(ITEMS, 5, compute, parts, "k")
    assert (done.computed, done.reused) == (1, 4)
    pd.testing.assert_frame_equal(done.frame, reference(), check_exact=True)


def test_finish_removes_the_parts(tmp_path):
    parts = tmp_path / "parts"
    run_resumable(ITEMS, 5, Compute(), parts, "k")
    finish(parts)
    assert not parts.exists()
    finish(parts)  # idempotent


def test_chunk_size_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="chunk_size=0"):
        run_resumable(ITEMS, 0, Compute(), tmp_path, "k")
