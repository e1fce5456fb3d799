"""Data set loaders by name. Each loader module has ``load(**options) -> Splits`` (train/test
``PolarityPair``) and ``name(**options) -> str``: the data set's name, derived from what it reads,
so two different data files never share a run directory (``dataset.name`` defaults to it).

A loader is a function of keyword options: the ``dataset.*`` keys other than the generic ones
(``name``, ``loader``, ``limit``, ``instruction``, ``answer_format``, ``generation``), which the
data stage and data-check handle. An option it does not take is reported by name before any data
is read.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import ModuleType

from steer.datasets import axbench, persona, powerseeking, sentiment
from steer.pairs import Splits

GENERIC_KEYS = ("name", "loader", "limit", "validation", "instruction", "answer_format", "generation")

LOADERS: dict[str, ModuleType] = {
    "sentiment": sentiment,
    "psychopathy": persona,
    "powerseeking": powerseeking,
    "axbench": axbench,
}


def loader_options(dataset: dict) -> dict:
    """The keys of a ``dataset`` config that belong to its loader."""
    return {k: v for k, v in dataset.items() if k not in GENERIC_KEYS}


def loader_module(loader: str) -> ModuleType:
    if loader not in LOADERS:
        raise ValueError(f"dataset.loader={loader!r} is not one of {', '.join(sorted(LOADERS))}")
    return LOADERS[loader]


def dataset_name(loader: str, options: dict) -> str:
    """The name of the data set ``loader`` reads with ``options`` (the keys its ``name`` takes)."""
    fn: Callable[..., str] = loader_module(loader).name
    accepted = set(inspect.signature(fn).parameters)
    return fn(**{k: v for k, v in options.items() if k in accepted})


def load_splits(loader: str, options: dict) -> Splits:
    """Call loader ``loader`` with ``options``, naming any key it does not accept."""
    fn = loader_module(loader).load
    accepted = set(inspect.signature(fn).parameters)
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ValueError(
            f"dataset.{unknown[0]} is not an option of the {loader} loader (it takes: {', '.join(sorted(accepted))})"
        )
    check_counts(options)
    return fn(**options)


def check_counts(options: dict) -> None:
    """The split sizes and the seed, named by key: a negative size would slice silently."""
    for key in ("n_train", "n_test", "seed"):
        value = options.get(key)
        if key in options and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
            raise ValueError(f"dataset.{key} must be a non-negative integer, got {value!r}")
