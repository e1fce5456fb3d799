"""Training Δ of one intervention with the base model frozen: one loop for CPU, one GPU or many.

The loop runs on ``accelerate``. Started with ``accelerate launch``, every process trains on a
fixed shard of the pairs (example i belongs to process i mod N) and DDP averages the gradients of
Δ; alone, the same code runs in one process. A pair is one packed row [prompt | A_p | A_n]
(``steer.core.metrics.pair_logprobs``). Layers before the steered one do not depend on Δ, so a first
pass caches each pair's layer-l input (and its reference log-likelihoods, the intervention off)
and every step runs only layers l..L (``steer.core.prefix``).

Each step, each pair of the batch gets a multiplier m drawn from ``train_factors`` and is scored in
both directions (or only the first, ``directions="positive"``): A_p is the winner under +m, A_n
under −m. The draws and the shuffling depend only
on (seed, epoch), so a run resumed from its end-of-epoch checkpoint continues exactly as if it had
never stopped, and the same pairs get the same m whatever the number of processes.
"""

from __future__ import annotations

import contextlib
import logging
import math
import resource
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from steer.core.batching import length_batches
from steer.core.interventions import DynamicAffine
from steer.core.metrics import EncodedPair, pair_logprobs
from steer.core.prefix import capture_layer_input, reuse_prefix
from steer.io.atomic import atomic_path
from steer.objectives import Objective, Side

log = logging.getLogger("steer")

