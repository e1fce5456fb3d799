"""The ``--out`` folder of an export: steer never destroys a file it did not write.

A folder that holds anything is refused unless the caller passes ``overwrite``. With it, only
steer's own files there are replaced: the files the earlier export's manifest (``steer_export.json``,
key ``files``) lists, and those of the format's known file set (``Exporter.owned``: e.g. a merged
model's shards and index, which an older steer, or ``save_pretrained``, left without a list).
Everything else is the user's and stays. The new artifact is written into a staging folder beside
``out`` first, so a failed export removes nothing; then the stale files go, the new ones move in,
and the manifest, naming exactly those files, is written last.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from steer.export.errors import ExportError
from steer.io.atomic import atomic_write_text

PROVENANCE = "steer_export.json"


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse a file as ``out``, and a folder holding anything unless ``overwrite``: before any work."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a folder to write the artifact into")
    if not overwrite and out.is_dir() and any(out.iterdir()):
        raise ExportError(
            f"--out {out} already holds files: choose an empty folder, or pass --overwrite to replace "
            "steer's export there (files steer did not write are kept)"
        )


def read_manifest(out: Path) -> dict:
    """The earlier export's manifest in ``out``; {} where there is none or it is not steer's JSON."""
    try:
        manifest = json.loads((out / PROVENANCE).read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}


def steers_files(out: Path, owned: Iterable[str]) -> set[Path]:
    """The files directly in ``out`` that steer wrote: the manifest, the files it lists, and those
    matching one of the ``owned`` name patterns (fnmatch)."""
    if not out.is_dir():
        return set()
    listed = read_manifest(out).get("files")
    names = {n for n in listed if isinstance(n, str)} if isinstance(listed, list) else set()
    patterns = [PROVENANCE, *owned]
    return {
        path
        for path in out.iterdir()
        if path.is_file() and (path.name in names or any(fnmatch.fnmatchcase(path.name, p) for p in patterns))
    }


@contextlib.contextmanager
def staging(out: Path) -> Iterator[Path]:
    """An empty folder beside ``out`` (same file system: moves are renames), removed afterwards."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.export-") as tmp:
        yield Path(tmp)


def install(staged: Path, out: Path, stale: Iterable[Path], manifest: dict) -> list[Path]:
    """Remove ``stale`` from ``out``, move every file of ``staged`` in, then write the manifest
    (``manifest`` plus the list of files); returns exactly the files written."""
    new = sorted(p for p in staged.iterdir() if p.is_file())
    out.mkdir(parents=True, exist_ok=True)
    for path in stale:
        path.unlink(missing_ok=True)
    written = []
    for path in new:
        os.replace(path, out / path.name)
        written.append(out / path.name)
    atomic_write_text(out / PROVENANCE, json.dumps({**manifest, "files": [p.name for p in written]}, indent=2) + "\n")
    return [*written, out / PROVENANCE]
