"""Continuous batching: one decode batch of rows from many requests, each row with its own runs and m.

One thread owns the model and loops over a ``steer.core.decode.DecodeBatch`` (the batch
``steer.core.generate`` decodes through too): admit waiting rows (prefilled together and merged
into the running batch), drop the rows whose client left, pick every row's next token, let
finished rows leave at once, and run one decode step for the rest. A row's runs and multipliers
reach the model through ``steer.core.interventions.RowInterventions``, so requests for different
runs, compositions and m share every forward.

Why not transformers' own continuous batching (``generate_batch``, paged attention): it packs all
requests into one flattened row, so a forward hook cannot tell which positions belong to which
request, and per-request Δ and m need exactly that.

Rows are sampled exactly as ``steer.core.generate`` samples them (a generator per row seeded from
(seed, prompt text, m), one uniform per token, inverse CDF), so a request's answer equals
``generate``'s for the same prompt, run, m and seed, whatever else shares its batch.

Text is detokenised incrementally on the engine's own copy of the tokenizer: each step decodes a
row's last few tokens, never its whole text, and no lock is shared with the HTTP side.

Shutdown: ``drain`` stops admitting requests and waits for the running ones; ``stop`` cancels what
is left and detaches the runs' hooks only once the thread has ended, so no row ever decodes
without its intervention.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from steer.core.decode import DecodeBatch
from steer.core.generate import row_seed, seed_multiplier, stop_ids
from steer.core.interventions import RowInterventions, Steering

log = logging.getLogger("steer")

CANCELLED, OVERFLOW, FAILED = "cancelled", "overflow", "failed"


@dataclass(eq=False)
class Job:
    """One request's row. ``emit`` receives ("delta", text), then ("done", finish_reason) or
    ("error", kind, message) with kind ``CANCELLED``, ``OVERFLOW`` (non-finite logits) or
    ``FAILED``; it is called from the engine's thread."""

    prompt: str
    ids: tuple[int, ...]
    steer: Steering  # (run index, m) pairs of the engine's RowInterventions; () = the bare model
    max_tokens: int
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    stop: tuple[str, ...] = ()
    emit: Callable[[tuple], None] = lambda event: None
    cancelled: bool = False
    tokens: list[int] = field(default_factory=list)
    text: str = ""  # the text of ``tokens`` decoded so far (whole characters)
    sent: int = 0  # characters of text already emitted
    generator: torch.Generator | None = None
    queued_at: float = field(default_factory=time.monotonic)
    _prefix: int = 0  # tokens[_prefix:_read] decode to the tail of ``text`` (the incremental window)
    _read: int = 0

    def __post_init__(self) -> None:
        if self.temperature > 0:
            self.generator = torch.Generator().manual_seed(
                row_seed(self.seed, self.prompt, seed_multiplier(self.steer))
            )


class QueueFull(RuntimeError):
    """More requests wait than the engine's queue holds (the server answers 503)."""


class ShuttingDown(RuntimeError):
    """The engine no longer takes requests (the server answers 503)."""