LOG_COLUMNS = ["step", "epoch", "loss", "lr", "grad_norm", "seconds"]
# Which directions of a pair train: both (+m prefers A_p, −m prefers A_n) or positive (+m only, as
# the paper's code trains its SPLIT local weights: preference_pairs ["orig_add"]).
DIRECTIONS = ("both", "positive")


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and schedule. ``batch_size`` counts pairs per process and micro-step."""

    lr: float
    epochs: int
    batch_size: int
    train_factors: tuple[float, ...]
    grad_accum: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    dropout: float = 0.0
    directions: str = "both"
    seed: int = 0

    def __post_init__(self) -> None:
        def count(n) -> bool:
            return isinstance(n, int) and not isinstance(n, bool) and n >= 1

        checks = {
            "lr": (math.isfinite(self.lr) and self.lr > 0, "a finite number > 0"),
            "epochs": (count(self.epochs), "a positive integer"),
            "batch_size": (count(self.batch_size), "a positive integer"),
            "grad_accum": (count(self.grad_accum), "a positive integer"),
            "train_factors": (
                len(self.train_factors) > 0 and all(math.isfinite(m) and m > 0 for m in self.train_factors),
                "a non-empty list of finite numbers > 0",
            ),
            "grad_clip": (self.grad_clip > 0, "a number > 0"),
            "weight_decay": (math.isfinite(self.weight_decay) and self.weight_decay >= 0, "a finite number >= 0"),
            "dropout": (0 <= self.dropout < 1, "a number in [0, 1)"),
            "directions": (self.directions in DIRECTIONS, " or ".join(DIRECTIONS)),
        }
        for key, (ok, allowed) in checks.items():
            if not ok:
                name = "factors" if key == "train_factors" else key  # the config's train.factors
                raise ValueError(f"train.{name}={getattr(self, key)!r} is not valid: it must be {allowed}")


class Diverged(Exception):
    """A step's loss, gradient norm or updated Δ is not finite (raised inside the loop, before the
    bad update is kept; ``train_intervention`` turns it into ``NonFiniteLoss``)."""

    def __init__(self, loss: float, grad_norm: float, lr: float, what: str = "") -> None:
        super().__init__(what or "loss")
        self.loss, self.grad_norm, self.lr, self.what, self.epoch = loss, grad_norm, lr, what, 0


class NonFiniteLoss(RuntimeError):
    """Training diverged: a step's loss, gradient norm or updated Δ is NaN or infinite.

    Raised before the bad update is kept, so Δ and the checkpoint of the last finished epoch (left
    on disk) hold only finite values; ``train_log.csv`` holds every good step.
    """

    def __init__(
        self, step: int, epoch: int, loss: float, grad_norm: float, lr: float, checkpoint: Path | None, what: str = ""
    ) -> None:
        self.step, self.epoch, self.loss, self.grad_norm = step, epoch, loss, grad_norm
        value = f"the update made {what} non-finite" if what else f"loss {loss}, gradient norm {grad_norm}"
        kept = (
            f"the last good checkpoint {checkpoint} is kept"
            if checkpoint is not None and checkpoint.is_file()
            else "no epoch had finished, so there is no checkpoint"
        )
        super().__init__(
            f"train: step {step} (epoch {epoch}) is not finite ({value}) at lr {lr:g}: training diverged. "
            f"Lower train.lr or check the objective's options and the data; {kept}."
        )


@dataclass(frozen=True)
class TrainReport:
    """What a training run measured; ``log`` holds one row per optimiser step (LOG_COLUMNS)."""

    steps: int
    seconds_per_step: float
    prefix_seconds: float
    peak_memory_mib: float
    memory_kind: str
    resumed_epochs: int
    log: list[dict]

    def measurements(self) -> dict:
        """Timing and memory, rounded, as recorded in ``intervention.json``."""
        return {
            "seconds_per_step": round(self.seconds_per_step, 4),
            "prefix_seconds": round(self.prefix_seconds, 3),
            "peak_memory_mib": round(self.peak_memory_mib, 1),
            "memory_kind": self.memory_kind,
        }

    def summary(self) -> str:
        return (
            f"{self.steps} steps, {self.seconds_per_step:.2f} s/step, prefix cache {self.prefix_seconds:.1f} s, "
            f"peak memory {self.peak_memory_mib:.0f} MiB ({self.memory_kind})"
        )


@dataclass(frozen=True)
class Cached:
    """One pair with what the frozen base gives it once: the layer-l input of its packed row
    [prompt | A_p | A_n] and the reference log p of (A_p, A_n), the intervention off."""

    pair: EncodedPair
    hidden: torch.Tensor
    ref_logp: tuple[float, float]


def cache_prefix(model: nn.Module, pairs: Sequence[EncodedPair], layer: int, batch_size: int) -> list[Cached]:
    """Run the bare model once over ``pairs``; keep the input of layer ``layer`` (on CPU) and both
    answers' log p of every pair. Call it with no intervention attached."""
    cached: list[Cached | None] = [None] * len(pairs)
    with torch.no_grad():  # not inference_mode: the cached tensors later enter autograd graphs
        for batch in length_batches(pairs, batch_size):
            rows = [pairs[i] for i in batch]
            with capture_layer_input(model, layer) as captured:
                logp = pair_logprobs(model, rows)
            for j, i in enumerate(batch):
                hidden = captured.value[j, : rows[j].width].detach().to("cpu").clone()
                cached[i] = Cached(rows[j], hidden, (float(logp[j, 0]), float(logp[j, 1])))
    return cached


def padded_hidden(hiddens: Sequence[torch.Tensor], device) -> torch.Tensor:
    """Right-pad cached layer inputs to [rows, width, d], as ``steer.core.metrics.packed_inputs`` pads."""
    width = max(h.shape[0] for h in hiddens)
    out = hiddens[0].new_zeros(len(hiddens), width, hiddens[0].shape[-1])
    for row, h in enumerate(hiddens):
        out[row, : h.shape[0]] = h
    return out.to(device)


