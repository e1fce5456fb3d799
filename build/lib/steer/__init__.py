"""steer: local weights, LoRA and steering vectors as one dynamic weight update.

h_out = (W + m·ΔW)·h + (b + m·Δb) at one layer; train Δ, sweep m, measure preference and utility
log-odds, fit validity-decay curves, judge generations. Library modules take plain arguments;
only ``steer.stages`` reads the Hydra config.

The names in ``__all__`` are the library API, importable without Hydra::

    import steer
    model, tokenizer = steer.load_model("embedded:smollm2-135m")
    iv = steer.DynamicAffine.load("outputs/sentiment/smollm2-135m/vector-diffmean/layer15")
    with iv.attached(model, multiplier=2.0):
        ...

They are imported on first use, so ``import steer.report`` (or ``steer.rundir``) loads no torch.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> module that defines it ("module:attribute" where the names differ: the function
# steer.core.sweep.sweep cannot be steer.core.sweep, which is its module)
_API = {
    "load_model": "steer.core.models",
    "load_tokenizer": "steer.core.models",
    "FORMS": "steer.core.forms",
    "Form": "steer.core.forms",
    "OBJECTIVES": "steer.objectives",
    "Objective": "steer.objectives",
    "make_objective": "steer.objectives",
    "DiffMean": "steer.objectives",
    "DynamicAffine": "steer.core.interventions",
    "new_intervention": "steer.core.interventions",
    "PairRecord": "steer.pairs",
    "render_prompt": "steer.pairs",
    "encode_pair": "steer.core.metrics",
    "pair_losses": "steer.core.sweep",
    "pref_odds": "steer.core.metrics",
    "util_odds": "steer.core.metrics",
    "sweep_pairs": "steer.core.sweep:sweep",
    "summarize": "steer.core.sweep",
    "fit_sweep": "steer.analysis.fit",
    "greedy_generate": "steer.core.generate",
    "TrainSettings": "steer.objectives.training",
    "train_intervention": "steer.objectives.training",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'steer' has no attribute {name!r}")
    module, _, attribute = _API[name].partition(":")
    value = getattr(importlib.import_module(module), attribute or name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
