"""Reading a run's files so that a damaged or foreign one is one clear error, never a wrong result.

A file a stage wrote may later be truncated (a full disk, a copy cut short), garbled, or edited by
hand. Each reader here turns every way such a file fails to parse into one ``CorruptArtifact``
naming the file and what to do, instead of a library traceback that names neither.
``verify_intervention`` goes further: a well-formed ``intervention.json`` that describes another
run (another layer, form or model) or disagrees with its tensors is refused too.

No torch import at module level: readers of JSON and parquet stay light.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

REMEDY = "re-run with force=true to recompute it, or delete the file"


class CorruptArtifact(ValueError):
    """A run file that cannot be trusted; the message names the file, the problem and the remedy."""

    def __init__(self, path: str | Path, problem: str, remedy: str = REMEDY) -> None:
        self.path, self.problem, self.remedy = Path(path), problem, remedy
        super().__init__(f"{path}: {problem}; {remedy}")


def read_json(path: str | Path) -> dict:
    """The JSON object in ``path``; a truncated, garbled or non-object file is a ``CorruptArtifact``."""
    path = Path(path)
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptArtifact(path, f"is not valid JSON ({err})") from None
    if not isinstance(value, dict):
        raise CorruptArtifact(path, f"holds a JSON {type(value).__name__}, not an object")
    return value


def read_parquet(path: str | Path, columns: Sequence[str] = ()) -> pd.DataFrame:
    """The table in ``path``; unreadable, or missing one of ``columns``, is a ``CorruptArtifact``."""
    import pyarrow as pa

    path = Path(path)
    try:
        frame = pd.read_parquet(path)
    except (pa.ArrowException, OSError, ValueError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise CorruptArtifact(path, f"is not a readable parquet file ({_first_line(err)})") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise CorruptArtifact(path, f"lacks the columns {missing} (has {list(frame.columns)})")
    return frame


def read_safetensors(path: str | Path) -> dict:
    """The tensors in ``path`` (name → ``torch.Tensor``, on CPU); a truncated or garbled file is a
    ``CorruptArtifact``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise CorruptArtifact(path, f"is not a readable safetensors file ({_first_line(err)})") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0][:200]


def verify_intervention(
    meta: Mapping,
    tensors: Mapping,
    expected: Mapping,
    meta_path: str | Path = "intervention.json",
    weights_path: str | Path = "intervention.safetensors",
) -> None:
    """Refuse an intervention that does not belong to this run or disagrees with itself.

    ``meta`` is ``intervention.json``; ``tensors`` the safetensors' name → tensor; ``expected`` what
    the run's config says, e.g. ``{"form": "vector", "layer": 15, "model": source, "d_in": 576,
    "d_out": 576, "shapes": {"delta_b": [576]}}`` (any subset of meta's keys). Checks, in order:
    every expected key against the json; the json's ``shapes`` against the tensors (same names, same
    shapes); every tensor finite. The first mismatch raises ``CorruptArtifact`` naming the file and
    both values.
    """
    for key, want in expected.items():
        have = meta.get(key)
        if _normal(have) != _normal(want):
            raise CorruptArtifact(
                meta_path,
                f"says {key}={have!r} but this run's config has {key}={want!r}: the intervention was "
                "made for another configuration",
                "re-run with force=true to retrain it, or delete intervention.json and intervention.safetensors",
            )
    shapes = meta.get("shapes")
    if not isinstance(shapes, Mapping):
        raise CorruptArtifact(meta_path, "has no 'shapes' object describing the tensors")
    if set(shapes) != set(tensors):
        raise CorruptArtifact(
            weights_path, f"holds the tensors {sorted(tensors)} but {Path(meta_path).name} lists {sorted(shapes)}"
        )
    for name, tensor in tensors.items():
        if list(tensor.shape) != list(shapes[name]):
            raise CorruptArtifact(
                weights_path,
                f"tensor {name} has shape {list(tensor.shape)} but {Path(meta_path).name} says {list(shapes[name])}",
            )
        if tensor.numel() and not bool(tensor.float().isfinite().all()):
            bad = int((~tensor.float().isfinite()).sum())
            raise CorruptArtifact(weights_path, f"tensor {name} holds {bad} non-finite values (NaN or inf)")


def _normal(value):
    """Compare config and JSON values alike: tuples as lists, integral floats as ints."""
    if isinstance(value, Mapping):
        return {k: _normal(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return value
