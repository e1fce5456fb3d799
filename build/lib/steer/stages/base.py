"""What a stage is: the config keys it depends on, the files it writes, and three methods.

``check(cfg)`` runs before any model loads or any file is written and raises ``ConfigError``
naming the bad key; ``run(ctx)`` does the work and writes ``outputs`` into the run directory;
``summary(run_dir)`` is the stage's part of the end-of-run printout (None: nothing to show).
Stages talk to each other only through files of the run directory (``steer.rundir``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from omegaconf import DictConfig

if TYPE_CHECKING:
    from steer.stages.context import RunContext


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key."""


class Stage:
    """A step of a run. Subclasses set the attributes and override ``run`` (and ``check``, ``summary``)."""

    name: str
    # Config keys (dotted) the stage's fingerprint covers, minus ``ignore``.
    keys: tuple[str, ...]
    ignore: tuple[str, ...] = ()
    # File names (``steer.rundir``) the stage writes; all must exist for it to count as done.
    outputs: tuple[str, ...]
    # Stages whose outputs it reads (their fingerprints and the digests of their files are part of its own).
    after: tuple[str, ...] = ()
    # External inputs it reads, hashed into its fingerprint (``steer.stages.runner.INPUTS``: "model", "data").
    reads: tuple[str, ...] = ()
    # Implicit stages are not named in ``stages``: they run whenever a later stage needs them.
    implicit: bool = False
    # Parallel stages run in every process (data-parallel); the others in the main process only.
    parallel: bool = False

    def check(self, cfg: DictConfig) -> None:
        """Cheap validation before any model loads; raise ``ConfigError`` (or ValueError) naming the key."""

    def run(self, ctx: RunContext) -> None:
        raise NotImplementedError

    def verify(self, cfg: DictConfig, run_dir: Path) -> None:
        """Called when a file of this finished stage changed on disk: raise a ``CorruptArtifact``
        saying what is wrong with it, where the stage can tell (else the runner names the change)."""

    def summary(self, run_dir: Path) -> str | None:
        """This stage's part of the end-of-run printout, from its files; None when there is nothing."""
        return None

    def __repr__(self) -> str:
        return f"<stage {self.name}>"
