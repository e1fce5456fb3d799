"""Clean interruption: Ctrl-C or SIGTERM (a scheduler's kill, ``timeout``) ends a run with one line
saying what was kept and how to resume, instead of a traceback.

Inside ``interruptible(...)`` both signals raise ``KeyboardInterrupt`` in the main thread, so every
``finally`` and context manager on the way out runs as usual (atomic writes drop their temporary
files, trackers close). At the block's edge the interruption becomes one line on stderr and exit
status 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as shells report it.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from typing import TextIO

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted:
    """Which signal ended the block (None while none has arrived)."""

    signum: int | None = None

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else "KeyboardInterrupt"

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or signal.SIGINT)


@contextlib.contextmanager
def interruptible(
    message: str | Callable[[], str],
    stream: TextIO | None = None,
    logger: logging.Logger | None = None,
) -> Iterator[Interrupted]:
    """Run the block with SIGINT and SIGTERM raising ``KeyboardInterrupt``; if one arrives, print
    ``interrupted (SIGTERM): <message>`` as the only line on ``stream`` (stderr), record it in
    ``logger`` (e.g. the run's ``run.log``) when given, and exit with 128 + the signal number.

    ``message`` may be a callable, evaluated after the block has unwound, so it can report what
    was really kept (e.g. how many sweep batches are on disk). Outside the main thread the signal
    handlers cannot be installed, and the block runs unchanged.
    """
    state, installed = Interrupted(), ()
    try:
        with signals_interrupt(state) as installed:
            yield state
    except KeyboardInterrupt:
        # a second signal now would interrupt the report itself
        saved = {sig: signal.signal(sig, signal.SIG_IGN) for sig in installed}
        try:
            text = message() if callable(message) else message
            line = f"interrupted ({state.name}): {text}".replace("\n", " ")
            if logger is not None:
                logger.error(line)
            print(line, file=stream or sys.stderr, flush=True)
        finally:
            for sig, old in saved.items():
                signal.signal(sig, old)
        raise SystemExit(state.exit_code) from None


@contextlib.contextmanager
def signals_interrupt(state: Interrupted | None = None, signals: tuple = SIGNALS) -> Iterator[tuple]:
    """While the block runs, each of ``signals`` raises ``KeyboardInterrupt`` in the main thread
    (recorded in ``state``), so every ``finally`` on the way out runs: a child process a block
    started (the local judge server) is stopped on a scheduler's SIGTERM as on Ctrl-C. The previous
    handlers come back afterwards. Yields the signals handled (none outside the main thread, where
    handlers cannot be installed)."""
    state = state if state is not None else Interrupted()
    previous = {}
    if threading.current_thread() is threading.main_thread():

        def handler(signum, frame):
            state.signum = signum
            raise KeyboardInterrupt(signal.Signals(signum).name)

        for sig in signals:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield tuple(previous)
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
