"""The one error of every export: bad input it refuses before any model loads or any file changes."""

from __future__ import annotations


class ExportError(ValueError):
    """A run, multiplier or ``--out`` an export cannot take; the message says why and what to do."""
