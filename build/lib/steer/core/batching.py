"""Batches of similar length: every stage that runs the model over examples pads less this way."""

from __future__ import annotations

from collections.abc import Sequence, Sized


def length_batches(items: Sequence[Sized], batch_size: int) -> list[list[int]]:
    """Indices of ``items`` grouped into batches of similar length (``len(item)`` tokens)."""
    order = sorted(range(len(items)), key=lambda i: len(items[i]))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
