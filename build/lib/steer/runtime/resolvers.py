"""OmegaConf resolvers that the configs in ``steer/conf/`` use; ``run.py`` and ``compose_config`` register
them before Hydra composes a config.

``${dataset_name:}`` is a data set's default ``dataset.name``: derived by its loader from what it
reads (``steer.datasets.dataset_name``), so another file through the same loader gets its own run
directory, W&B group, figure title and table column.

``${run_variant:${hydra.overrides.task},${hydra.runtime.choices}}`` is the part of a run directory
after the run id: empty for a job whose command line changes no key that enters a stage's
fingerprint (so ``make run`` writes where it always did), else ``/`` and the changed keys in Hydra's
``override_dirname`` form (``dataset.limit=4,train.lr=0.01``), or ``/h-<hash>`` when
that would be longer than ``MAX_VARIANT`` characters. Two jobs of a multirun that differ in such a
key (a learning rate, a limit, a seed, an Optuna trial's parameters) never share a run directory,
whichever launcher runs them; ``overrides.yaml`` beside the run says which keys made it a variant.
Which keys count comes from the stages themselves (their ``keys`` minus ``ignore``), passed to
``register``; group choices (``intervention=lora``) and ``layer`` are already in the run id.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from steer.datasets import dataset_name, loader_options

# Longest readable variant (one path component); longer ones become a hash plus overrides.yaml.
MAX_VARIANT = 120
# Keys the run id already names.
IN_RUN_ID = ("layer",)


def _dataset_name(*, _parent_: DictConfig) -> str:
    options = {key: _parent_[key] for key in _parent_ if key != "name"}
    return dataset_name(str(options.get("loader")), loader_options(options))


def _covered(key: str, prefixes: Iterable[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in prefixes)


def variant_overrides(
    overrides: Sequence[str], choices: Mapping[str, object], keys: Sequence[str], ignore: Sequence[str]
) -> dict[str, str]:
    """The command-line overrides (``key=value``, Hydra's syntax) that set a key some stage's
    fingerprint covers (``keys`` minus ``ignore``), other than group choices and keys in the run id;
    sorted by key, values as written."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found = {}
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.get_key_element().lstrip("+~")
        if key in choices or key.startswith("hydra") or key in IN_RUN_ID:
            continue
        if _covered(key, keys) and not _covered(key, ignore):
            found[key] = override.get_value_element_as_str()
    return dict(sorted(found.items()))


def variant_dirname(variant: Mapping[str, str]) -> str:
    """The run directory's suffix for ``variant`` (see the module docstring): '' when empty."""
    if not variant:
        return ""
    text = ",".join(f"{k}={v}" for k, v in variant.items())
    text = re.sub(r"[/\\\s]+", "_", text)
    if len(text) > MAX_VARIANT:
        text = "h-" + hashlib.sha256(text.encode()).hexdigest()[:12]
    return "/" + text


def register(fingerprinted: tuple[Sequence[str], Sequence[str]] | None = None) -> None:
    """Register the resolvers. ``fingerprinted`` = (keys, ignore) of every stage together
    (``steer.stages.fingerprinted``); without it ``${run_variant:}`` refuses to resolve, since a
    run directory that ignored the overrides would let two configs share it."""
    OmegaConf.register_new_resolver("dataset_name", _dataset_name, replace=True)

    def run_variant(overrides, choices) -> str:
        if fingerprinted is None:
            raise ValueError("run_variant: register() was called without the stages' fingerprint keys")
        return variant_dirname(variant_overrides(list(overrides), dict(choices), *fingerprinted))

    OmegaConf.register_new_resolver("run_variant", run_variant, replace=True)
