"""The per-user cache of converted models, generated answers and judge replies."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Where converted models and generated data live; ``$STEER_CACHE`` overrides the default."""
    return Path(os.environ.get("STEER_CACHE", Path.home() / ".cache" / "steer"))