class SteeredLogprobs(nn.Module):
    """[rows, 2] log p of (A_p, A_n) with Δ at per-row multipliers, from cached layer-l inputs.

    The base model is held outside the module tree, so DDP sees, broadcasts and averages only Δ.
    """

    def __init__(self, intervention: DynamicAffine, model: nn.Module) -> None:
        super().__init__()
        self.intervention = intervention
        self._base = [model]

    def forward(self, pairs: list[EncodedPair], multipliers: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        model = self._base[0]
        self.intervention.set_multiplier(multipliers)
        with reuse_prefix(model, self.intervention.info.layer, hidden):
            return pair_logprobs(model, pairs)


def epoch_plan(n: int, settings: TrainSettings, epoch: int) -> tuple[np.ndarray, np.ndarray]:
    """(order of the n pairs, multiplier of each pair) for ``epoch``: a function of seed and epoch."""
    rng = np.random.default_rng([settings.seed, epoch])
    order = rng.permutation(n)
    factors = np.asarray(settings.train_factors, dtype=np.float64)[rng.integers(len(settings.train_factors), size=n)]
    return order, factors


def batch_loss(
    module: nn.Module,
    objective: Objective,
    cache: Sequence[Cached],
    pairs: Sequence[int],
    factors: Sequence[float],
    both: bool = True,
) -> torch.Tensor:
    """The objective's loss of ``pairs`` (positions in ``cache``) in one forward pass: a row per
    pair at +m (winner A_p) and, with ``both``, one more at −m (winner A_n). The objective sees all
    the rows at once, so a reduction over the micro-batch (SFT's and SPLIT's ``batch_token_mean``)
    spans this process's micro-batch, both directions."""
    signs = [float(m) for m in factors] + ([-float(m) for m in factors] if both else [])
    rows = [cache[k] for k in pairs] * (2 if both else 1)
    device = next(module.parameters()).device
    logp = module(
        [c.pair for c in rows],
        torch.tensor(signs, dtype=torch.float32, device=device),
        padded_hidden([c.hidden for c in rows], device),
    )
    winner = [0 if m > 0 else 1 for m in signs]  # column of the winner: 0 = A_p, 1 = A_n
    win = _side(logp, rows, winner)
    lose = _side(logp, rows, [1 - w for w in winner])
    return objective(win, lose)


def _side(logp: torch.Tensor, rows: Sequence[Cached], columns: Sequence[int]) -> Side:
    """The answers in ``columns`` (0 = A_p, 1 = A_n) of every row."""
    as_tensor = lambda values: torch.tensor(values, dtype=logp.dtype, device=logp.device)  # noqa: E731
    answers = [len(c.pair.positive) if k == 0 else len(c.pair.negative) for c, k in zip(rows, columns, strict=True)]
    return Side(
        logp=logp[torch.arange(len(rows), device=logp.device), as_tensor(columns).long()],
        ref_logp=as_tensor([c.ref_logp[k] for c, k in zip(rows, columns, strict=True)]),
        n_answer=as_tensor(answers),
        n_sequence=as_tensor([len(c.pair.prompt) + n for c, n in zip(rows, answers, strict=True)]),
    )


def peak_memory(device: torch.device) -> tuple[float, str]:
    """Peak memory in MiB: allocated CUDA memory on a GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "CUDA max allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "max RSS of the process"


@dataclass
class Loop:
    """The optimisation of one training run in one process: Δ's parameters, the DDP-wrapped
    module, the objective, this process's cached pairs (``position``: pair index → cache slot)."""

    module: nn.Module
    objective: Objective
    cache: list[Cached]
    position: dict[int, int]
    params: list[nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    accelerator: object
    settings: TrainSettings

    def step(self, group: Sequence[np.ndarray], factors: np.ndarray) -> tuple[float, float, float]:
        """One optimiser step over ``group`` (micro-batches of pair indices); (loss, lr, grad norm)."""
        accelerator = self.accelerator
        running = torch.zeros((), device=accelerator.device)
        for j, batch in enumerate(group):
            last = j == len(group) - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(self.module):
                pairs = [self.position[i] for i in batch]
                both = self.settings.directions == "both"
                loss = batch_loss(self.module, self.objective, self.cache, pairs, factors[batch], both)
                accelerator.backward(loss / len(group))
            running += loss.detach() / len(group)
        grad_norm = float(accelerator.clip_grad_norm_(self.params, self.settings.grad_clip))
        lr = self.scheduler.get_last_lr()[0]
        # Every process sees the same reduced loss and norm, so all of them stop together.
        loss = float(accelerator.reduce(running, reduction="mean"))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise Diverged(loss, grad_norm, lr)
        self.optimizer.step()
        if not all(bool(p.isfinite().all()) for p in self.params):
            raise Diverged(loss, grad_norm, lr, "Δ")
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss, lr, grad_norm

    def epoch(self, epoch: int, n_pairs: int, n_batches: int) -> Iterator[tuple[float, float, float]]:
        """The steps of ``epoch`` in this process: its pairs in the epoch's order, in ``n_batches``."""
        world, rank = self.accelerator.num_processes, self.accelerator.process_index
        order, factors = epoch_plan(n_pairs, self.settings, epoch)
        # dropout masks from (seed, epoch, process): a resumed run draws what an uninterrupted one would
        torch.manual_seed(int(np.random.default_rng([self.settings.seed, epoch, rank]).integers(2**62)))
        batches = np.array_split(np.asarray([i for i in order if i % world == rank]), n_batches)
        accum = self.settings.grad_accum
        for b in range(0, n_batches, accum):
            try:
                yield self.step(batches[b : b + accum], factors)
            except Diverged as err:
                err.epoch = epoch + 1
                raise

    def run(
        self,
        epochs: range,
        n_pairs: int,
        n_batches: int,
        rows: list[dict],
        bar,
        log_metrics: Callable[[dict], None] | None,
        epoch_done: Callable[[int], None],
    ) -> int:
        """Train ``epochs``, appending one row per step to ``rows``; the number of steps run."""
        start, steps = time.perf_counter(), 0
        for epoch in epochs:
            for loss, lr, grad_norm in self.epoch(epoch, n_pairs, n_batches):
                steps += 1
                row = {"step": len(rows) + 1, "epoch": epoch + 1, "loss": loss, "lr": lr, "grad_norm": grad_norm}
                rows.append({**row, "seconds": round(time.perf_counter() - start, 3)})
                if log_metrics is not None:
                    log_metrics({f"train/{k}": v for k, v in rows[-1].items()})
                bar.update()
                bar.set_postfix(loss=f"{loss:.4f}")
            epoch_done(epoch)
        return steps


def shard_cache(
    model: nn.Module, pairs: Sequence[EncodedPair], intervention: DynamicAffine, batch_size: int, world: int, rank: int
) -> tuple[list[Cached], dict[int, int], float]:
    """This process's pairs (index i with i % world == rank) through the bare model once: their
    ``Cached`` prefixes, the slot of each pair index in that list, and the seconds it took."""
    start = time.perf_counter()
    shard = [i for i in range(len(pairs)) if i % world == rank]
    intervention.detach()
    cache = cache_prefix(model, [pairs[i] for i in shard], intervention.info.layer, batch_size)
    return cache, {i: k for k, i in enumerate(shard)}, time.perf_counter() - start


def freeze(intervention: DynamicAffine) -> None:
    """After training (or an interruption): detached, at m = 0, no gradients, no dropout."""
    intervention.eval()
    intervention.dropout = 0.0
    intervention.detach()
    intervention.set_multiplier(0.0)
    intervention.requires_grad_(False)


def start_or_resume(
    intervention: DynamicAffine, settings: TrainSettings, total_steps: int, checkpoint: Path | None, key: str
) -> tuple[list[nn.Parameter], torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR, list[dict], int]:
    """Δ's parameters made trainable, AdamW with a linear decay to 0 over ``total_steps``, and what
    an interrupted run with the same ``key`` had done: (params, optimizer, scheduler, log, epochs done)."""
    params = list(intervention.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1.0 - s / total_steps))
    rows, first_epoch = _resume(checkpoint, key, intervention, optimizer, scheduler)
    if first_epoch:
        log.info("train: resuming after epoch %d of %d from %s", first_epoch, settings.epochs, checkpoint)
    return params, optimizer, scheduler, rows, first_epoch


def train_intervention(
    model: nn.Module,
    pairs: Sequence[EncodedPair],
    intervention: DynamicAffine,
    objective: Objective,
    settings: TrainSettings,
    accelerator,
    *,
    progress: bool = True,
    log_metrics: Callable[[dict], None] | None = None,
    log_path: Path | None = None,
    checkpoint: Path | None = None,
    fingerprint: str = "",
) -> TrainReport:
    """Train ``intervention``'s Δ on ``pairs`` (prompt, A_p, A_n tokenised) with the base model frozen.

    ``accelerator`` is an ``accelerate.Accelerator``. The main process writes ``log_path`` (the loss
    curve, CSV) and, after every epoch but the last, ``checkpoint`` (Δ, optimiser, schedule, log);
    a checkpoint with the same ``fingerprint`` and number of processes is resumed from. Returns
    timings and the log.
    """
    world, rank = accelerator.num_processes, accelerator.process_index
    if len(pairs) < world:
        raise ValueError(f"{len(pairs)} training pairs cannot feed {world} processes")
    model.eval().requires_grad_(False)
    torch.manual_seed(settings.seed)

    cache, position, prefix_seconds = shard_cache(model, pairs, intervention, settings.batch_size, world, rank)
    n_batches = math.ceil(math.ceil(len(pairs) / world) / settings.batch_size)
    total = settings.epochs * math.ceil(n_batches / settings.grad_accum)
    key = f"{fingerprint}/{world}"  # resumed only by the same configuration and number of processes
    params, optimizer, scheduler, rows, first_epoch = start_or_resume(intervention, settings, total, checkpoint, key)
    intervention.dropout = settings.dropout
    intervention.train()
    intervention.attach(model)
    module = accelerator.prepare(SteeredLogprobs(intervention, model))
    loop = Loop(module, objective, cache, position, params, optimizer, scheduler, accelerator, settings)
    main = accelerator.is_main_process
    bar = tqdm(total=total, initial=len(rows), desc="train", unit="step", disable=not (progress and main))

    def epoch_done(epoch: int) -> None:  # the main process keeps the log and the checkpoint current
        if main:
            _write_log(log_path, rows)
            if checkpoint is not None and epoch + 1 < settings.epochs:
                _save_checkpoint(checkpoint, key, epoch + 1, intervention, optimizer, scheduler, rows)

    loop_start = time.perf_counter()
    try:
        epochs = range(first_epoch, settings.epochs)
        steps_run = loop.run(epochs, len(pairs), n_batches, rows, bar, log_metrics, epoch_done)
    except Diverged as err:
        if main:
            _write_log(log_path, rows)
        raise NonFiniteLoss(len(rows) + 1, err.epoch, err.loss, err.grad_norm, err.lr, checkpoint, err.what) from None
    finally:
        bar.close()
        freeze(intervention)
    memory, kind = peak_memory(accelerator.device)
    return TrainReport(
        steps=steps_run,
        seconds_per_step=(time.perf_counter() - loop_start) / max(steps_run, 1),
        prefix_seconds=prefix_seconds,
        peak_memory_mib=memory,
        memory_kind=kind,
        resumed_epochs=first_epoch,
        log=rows,
    )


def _write_log(path: Path | None, rows: list[dict]) -> None:
    if path is not None:
        with atomic_path(path) as tmp:
            pd.DataFrame(rows, columns=LOG_COLUMNS).to_csv(tmp, index=False)


def _save_checkpoint(path: Path, fingerprint: str, epochs_done: int, intervention, optimizer, scheduler, rows) -> None:
    state = {
        "fingerprint": fingerprint,
        "epochs_done": epochs_done,
        "intervention": intervention.tensors(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "log": rows,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _resume(path: Path | None, fingerprint: str, intervention, optimizer, scheduler) -> tuple[list[dict], int]:
    """Load the end-of-epoch checkpoint if it belongs to this configuration; (log rows, epochs done)."""
    if path is None or not path.is_file():
        return [], 0
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.info("train: ignoring %s, it was written for another configuration or process count", path)
        return [], 0
    intervention.load_tensors(state["intervention"], source=str(path))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    return list(state["log"]), int(state["epochs_done"])
