"""Side-by-side jobs on one node: each running job holds one device slot and a share of the CPU.

A multirun whose jobs run at once (``hydra/launcher=node``) must not put two jobs on one GPU, nor
let each job start as many CPU threads as the node has cores. A job claims the first free slot
0..jobs-1 by taking an exclusive ``flock`` on ``<lock_dir>/slot-<k>.lock`` and holds it until it
ends (the OS releases the lock when the process dies, so a crashed job never leaks its slot).
Slot k runs on GPU ``devices[k % len(devices)]`` (or the CPU) with ``cores // jobs`` threads.
Claiming by lock rather than by job number matters: a worker that picks up job k+N may start
while job k, of the same residue, still runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("steer")


@dataclass(frozen=True)
class Slot:
    index: int
    device: str
    threads: int


def slot_plan(index: int, jobs: int, devices: Sequence[int] | None, cores: int) -> Slot:
    """The device and thread budget of slot ``index`` of ``jobs`` (``devices``: GPU ids, or
    None/empty for the CPU)."""
    if jobs < 1 or not 0 <= index < jobs:
        raise ValueError(f"slot {index} of node.jobs={jobs} does not exist")
    device = f"cuda:{devices[index % len(devices)]}" if devices else "cpu"
    return Slot(index, device, max(1, cores // jobs))


@contextlib.contextmanager
def claim_slot(lock_dir: Path, jobs: int, poll_seconds: float = 0.5) -> Iterator[int]:
    """Hold the first free slot of ``jobs`` (waits while all are held); yields its index."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for index in range(jobs):
            handle = open(lock_dir / f"slot-{index}.lock", "a")  # noqa: SIM115 (held for the job's life)
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield index
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(poll_seconds)


def pin(slot: Slot) -> None:
    """Limit this process to ``slot``: its CPU threads and, on a GPU, its default CUDA device.

    Sets the device with ``torch.cuda.set_device`` rather than ``CUDA_VISIBLE_DEVICES``: a launcher
    worker that ran an earlier job has CUDA initialised already, and the variable would be ignored.
    """
    import torch

    os.environ["OMP_NUM_THREADS"] = str(slot.threads)  # for child processes and libraries read later
    torch.set_num_threads(slot.threads)
    if slot.device.startswith("cuda"):
        torch.cuda.set_device(slot.device)
    log.info("node slot %d: device %s, %d CPU thread(s)", slot.index, slot.device, slot.threads)
