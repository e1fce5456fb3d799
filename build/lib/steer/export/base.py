"""What every export shares: the source run read once, its provenance, and the exporter base class.

An export turns one trained run (``intervention.safetensors`` + ``intervention.json`` +
``config.yaml``) at one multiplier m into an artifact another library loads. Every artifact records
where it came from (``PROVENANCE`` = ``steer_export.json`` beside it, and the format's own metadata
where it has any): the source run, m, the form and layer, the base model, and the steer version.
``steer_export.json`` also lists the files the export wrote, so a later ``--overwrite`` replaces
exactly steer's files (``steer.export.outdir``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

import steer
from steer import rundir
from steer.core.interventions import DynamicAffine
from steer.export.errors import ExportError
from steer.export.outdir import install, staging, steers_files


@dataclass(frozen=True)
class Source:
    """One run at one multiplier: the intervention, the model it was trained on, and m."""

    run_dir: Path
    intervention: DynamicAffine
    model_source: str
    model_dtype: str
    model_name: str
    m: float

    @property
    def form(self) -> str:
        return self.intervention.form

    @property
    def layer(self) -> int:
        return self.intervention.info.layer

    def scaled_update(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(m·ΔW, m·Δb) in float32, from the form's ``dense_update`` (None where the form has none)."""
        weight, bias = self.intervention.dense_update()
        return tuple(None if t is None else self.m * t.float() for t in (weight, bias))

    def provenance(self, fmt: str) -> dict:
        """What every artifact records about itself."""
        return {
            "format": fmt,
            "source_run": str(self.run_dir.resolve()),
            "m": self.m,
            "form": self.form,
            "layer": self.layer,
            "objective": self.intervention.info.objective,
            "model": self.model_name,
            "model_source": self.model_source,
            "steer_version": steer.__version__,
        }


def read_source(run_dir: str | Path, m: float) -> Source:
    """Read a run for export; a missing file, key or a non-finite m is an error naming it."""
    run_dir = Path(run_dir)
    if not math.isfinite(m):
        raise ExportError(f"--m must be a finite number, got {m}")
    for name in (rundir.CONFIG, rundir.META, rundir.WEIGHTS):
        if not (run_dir / name).is_file():
            raise ExportError(f"{run_dir / name} is missing: export needs a trained run (train stage finished)")
    config = rundir.read_config(run_dir)
    model = config.get("model") or {}
    if "source" not in model:
        raise ExportError(f"{run_dir / rundir.CONFIG} has no model.source: cannot tell which base model to export for")
    return Source(
        run_dir=run_dir,
        intervention=DynamicAffine.load(run_dir),
        model_source=str(model["source"]),
        model_dtype=str(model.get("dtype", "float32")),
        model_name=str(model.get("name", model["source"])),
        m=float(m),
    )


class Exporter:
    """One export format. Subclasses set ``name``, ``summary`` and ``owned`` (the fnmatch patterns of
    every file the format can write, so that a re-export knows its stale files from a user's), and
    implement ``check`` (cheap, before any model loads; raises ExportError) and ``write`` (the
    artifact's files into an empty folder)."""

    name: ClassVar[str]
    summary: ClassVar[str]
    owned: ClassVar[tuple[str, ...]]

    def check(self, source: Source) -> None:
        raise NotImplementedError

    def write(self, source: Source, out: Path) -> None:
        raise NotImplementedError

    def export(self, source: Source, out: Path) -> list[Path]:
        """Check, write the artifact into a staging folder, then replace steer's earlier files in
        ``out`` with it (a user's files stay) and write the provenance; returns the files written."""
        self.check(source)
        with staging(out) as staged:
            self.write(source, staged)
            return install(staged, out, steers_files(out, self.owned), source.provenance(self.name))


def require_residual_vector(source: Source, fmt: str) -> torch.Tensor:
    """m·Δb of a run whose update is a residual-stream vector (no ΔW); else an ExportError."""
    weight, bias = source.scaled_update()
    if source.intervention.info.site != "residual" or weight is not None or bias is None:
        raise ExportError(
            f"--to {fmt} holds one residual-stream vector per layer; this run's form {source.form!r} "
            f"edits {source.intervention.info.site} (ΔW: {weight is not None}, Δb: {bias is not None}). "
            "Use --to merged for it."
        )
    return bias
