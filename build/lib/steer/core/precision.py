"""The numeric precision of a run's model: ``precision=fp32|bf16``.

bf16 halves the memory of weights and activations (a 9B model in 18 GB instead of 36 GB) and runs
on the GPU's bf16 tensor cores. Only the frozen model is cast: Δ (the intervention's tensors) stays
fp32, and every log-probability is taken in fp32 (``steer.core.metrics`` upcasts the logits before the
log-softmax), so the sums over answer tokens do not lose bf16's 8 bits of mantissa.
"""

from __future__ import annotations

import logging

log = logging.getLogger("steer")

# precision -> the torch dtype name the model is loaded in.
PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}


def model_dtype(precision: str, device: str) -> str:
    """The dtype name to load the model in for ``precision`` on ``device``.

    bf16 on a CPU works (PyTorch has bf16 CPU kernels) but is several times slower than fp32 on
    most CPUs: allowed, with a warning, so a GPU config can be tried out on a laptop.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    if precision == "bf16" and device == "cpu":
        log.warning("precision=bf16 on the CPU: correct but slow on most CPUs; precision=fp32 is faster there")
    return PRECISIONS[precision]
