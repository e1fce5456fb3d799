"""Continuous batching: one decode batch of rows from many requests, each row with its own run and m.

One thread owns the model and loops: admit waiting rows (prefill them together, left-padded, and
merge their KV cache into the running batch's), pick every row's next token (greedy or seeded
sampling, per row), let finished rows leave at once (their cache rows are dropped), and run one
decode step for the rest. A row's run and multiplier reach the model through
``steer.core.interventions.RowInterventions`` (one hook per run, a per-row multiplier vector), so
requests for different runs and different m share every forward.

KV cache: transformers' ``DynamicCache`` with left padding, as ``steer.core.generate``. Joining a
batch left-pads the shorter of (running cache, newcomers' cache) to the longer and concatenates the
rows; when rows leave, the columns that only padding holds are cut off. Cost: every step attends
over the longest live row's length for every row (padding included), and a join copies the running
cache once. Sliding-window layers (Gemma-2) keep their last ``window - 1`` columns.

Why not transformers' own continuous batching (``generate_batch``, paged attention): it packs all
requests into one flattened row, so a forward hook cannot tell which positions belong to which
request, and per-request Δ and m need exactly that.

Rows are sampled exactly as ``steer.core.generate`` samples them (a generator per row seeded from
(seed, prompt text, m), one uniform per token, inverse CDF), so a request's answer equals
``generate``'s for the same prompt, run, m and seed, whatever else shares its batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from steer.core.generate import left_pad, row_seed, sample_tokens, stop_ids
from steer.core.interventions import RowInterventions

log = logging.getLogger("steer")


@dataclass
class Job:
    """One request's row. ``emit`` receives ("delta", text), then ("done", finish_reason) or
    ("error", message); it is called from the engine's thread."""

    prompt: str
    ids: tuple[int, ...]
    run: int  # index of the run in the engine's RowInterventions; -1 = the bare model
    m: float
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    emit: Callable[[tuple], None] = lambda event: None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    sent: int = 0  # characters of text already emitted
    generator: torch.Generator | None = None
    queued_at: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        if self.temperature > 0:
            self.generator = torch.Generator().manual_seed(row_seed(self.seed, self.prompt, self.m))


class QueueFull(RuntimeError):
    """More requests wait than the engine's queue holds (the server answers 503)."""


class ShuttingDown(RuntimeError):
    """The engine no longer takes requests (the server answers 503)."""


def pad_cache_left(cache, width: int, new_width: int) -> None:
    """Left-pad every layer of ``cache`` (holding ``width`` columns) to ``new_width`` columns."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        target = _kept(layer, new_width)
        extra = target - layer.keys.shape[-2]
        if extra > 0:
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length = new_width


def trim_cache_left(cache, new_width: int) -> None:
    """Drop leading columns so every layer of ``cache`` holds what a ``new_width``-column mask needs."""
    for layer in cache.layers:
        if not getattr(layer, "is_initialized", False):
            continue
        target = _kept(layer, new_width)
        if layer.keys.shape[-2] > target:
            layer.keys = layer.keys[:, :, layer.keys.shape[-2] - target :]
            layer.values = layer.values[:, :, layer.values.shape[-2] - target :]
        if getattr(layer, "is_sliding", False):
            layer.cumulative_length = new_width


def _kept(layer, width: int) -> int:
    """Columns a layer keeps for a mask of ``width`` columns: all, or the last ``window - 1``."""
    if getattr(layer, "is_sliding", False):
        return min(width, layer.sliding_window - 1)
    return width


def concat_caches(cache, other) -> None:
    """Append ``other``'s rows to ``cache`` (both already the same width), layer by layer."""
    for layer, more in zip(cache.layers, other.layers, strict=True):
        if not getattr(layer, "is_initialized", False):
            continue
        layer.keys = torch.cat([layer.keys, more.keys], dim=0)
        layer.values = torch.cat([layer.values, more.values], dim=0)


