"""Device slots of jobs side by side on one node (``-m hydra/launcher=node node.jobs=4``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, open_dict

from steer.stages.base import ConfigError


@contextlib.contextmanager
def node_slot(cfg: DictConfig) -> Iterator[None]:
    """With ``node.jobs`` > 1: hold a device slot (a lock file under ``output_root``, the multirun's
    folder, shared by its jobs) for this job's life, and run on its device with its share of the CPU threads."""
    jobs = cfg.node.jobs
    if jobs < 1:
        raise ConfigError(f"node.jobs must be a positive integer, got {jobs!r}")
    if jobs == 1:
        yield
        return
    import torch

    from steer.runtime.devices import claim_slot, pin, slot_plan

    devices = cfg.node.devices
    if devices is None and cfg.device != "cpu" and torch.cuda.is_available():
        devices = list(range(torch.cuda.device_count()))
    with claim_slot(Path(cfg.output_root) / ".node-slots", jobs) as index:
        slot = slot_plan(index, jobs, None if cfg.device == "cpu" else devices, len(os.sched_getaffinity(0)))
        pin(slot)
        with open_dict(cfg):
            cfg.device = slot.device
        yield