class Engine:
    """The decode loop over a model and its runs' interventions, in a thread of its own.

    ``submit`` queues a ``Job`` (``QueueFull`` past ``max_waiting`` waiting rows); at most
    ``max_batch`` rows decode together; ``cancel`` drops one job (a client that left). ``drain``
    and ``stop`` end the loop (see the module's docstring).
    """

    def __init__(
        self, model: nn.Module, tokenizer, runs: RowInterventions, *, max_batch: int = 32, max_waiting: int = 64
    ) -> None:
        if max_batch < 1 or max_waiting < 1:
            raise ValueError(f"max_batch and max_waiting must be >= 1, got {max_batch}, {max_waiting}")
        self.model, self.tokenizer, self.runs = model, tokenizer, runs
        self.max_batch, self.max_waiting = max_batch, max_waiting
        self.stops = set(stop_ids(model, tokenizer))
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.stops)
        self.batch = DecodeBatch(model, runs, pad_id)
        self._waiting: deque[Job] = deque()
        self._admitting: list[Job] = []
        self._cond = threading.Condition()
        self._accepting = True
        self._stop = False
        self._cancel_all = False
        self._thread: threading.Thread | None = None
        self.steps = 0

    # -- the request side ------------------------------------------------------------------------
    def submit(self, job: Job) -> None:
        with self._cond:
            if not self._accepting:
                raise ShuttingDown("the server is shutting down")
            if len(self._waiting) >= self.max_waiting:
                raise QueueFull(f"{len(self._waiting)} requests are waiting (the queue holds {self.max_waiting})")
            self._waiting.append(job)
            self._cond.notify_all()

    def cancel(self, job: Job) -> None:
        """Drop ``job``: at once if it still waits (its queue slot is free), else at the next step."""
        with self._cond:
            job.cancelled = True
            if job in self._waiting:
                self._waiting.remove(job)
                job.emit(("error", CANCELLED, "cancelled"))
            self._cond.notify_all()

    @property
    def load(self) -> tuple[int, int]:
        """(running rows, waiting rows)."""
        with self._cond:
            return len(self.batch) + len(self._admitting), len(self._waiting)

    def start(self) -> Engine:
        self.runs.attach(self.model)
        self.model.eval()
        self._thread = threading.Thread(target=self._loop, name="steer-serve-engine", daemon=True)
        self._thread.start()
        return self

    def drain(self, timeout: float) -> bool:
        """Stop taking requests and wait up to ``timeout`` s for the queued and running ones to
        finish. True when none is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._accepting = False
            while self._busy() and time.monotonic() < deadline:
                self._cond.wait(min(deadline - time.monotonic(), 0.1))
            return not self._busy()

    def _busy(self) -> bool:
        return bool(self._waiting or self._admitting or len(self.batch))

    def stop(self, cancel: bool = True, timeout: float = 30.0) -> bool:
        """Stop taking requests; finish (or, with ``cancel``, drop at the next step) what runs;
        join the thread. The hooks are detached only if it ended (True), never under a row."""
        with self._cond:
            self._accepting = False
            self._stop = True
            if cancel:
                self._cancel_all = True  # the running rows and those being admitted, at the next step
                for job in self._waiting:
                    job.cancelled = True
                    job.emit(("error", CANCELLED, "cancelled"))
                self._waiting.clear()
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.error("serve: the engine thread did not end within %.0f s; its hooks stay on", timeout)
                return False
        self.runs.detach()
        return True

    # -- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        with torch.inference_mode():
            while True:
                try:
                    if not self._next():
                        return
                except Exception as err:  # a bug or out of memory: its requests hear of it, the rest go on
                    log.exception("serve: a decode round failed")
                    for job in [*self.batch.rows, *self._admitting]:
                        job.emit(("error", FAILED, f"generation failed: {type(err).__name__}: {err}"))
                    self.batch.keep([])
                    with self._cond:
                        self._admitting = []
                        self._cond.notify_all()

    def _next(self) -> bool:
        """One round: admit, drop, pick, retire, decode. False when the loop should end."""
        with self._cond:
            while not self._waiting and not len(self.batch) and not self._stop:
                self._cond.wait()
            if self._stop and not self._waiting and not len(self.batch):
                return False
            while self._waiting and len(self.batch) + len(self._admitting) < self.max_batch:
                self._admitting.append(self._waiting.popleft())
            admit = self._admitting
        if admit:
            self.batch.admit(admit)
            with self._cond:
                self._admitting = []
        self._drop_unfinished()
        if len(self.batch):
            self._advance_all()
        with self._cond:
            self._cond.notify_all()  # drain() waits for the batch to empty
        return True

    def _drop_unfinished(self) -> None:
        """Let cancelled rows, and rows whose logits are not finite, leave before their next token."""
        with self._cond:
            if self._cancel_all:
                for job in self.batch.rows:
                    job.cancelled = True
        keep = []
        for i, (job, finite) in enumerate(zip(self.batch.rows, self.batch.finite(), strict=True)):
            if job.cancelled:
                job.emit(("error", CANCELLED, "cancelled"))
            elif not finite:
                job.emit(("error", OVERFLOW, "the steered logits are not finite: m is too large for the model's dtype"))
            else:
                keep.append(i)
        self.batch.keep(keep)

    def _advance_all(self) -> None:
        tokens = self.batch.pick()
        rows = zip(self.batch.rows, tokens.tolist(), strict=True)
        keep = [i for i, (job, token) in enumerate(rows) if not self._advance(job, token)]
        self.batch.keep(keep)
        if len(self.batch):
            self.batch.step(tokens[keep] if len(keep) < len(tokens) else tokens)
            self.steps += 1

    def _advance(self, job: Job, token: int) -> bool:
        """Add ``token`` to the row; emit its new text. True when the row is finished."""
        if token in self.stops:
            self._extend(job, final=True)
            self._emit_text(job, final=True)
            job.emit(("done", "stop"))
            return True
        job.tokens.append(token)
        done = len(job.tokens) >= job.max_tokens
        start = len(job.text)
        self._extend(job, final=done)
        longest = max((len(s) for s in job.stop), default=0)
        found = [i for i in (job.text.find(s, max(0, start - longest)) for s in job.stop) if i >= 0]
        if found:
            job.text = job.text[: min(found)]
            self._emit_text(job, final=True)
            job.emit(("done", "stop"))
            return True
        self._emit_text(job, final=done)
        if done:
            job.emit(("done", "length"))
        return done

    def _extend(self, job: Job, final: bool) -> None:
        """Decode the row's new tokens onto ``job.text``: the window from the last whole-character
        point, minus what that window's start already decoded to; an incomplete character waits
        for its next token unless ``final``."""
        window = self.tokenizer.decode(job.tokens[job._prefix :], skip_special_tokens=True)
        before = self.tokenizer.decode(job.tokens[job._prefix : job._read], skip_special_tokens=True)
        if final or (len(window) > len(before) and not window.endswith("\ufffd")):
            job.text += window[len(before) :]
            job._prefix, job._read = job._read, len(job.tokens)

    @staticmethod
    def _emit_text(job: Job, final: bool) -> None:
        """Emit the part of ``job.text`` not sent yet; unless ``final``, hold back any tail that
        may begin a stop string."""
        end = len(job.text)
        if not final:
            for s in job.stop:
                for k in range(min(len(s) - 1, end), 0, -1):
                    if job.text[end - k : end] == s[:k]:
                        end -= k
                        break
        if end > job.sent:
            job.emit(("delta", job.text[job.sent : end]))
            job.sent = end