class Engine:
    """The decode loop over a model and its runs' interventions, in a thread of its own.

    ``submit`` queues a ``Job`` (``QueueFull`` past ``max_waiting`` waiting rows); at most
    ``max_batch`` rows decode together. ``stop`` ends the loop: with ``cancel`` the unfinished rows
    get an error event, else they are finished first.
    """

    def __init__(
        self,
        model: nn.Module,
        tokenizer,
        runs: RowInterventions,
        *,
        max_batch: int = 32,
        max_waiting: int = 64,
        tokenizer_lock: threading.Lock | None = None,
    ) -> None:
        if max_batch < 1 or max_waiting < 1:
            raise ValueError(f"max_batch and max_waiting must be >= 1, got {max_batch}, {max_waiting}")
        self.model, self.tokenizer, self.runs = model, tokenizer, runs
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.tokenizer_lock = tokenizer_lock or threading.Lock()
        self.stops = set(stop_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stops)
        self.device = next(model.parameters()).device
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._thread: threading.Thread | None = None
        # the running batch: rows, their cache, mask and the logits of their next token
        self._rows: list[Job] = []
        self._cache = None
        self._mask: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None
        self._admitting: list[Job] = []
        self.steps = 0

    # -- the request side ------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_waiting})")
            self._waiting.append(job)
            self._cond.notify()

    @property
    def load(self) -> tuple[int, int]:
        """(running rows, waiting rows)."""
        with self._cond:
            return len(self._rows), len(self._waiting)

    def start(self) -> Engine:
        self.runs.attach(self.model)
        self.model.eval()
        self._thread = threading.Thread(target=self._loop, name="steer-serve-engine", daemon=True)
        self._thread.start()
        return self

    def stop(self, cancel: bool = True, timeout: float = 30.0) -> None:
        """Stop taking requests; finish (or, with ``cancel``, drop) what runs; join the thread."""
        with self._cond:
            self._accepting = False
            self._stop = True
            if cancel:
                for job in self._waiting:
                    job.cancelled = True
                for job in self._rows:
                    job.cancelled = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)
        self.runs.detach()

    # -- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    if not self._next():
                        return
                except Exception as err:  # a bug or out of memory: its requests hear of it, the rest go on
                    log.exception("serve: a decode round failed")
                    for job in [*self._rows, *self._admitting]:
                        job.emit(("error", f"generation failed: {type(err).__name__}: {err}"))
                    self._rows, self._admitting, self._cache, self._mask, self._logits = [], [], None, None, None

    def _next(self) -> bool:
        """One round: admit, pick, retire, decode. False when the loop should end."""
        with self._cond:
            while not self._waiting and not self._rows and not self._stop:
                self._cond.wait()
            if self._stop and not self._waiting and not self._rows:
                return False
            admit = []
            while self._waiting and len(self._rows) + len(admit) < self.max_batch:
                job = self._waiting.popleft()
                if job.cancelled:
                    job.emit(("error", "cancelled"))
                else:
                    admit.append(job)
        if admit:
            self._admitting = admit
            self._admit(admit)
            self._admitting = []
        if not self._rows:
            return True
        tokens = self._pick()
        keep = [
            i for i, (job, token) in enumerate(zip(self._rows, tokens, strict=True)) if not self._advance(job, token)
        ]
        if len(keep) < len(self._rows):
            self._retire(keep)
        if self._rows:
            self._decode(tokens[keep] if len(keep) < len(tokens) else tokens)
        return True

    def _set_rows(self, rows: Sequence[Job]) -> None:
        which = torch.tensor([job.run for job in rows], dtype=torch.long, device=self.device)
        m = torch.tensor([job.m for job in rows], dtype=torch.float32, device=self.device)
        self.runs.set_rows(which, m)

    def _admit(self, jobs: list[Job]) -> None:
        """Prefill ``jobs`` together and merge them into the running batch."""
        from transformers import DynamicCache

        ids, mask = left_pad([job.ids for job in jobs], self.pad_id, self.device)
        cache = DynamicCache(config=self.model.config)
        self._set_rows(jobs)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1]
        if not self._rows:
            self._cache, self._mask, self._logits, self._rows = cache, mask, logits, list(jobs)
            return
        width, new = self._mask.shape[-1], mask.shape[-1]
        if width < new:
            pad_cache_left(self._cache, width, new)
            self._mask = F.pad(self._mask, (new - width, 0))
        elif new < width:
            pad_cache_left(cache, new, width)
            mask = F.pad(mask, (width - new, 0))
        concat_caches(self._cache, cache)
        self._mask = torch.cat([self._mask, mask], dim=0)
        self._logits = torch.cat([self._logits, logits], dim=0)
        self._rows.extend(jobs)

    def _pick(self) -> torch.Tensor:
        """Every row's next token: argmax for greedy rows; seeded inverse-CDF sampling, as
        ``steer.core.generate`` does it, for the others (grouped by temperature and top_p)."""
        logits = self._logits
        tokens = logits.argmax(-1)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, job in enumerate(self._rows):
            if job.generator is not None:
                groups.setdefault((job.temperature, job.top_p), []).append(i)
        for (temperature, top_p), rows in groups.items():
            uniforms = torch.stack([torch.rand((), generator=self._rows[i].generator) for i in rows])
            index = torch.tensor(rows, device=logits.device)
            tokens[index] = sample_tokens(logits[index], uniforms, temperature, top_p)
        return tokens

    def _advance(self, job: Job, token: torch.Tensor) -> bool:
        """Add ``token`` to the row; emit its new text. True when the row is finished."""
        if job.cancelled:
            job.emit(("error", "cancelled"))
            return True
        token = int(token)
        if token in self.stops:
            self._flush(job, final=True)
            job.emit(("done", "stop"))
            return True
        job.tokens.append(token)
        with self.tokenizer_lock:
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in job.stop) if i >= 0), default=-1)
        if cut >= 0:
            self._emit_text(job, text[:cut], final=True)
            job.emit(("done", "stop"))
            return True
        done = len(job.tokens) >= job.max_tokens
        self._emit_text(job, text, final=done)
        if done:
            job.emit(("done", "length"))
        return done

    def _flush(self, job: Job, final: bool) -> None:
        with self.tokenizer_lock:
            text = self.tokenizer.decode(job.tokens, skip_special_tokens=True)
        self._emit_text(job, text, final)

    @staticmethod
    def _emit_text(job: Job, text: str, final: bool) -> None:
        """Emit the part of ``text`` not sent yet; unless ``final``, hold back an incomplete
        character and any tail that may begin a stop string."""
        end = len(text)
        if not final:
            if text.endswith("\ufffd"):
                end = len(text.rstrip("\ufffd"))
            for s in job.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if text[end - k : end] == s[:k]:
                        end -= k
                        break
        if end > job.sent:
            job.emit(("delta", text[job.sent : end]))
            job.sent = end

    def _retire(self, keep: list[int]) -> None:
        """Keep only rows ``keep``; cut columns only padding holds."""
        if not keep:
            self._rows, self._cache, self._mask, self._logits = [], None, None, None
            return
        index = torch.tensor(keep, device=self.device)
        self._cache.batch_select_indices(index)
        self._mask = self._mask[index]
        self._rows = [self._rows[i] for i in keep]
        lead = int((self._mask.sum(0) == 0).long().cumprod(0).sum())
        if lead:
            self._mask = self._mask[:, lead:]
            trim_cache_left(self._cache, self._mask.shape[-1])

    def _decode(self, tokens: torch.Tensor) -> None:
        self._mask = torch.cat([self._mask, self._mask.new_ones(len(self._rows), 1)], dim=-1)
        self._set_rows(self._rows)
        out = self.model(
            input_ids=tokens.unsqueeze(-1),
            attention_mask=self._mask,
            position_ids=self._mask.sum(-1, keepdim=True) - 1,
            cache=self._cache,
            use_cache=True,
        )
        self._logits = out.logits[:, -1]
        self.steps += 1
