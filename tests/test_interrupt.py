"""Ctrl-C and SIGTERM end a real process with one line (what was kept, how to resume), exit status
128 + signal, every cleanup on the way out run, and the line recorded in the run's log."""

from __future__ import annotations

import signal
import textwrap

import pytest

from tests.conftest import start

JOB = textwrap.dedent(
    """
    import logging, sys, time
    from pathlib import Path
    from steer.runtime.interrupt import interruptible

    out = Path(sys.argv[1])
    logger = logging.getLogger("steer.test_interrupt")
    logger.addHandler(logging.FileHandler(out / "run.log"))
    done = []
    with interruptible(lambda: f"kept {len(done)} batches in {out}; re-run the same command to resume", logger=logger):
        try:
            for i in range(10_000):
                done.append(i)
                if i == 2:
                    print("ready", flush=True)
                time.sleep(0.05)
        finally:
            (out / "cleaned").write_text("yes")
    """
)


@pytest.mark.e2e
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_ends_the_run_with_one_line(tmp_path, sig, code):
    job = start("-c", JOB, str(tmp_path))
    assert job.stdout.readline().strip() == "ready"  # the signal comes only once batches are done
    job.send_signal(sig)
    _, err = job.communicate(timeout=60)
    assert job.returncode == code
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"interrupted ({sig.name}): kept ")
    assert "re-run the same command to resume" in lines[0] and "Traceback" not in err
    assert (tmp_path / "cleaned").read_text() == "yes"  # the finally block ran
    assert (tmp_path / "run.log").read_text().strip() == lines[0]


def test_the_handlers_are_restored_and_a_normal_block_is_untouched(capsys):
    from steer.runtime.interrupt import interruptible

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with interruptible("never printed") as state:
        assert signal.getsignal(signal.SIGTERM) is not before[0]
    assert state.signum is None
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before
    assert capsys.readouterr().err == ""


def test_an_exception_other_than_an_interrupt_passes_through():
    from steer.runtime.interrupt import interruptible

    with pytest.raises(ValueError, match="real error"), interruptible("kept nothing"):
        raise ValueError("real error")
