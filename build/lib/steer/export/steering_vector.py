"""``steering-vectors``: a vector run as a file for the ``steering-vectors`` library.

steering-vectors keeps a ``SteeringVector(layer_activations={layer: tensor}, layer_type=...)``
and its ``apply(model, multiplier=k)`` adds ``k · tensor`` to the output of the matched layer at
every position; layer type ``decoder_block`` matches ``model.layers[i]``, the same 0-based index
and site (the decoder layer's output hidden state) as steer's vector form. The library has no file
format of its own, so the vector is one safetensors file: tensor ``layer_activations.<layer>`` =
m·Δb, metadata ``layer_type``, ``layer`` and the provenance. ``load_steering_vector`` turns it into a
real ``SteeringVector``; ``apply(model, multiplier=1)`` then reproduces steer at m.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save_file

from steer.export.base import Exporter, Source, require_residual_vector

FILE = "steering_vector.safetensors"
LAYER_TYPE = "decoder_block"
PREFIX = "layer_activations."


class SteeringVectorExporter(Exporter):
    name = "steering-vectors"
    summary = "vector run -> steering_vector.safetensors for steering-vectors' SteeringVector (m folded in)"
    owned = (FILE,)

    def check(self, source: Source) -> None:
        require_residual_vector(source, self.name)

    def write(self, source: Source, out: Path) -> None:
        vector = require_residual_vector(source, self.name).contiguous()
        meta = {"layer_type": LAYER_TYPE, "layer": str(source.layer)}
        meta.update({f"steer_{k}": str(v) for k, v in source.provenance(self.name).items()})
        save_file({f"{PREFIX}{source.layer}": vector}, str(out / FILE), metadata=meta)


def load_steering_vector(path: str | Path):
    """A ``steering_vectors.SteeringVector`` from a file written by this exporter."""
    from steering_vectors import SteeringVector

    with safe_open(str(path), framework="pt") as fh:
        layers = {int(key.removeprefix(PREFIX)): fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118 (safe_open is not iterable)
        layer_type = fh.metadata()["layer_type"]
    return SteeringVector(layer_activations=layers, layer_type=layer_type)
