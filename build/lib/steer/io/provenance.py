"""Provenance: what produced a run, recorded in ``run_info.json`` beside its results.

A result is only as good as the knowledge of what made it: the code (package versions, the
project's git commit and whether the tree had uncommitted changes), the model's weights, the data
files' contents, the command line, the host and the times. Files are hashed streaming in fixed-size
chunks, so a multi-gigabyte data file or checkpoint costs time, never memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from steer.io.artifacts import read_json
from steer.io.atomic import atomic_write_text
from steer.io.secrets import redact_argv

CHUNK = 1 << 20
PACKAGES = (
    "steer",
    "torch",
    "transformers",
    "accelerate",
    "safetensors",
    "huggingface-hub",
    "tokenizers",
    "numpy",
    "pandas",
    "pyarrow",
    "scipy",
    "hydra-core",
    "omegaconf",
    "wandb",
    "openai",
)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".ckpt", ".h5", ".msgpack")
# Sampled weights identity: this much of the start and of the end of every weight file.
SAMPLE = 1 << 20


def _update_from(digest, fh, limit: int | None = None, chunk: int = CHUNK) -> None:
    """Feed ``digest`` from ``fh`` through one reused buffer: memory stays at ``chunk`` bytes."""
    buffer = bytearray(chunk)
    view = memoryview(buffer)
    left = limit
    while left is None or left > 0:
        n = fh.readinto(view if left is None or left >= chunk else view[:left])
        if not n:
            break
        digest.update(view[:n])
        if left is not None:
            left -= n


def file_digest(path: str | Path, chunk: int = CHUNK) -> str:
    """sha256 (hex) of a file's bytes, read in ``chunk``-byte pieces, never whole."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        _update_from(digest, fh, chunk=chunk)
    return digest.hexdigest()


def tree_digest(folder: str | Path) -> str:
    """sha256 (hex) of a folder: every file's relative POSIX path and content digest, in sorted
    path order, so it changes when any file is added, removed, renamed or edited."""
    folder = Path(folder)
    digest = hashlib.sha256()
    for rel in sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()):
        digest.update(rel.encode() + b"\0" + file_digest(folder / rel).encode() + b"\n")
    return digest.hexdigest()


def path_digest(path: str | Path) -> str:
    """``file_digest`` of a file, ``tree_digest`` of a folder; a clear error for anything else."""
    path = Path(path)
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return tree_digest(path)
    raise FileNotFoundError(f"{path}: no such file or folder to hash")


def sampled_digest(path: str | Path, sample: int = SAMPLE) -> str:
    """sha256 of a file's size, first ``sample`` and last ``sample`` bytes: identifies a weights
    file (its header names every tensor and its offsets; the ends hold real values) in
    milliseconds, where hashing 18 GB of a 9B model in full takes minutes."""
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode() + b"\n")
    with open(path, "rb") as fh:
        _update_from(digest, fh, limit=sample)
        if size > sample:
            fh.seek(max(sample, size - sample))
            _update_from(digest, fh, limit=sample)
    return digest.hexdigest()


def weights_identity(source: str, resolved: str | Path | None = None, full: bool = False) -> dict:
    """Who the model's weights are, cheaply: ``{"source", "path", "revision", "files", "digest",
    "method"}``.

    ``resolved`` is the folder ``from_pretrained`` loads (``steer.core.models.resolve_source(source)``);
    without it a hub id is looked up in the local hub cache only (no network). For a folder, every
    weight file (and ``config.json``) enters the digest by relative path and ``sampled_digest``
    (``full=True``: ``file_digest``). A hub snapshot also records its revision (commit hash).
    """
    folder = Path(resolved) if resolved is not None else Path(source)
    if not folder.is_dir():
        folder = _hub_snapshot(source)
    if folder is None or not folder.is_dir():
        return {"source": source, "path": None, "revision": None, "files": {}, "digest": None, "method": None}
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name == "config.json")
    )
    hasher = file_digest if full else sampled_digest
    entries = {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": hasher(p)} for p in files}
    total = hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()
    revision = folder.name if folder.parent.name == "snapshots" else None
    method = "sha256" if full else f"sha256 of size + first/last {SAMPLE} bytes per file"
    return {
        "source": source,
        "path": str(folder),
        "revision": revision,
        "files": entries,
        "digest": total if entries else None,
        "method": method,
    }


def _hub_snapshot(repo_id: str) -> Path | None:
    """The hub cache's snapshot folder of ``repo_id`` (no download), or None."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:  # not a hub id, not cached, or no huggingface_hub: nothing to record
        return None


def package_versions(names: Iterable[str] = PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent), without importing any of them."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def git_state(folder: str | Path) -> dict | None:
    """``{"commit", "dirty", "branch"}`` of the git checkout holding ``folder``; None outside one
    (or without git). Dirty means uncommitted changes to tracked files or new untracked files."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(folder), *args], capture_output=True, text=True, timeout=30, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None
    status = git("status", "--porcelain")
    branch = git("rev-parse", "--abbrev-ref", "HEAD")
    return {"commit": commit, "dirty": bool(status) if status is not None else None, "branch": branch}


def project_dir() -> Path:
    """The folder holding the ``steer`` package (the project checkout for an editable install)."""
    return Path(__file__).resolve().parents[1]


def host_info() -> dict:
    return {
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }


def now() -> str:
    """The current time, UTC, ISO 8601 (seconds)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_info(
    *,
    seed: int | None,
    model: dict | None = None,
    data_files: Sequence[str | Path] = (),
    argv: Sequence[str] | None = None,
    started: str | None = None,
    ended: str | None = None,
    device: str | None = None,
    extra: dict | None = None,
) -> dict:
    """The content of ``run_info.json``.

    ``model`` is ``weights_identity(...)``; ``data_files`` the files or folders the run read (each
    hashed in full: ``path_digest``); ``argv`` defaults to ``sys.argv`` and is recorded with every
    secret removed (``steer.io.secrets.redact_argv``). ``started`` defaults to now; ``ended`` stays None
    until the run finishes (``finish_run_info``).
    """
    data = {}
    for path in data_files:
        path = Path(path)
        size = path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
        data[str(path)] = {"sha256": path_digest(path), "bytes": size, "kind": "folder" if path.is_dir() else "file"}
    return {
        "started": started or now(),
        "ended": ended,
        "seed": seed,
        "command": redact_argv(sys.argv if argv is None else argv),
        "cwd": os.getcwd(),
        "git": git_state(project_dir()),
        "packages": package_versions(),
        "model": model,
        "data": data,
        "host": {**host_info(), "device": device},
        **(extra or {}),
    }


def write_run_info(path: str | Path, info: dict) -> None:
    """Write ``info`` to ``path`` atomically (a crash never leaves half a JSON file)."""
    atomic_write_text(path, json.dumps(info, indent=2, sort_keys=False) + "\n")


def finish_run_info(path: str | Path, status: str = "finished", ended: str | None = None) -> dict:
    """Stamp the end time and how the run ended (``finished``, ``failed``, ``interrupted``) into
    an existing ``run_info.json``; returns the updated record."""
    info = read_json(path)
    info["ended"] = ended or now()
    info["status"] = status
    write_run_info(path, info)
    return info
