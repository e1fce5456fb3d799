"""What the stages of one run share: the config, the run directory, the processes, and lazily
loaded models.

Under ``accelerate launch`` every process builds its own context; ``state`` (accelerate's
``PartialState``) says which one is the main process and holds the barrier the runner uses.
``shard`` and ``gather`` let a data-parallel stage split a list of items over the processes and
put the results back together in the original order on the main process; ``map_sharded`` does
both around one function.

The assignment is fixed: with N processes, item i goes to process i mod N (process 0 is the main
process), so a run's split depends only on N, never on timing, and ``gather`` can undo it.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import TypeVar

import torch
from accelerate import PartialState
from accelerate.utils import DistributedType, broadcast_object_list, gather_object
from omegaconf import DictConfig

from steer import rundir
from steer.core.models import load_model, load_tokenizer
from steer.core.precision import model_dtype
from steer.pairs import PairRecord
from steer.runtime.tracking import Tracker

log = logging.getLogger("steer")

# While the main process runs a stage alone (data, sweep), the others wait at a barrier: allow long.
BARRIER_TIMEOUT = timedelta(hours=48)
T = TypeVar("T")
R = TypeVar("R")


def pick_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def interleave(parts: Sequence[Sequence[T]]) -> list[T]:
    """Undo ``shard``: part r holds items r, r + N, r + 2N, ... of the original list."""
    longest = max((len(p) for p in parts), default=0)
    return [part[k] for k in range(longest) for part in parts if k < len(part)]


class RunContext:
    """One run: stages call ``ctx.model``/``ctx.tokenizer`` and the model loads once, on first use."""

    def __init__(self, cfg: DictConfig, run_dir: Path, tracker: Tracker | None = None) -> None:
        self.cfg = cfg
        self.run_dir = Path(run_dir)
        self.tracker = tracker or Tracker.disabled()
        self.state = PartialState(cpu=pick_device(cfg.device) == "cpu", timeout=BARRIER_TIMEOUT)
        self._models: dict[tuple[str, str], tuple] = {}
        # The running stage's fingerprint (set by the runner): keys its resumable parts and checkpoints.
        self.fingerprint: str | None = None

    def path(self, name: str) -> Path:
        return self.run_dir / name

    @property
    def progress(self) -> bool:
        """Progress bars: ``progress=true`` and stderr a terminal (a CI log gets none)."""
        return bool(self.cfg.progress) and sys.stderr.isatty()

    @property
    def device(self) -> str:
        """This process's device: its own GPU (or the CPU) when launched as several processes."""
        if self.state.distributed_type == DistributedType.NO:
            return pick_device(self.cfg.device)
        return "cpu" if self.state.device.type == "cpu" else str(self.state.device)

    @property
    def is_main(self) -> bool:
        return self.state.is_main_process

    def load_model(self, source: str, dtype: str | None = None) -> tuple:
        """(model, tokenizer) of ``source`` on this process's device, loaded once per (source, dtype).
        ``dtype`` defaults to the run's ``precision`` on this device."""
        key = (source, dtype or model_dtype(self.cfg.precision, self.device))
        if key not in self._models:
            log.info("loading model %s", source)
            self._models[key] = load_model(source, key[1], self.device)
        return self._models[key]

    @property
    def model(self):
        """The run's model (``model.source``)."""
        return self.load_model(self.cfg.model.source)[0]

    @cached_property
    def tokenizer(self):
        """The run model's tokenizer; loading it alone does not load the weights."""
        loaded = self._models.get((self.cfg.model.source, model_dtype(self.cfg.precision, self.device)))
        return loaded[1] if loaded is not None else load_tokenizer(self.cfg.model.source)

    def records(self, split: str | None = None) -> list[PairRecord]:
        """The pairs of ``pairs.jsonl`` (one split, or all)."""
        return rundir.read_pairs(self.run_dir, split)

    def shard(self, items: Sequence[T]) -> list[T]:
        """This process's items: index i where i % num_processes == process_index."""
        world, rank = self.state.num_processes, self.state.process_index
        return [item for i, item in enumerate(items) if i % world == rank]

    def gather(self, local_results: Sequence[T]) -> list[T] | None:
        """On the main process, every process's ``shard`` results in the original order; None elsewhere.
        Every process must call it (it is a collective)."""
        parts = gather_object([list(local_results)])
        return interleave(parts) if self.is_main else None

    def map_sharded(self, items: Sequence[T], fn: Callable[[list[T]], Sequence[R]]) -> list[R] | None:
        """``fn`` over ``items`` split across the processes: every process calls ``fn`` on its
        ``shard`` (one result per item, in order); the main process gets all results in the order
        of ``items``, the others None. A collective: every process must call it.

        The main process's ``items`` are the ones mapped (broadcast first), so processes that built
        their lists from a shared cache at slightly different moments still agree on the split."""
        if self.state.num_processes > 1:
            shared = [list(items) if self.is_main else None]
            items = broadcast_object_list(shared, from_process=0)[0]
        mine = self.shard(items)
        local = list(fn(mine))
        if len(local) != len(mine):
            raise RuntimeError(f"map_sharded: fn returned {len(local)} results for {len(mine)} items")
        return self.gather(local)
