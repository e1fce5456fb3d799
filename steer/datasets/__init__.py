"""Data set loaders by name. Each loader returns train/test ``Splits`` of ``PolarityPair``.

A loader is a function of keyword options: the ``dataset.*`` keys other than the generic ones
(``name``, ``loader``, ``limit``, ``instruction``, ``answer_format``, ``generation``), which the
data stage and data-check handle. An option it does not take is reported by name before any data
is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from steer.data import Splits
from steer.datasets import axbench, persona, powerseeking, sentiment

GENERIC_KEYS = ("name", "loader", "limit", "instruction", "answer_format", "generation")

LOADERS: dict[str, Callable[..., Splits]] = {
    "sentiment": sentiment.load,
    "psychopathy": persona.load,
    "powerseeking": powerseeking.load,
    "axbench": axbench.load,
}


def loader_options(dataset: dict) -> dict:
    """The keys of a ``dataset`` config that belong to its loader."""
    return {k: v for k, v in dataset.items() if k not in GENERIC_KEYS}


def load_splits(loader: str, options: dict) -> Splits:
    """Call loader ``loader`` with ``options``, naming any key it does not accept."""
    if loader not in LOADERS:
        raise ValueError(f"dataset.loader={loader!r} is not one of {', '.join(sorted(LOADERS))}")
    fn = LOADERS[loader]
    accepted = set(inspect.signature(fn).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"dataset.{unknown[0]} is not an option of the {loader} loader (it takes: {', '.join(sorted(accepted))})"
        )
    return fn(**options)
