"""OmegaConf resolvers that the configs in ``conf/`` use; ``run.py`` and ``compose_config`` register
them before Hydra composes a config.

``${dataset_name:}`` is a data set's default ``dataset.name``: derived by its loader from what it
reads (``steer.datasets.dataset_name``), so another file through the same loader gets its own run
directory, W&B group, figure title and table column.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from steer.datasets import dataset_name, loader_options


def _dataset_name(*, _parent_: DictConfig) -> str:
    options = {key: _parent_[key] for key in _parent_ if key != "name"}
    return dataset_name(str(options.get("loader")), loader_options(options))


def register() -> None:
    OmegaConf.register_new_resolver("dataset_name", _dataset_name, replace=True)
