"""``gguf``: a vector run as a llama.cpp control vector (``--control-vector FILE``).

The file holds one F32 1-D tensor ``direction.<layer>`` = m·Δb. Layer numbering, from llama.cpp
(ggml-org/llama.cpp): ``common_control_vector_load_one`` in ``common/common.cpp`` parses the
number after ``direction.``, rejects 0 ("invalid (zero) direction tensor layer index") and puts
``direction.k`` at ``data[(k - 1) * n_embd]``; ``llama_adapter_cvec::apply`` in
``src/llama-adapter.cpp`` copies that slot into ``tensors[k]`` ("buffer doesn't have data for layer
0"); and each model graph (e.g. ``src/models/llama.cpp``) calls ``build_cvec(cur, il)`` right after
block ``il``'s final residual add (``l_out``), at every position. So ``direction.k`` is added to the
output of 0-based decoder block k: steer's vector at layer l is ``direction.l``, and a vector at
layer 0 cannot be expressed (refused). The loader reads no metadata; the file carries
``controlvector.model_hint`` and ``controlvector.layer_count`` (as llama.cpp's generator and repeng
write them) and steer's provenance under ``steer.*``. Load with strength 1 (``--control-vector``,
or ``--control-vector-scaled FILE 1.0``) to reproduce steer at m.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from steer.core.models import load_config
from steer.export.base import Exporter, ExportError, Source, require_residual_vector

FILE = "control_vector.gguf"
ARCH = "controlvector"


class ControlVectorExporter(Exporter):
    name = "gguf"
    summary = "vector run -> llama.cpp control vector GGUF (one direction.<layer> tensor, m folded in)"
    owned = (FILE,)

    def check(self, source: Source) -> None:
        require_residual_vector(source, self.name)
        if source.layer < 1:
            raise ExportError(
                "--to gguf: llama.cpp rejects direction.0 (it never steers block 0's output); "
                f"this run steers layer {source.layer}"
            )

    def write(self, source: Source, out: Path) -> None:
        import gguf

        vector = require_residual_vector(source, self.name).numpy().astype(np.float32)
        writer = gguf.GGUFWriter(str(out / FILE), ARCH)
        writer.add_string(f"{ARCH}.model_hint", load_config(source.model_source).model_type)
        writer.add_uint32(f"{ARCH}.layer_count", 1)
        for key, value in source.provenance(self.name).items():
            writer.add_string(f"steer.{key}", str(value))
        writer.add_float32("steer.multiplier", source.m)
        writer.add_tensor(f"direction.{source.layer}", vector)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
