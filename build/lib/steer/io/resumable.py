"""Chunked, resumable computation: a killed loop over batches restarts where it stopped.

A stage that loops over many items (the sweep's batches, generations, judge calls) hands them to
``run_resumable`` in fixed chunks. Each finished chunk's result is written atomically as one
parquet part named by the computation's key and the chunk's index; a re-run with the same key
reads the finished parts and computes only the others, a run with another key discards them.
The result is always assembled from the parts as read back from disk, in item order, so an
interrupted-and-resumed run returns exactly the frame an uninterrupted one does.

The caller writes its final file from the returned frame, then calls ``finish(parts_dir)``.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pandas as pd

from steer.io.artifacts import CorruptArtifact, read_parquet
from steer.io.atomic import atomic_path

log = logging.getLogger("steer")

T = TypeVar("T")
SUFFIX = ".parquet"


@dataclass(frozen=True)
class Resumed:
    """The assembled frame and how it came about: chunks computed now, and reused from disk."""

    frame: pd.DataFrame
    computed: int
    reused: int

    @property
    def chunks(self) -> int:
        return self.computed + self.reused


def key_id(key: str) -> str:
    """A short file-name-safe id of a computation key (any string, e.g. a config fingerprint)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def part_path(parts_dir: Path, key: str, index: int) -> Path:
    return Path(parts_dir) / f"{key_id(key)}-{index:06d}{SUFFIX}"


def run_resumable(
    items: Sequence[T],
    chunk_size: int,
    compute: Callable[[list[T]], pd.DataFrame],
    parts_dir: str | Path,
    key: str,
    progress: Callable[[int], None] | None = None,
) -> Resumed:
    """``concat(compute(chunk) for chunk in chunks of items)``, one atomic parquet part per chunk.

    ``compute`` must be deterministic and return a frame whose columns survive a parquet round
    trip (plain numbers and strings). ``key`` names the computation: parts written under another
    key (or half-written temporary files of a killed run) are deleted first. ``progress`` is
    called with the number of items of each chunk, finished or reused.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1")
    parts_dir = Path(parts_dir)
    parts_dir.mkdir(parents=True, exist_ok=True)
    chunks = [list(items[i : i + chunk_size]) for i in range(0, len(items), chunk_size)]
    wanted = {part_path(parts_dir, key, i).name for i in range(len(chunks))}
    for stale in parts_dir.iterdir():
        if stale.name not in wanted:
            log.info("resumable: discarding %s (another computation or an unfinished write)", stale)
            _remove(stale)
    frames, computed, reused = [], 0, 0
    for index, chunk in enumerate(chunks):
        path = part_path(parts_dir, key, index)
        frame = _read_part(path)
        if frame is None:
            result = compute(chunk)
            with atomic_path(path) as tmp:
                result.to_parquet(tmp, index=False)
            frame = read_parquet(path)
            computed += 1
        else:
            reused += 1
        frames.append(frame)
        if progress is not None:
            progress(len(chunk))
    if reused:
        log.info("resumable: reused %d of %d finished chunks from %s", reused, len(chunks), parts_dir)
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return Resumed(frame, computed, reused)


def _read_part(path: Path) -> pd.DataFrame | None:
    """A finished part, or None when it is absent or unreadable (then it is computed again)."""
    if not path.is_file():
        return None
    try:
        return read_parquet(path)
    except CorruptArtifact as err:  # parts are written atomically, but a disk can still damage one
        log.warning("resumable: recomputing a damaged part: %s", err)
        return None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def kept_parts(parts_dir: str | Path) -> int:
    """How many finished parts ``parts_dir`` holds: for the line an interrupted run ends with."""
    parts_dir = Path(parts_dir)
    if not parts_dir.is_dir():
        return 0
    return sum(1 for p in parts_dir.iterdir() if p.suffix == SUFFIX and not p.name.startswith("."))


def finish(parts_dir: str | Path) -> None:
    """Delete the parts once the final file holding their result is written."""
    shutil.rmtree(parts_dir, ignore_errors=True)
