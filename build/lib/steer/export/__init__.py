"""Export a trained run at a multiplier m into formats other libraries load.

    python -m steer.export RUN_DIR --m 1.5 --to FORMAT --out DIR

``EXPORTS`` maps each format to its exporter class (a new format = one class + one line here):
``peft`` (LoRA adapter), ``merged`` (plain model folder), ``steering-vectors`` and ``gguf``
(vectors). Each checks the run before any model loads and writes ``steer_export.json`` (source run,
m, steer version, the files written) beside its artifact. An ``out`` that holds files is refused
unless ``overwrite``; with it only steer's own files there are replaced (``steer.export.outdir``).
"""

from __future__ import annotations

from pathlib import Path

from steer.export.base import Exporter, Source, read_source
from steer.export.control_vector import ControlVectorExporter
from steer.export.errors import ExportError
from steer.export.merged import MergedExporter
from steer.export.outdir import PROVENANCE, check_out
from steer.export.peft_adapter import PeftExporter
from steer.export.steering_vector import SteeringVectorExporter, load_steering_vector

EXPORTS: dict[str, type[Exporter]] = {
    cls.name: cls for cls in (PeftExporter, MergedExporter, SteeringVectorExporter, ControlVectorExporter)
}

__all__ = ["EXPORTS", "PROVENANCE", "ExportError", "Exporter", "Source", "export", "load_steering_vector"]


def export(run_dir: str | Path, m: float, to: str, out: str | Path, overwrite: bool = False) -> list[Path]:
    """Export the run in ``run_dir`` at multiplier ``m`` as format ``to`` into folder ``out``;
    returns exactly the files written. Bad input, and an ``out`` holding files without
    ``overwrite``, raise ExportError before any model loads or any file changes."""
    if to not in EXPORTS:
        raise ExportError(f"--to {to!r} is not a known format; choose one of {', '.join(EXPORTS)}")
    out = Path(out)
    check_out(out, overwrite)
    return EXPORTS[to]().export(read_source(run_dir, m), out)
