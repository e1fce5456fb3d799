"""The stage runner under several processes: who runs what, who writes, and equal barriers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from steer.rundir import LEDGER
from steer.stages.base import Stage
from steer.stages.runner import run_stage_list


@dataclass
class FakeState:
    """Stands in for accelerate's PartialState of one process."""

    is_main_process: bool
    barriers: int = 0

    def wait_for_everyone(self) -> None:
        self.barriers += 1


@dataclass
class FakeContext:
    run_dir: Path
    state: FakeState
    calls: list[str] = field(default_factory=list)


class Writer(Stage):
    """A stage that records that it ran and, in the main process, writes ``<name>.out``."""

    def __init__(self, run_dir: Path, name: str, keys: tuple[str, ...], **options) -> None:
        self.run_dir, self.name, self.keys, self.outputs = run_dir, name, keys, (f"{name}.out",)
        for key, value in options.items():
            setattr(self, key, value)

    def run(self, ctx) -> None:
        ctx.calls.append(self.name)
        if ctx.state.is_main_process:
            (self.run_dir / f"{self.name}.out").write_text(self.name)


def make_stages(run_dir: Path) -> tuple[Stage, ...]:
    return (
        Writer(run_dir, "data", ("a",), implicit=True),
        Writer(run_dir, "train", ("a",), after=("data",), parallel=True),
        Writer(run_dir, "sweep", ("b",), after=("train",)),
    )


def test_main_runs_everything_others_only_parallel_stages(tmp_path):
    cfg = OmegaConf.create({"a": 1, "b": 2})
    stages = make_stages(tmp_path)
    other = FakeContext(tmp_path, FakeState(is_main_process=False))
    ran_other = run_stage_list(stages, ["train", "sweep"], cfg, tmp_path, other, force=False)
    assert other.calls == ["train"]  # data and sweep belong to the main process
    assert ran_other == ["data", "train", "sweep"]
    assert not (tmp_path / LEDGER).exists()  # only the main process writes the ledger

    main = FakeContext(tmp_path, FakeState(is_main_process=True))
    ran_main = run_stage_list(stages, ["train", "sweep"], cfg, tmp_path, main, force=False)
    assert main.calls == ["data", "train", "sweep"] and ran_main == ran_other
    assert set(json.loads((tmp_path / LEDGER).read_text())) == {"data", "train", "sweep"}
    # every process meets the same number of barriers, or a launch would hang: two per stage, one
    # more per stage that runs (after the main process removed its stale files), one at the end
    assert main.state.barriers == other.state.barriers == 3 * len(stages) + 1


def test_processes_agree_on_skipping_finished_stages(tmp_path):
    cfg = OmegaConf.create({"a": 1, "b": 2})
    stages = make_stages(tmp_path)
    run_stage_list(stages, ["train", "sweep"], cfg, tmp_path, FakeContext(tmp_path, FakeState(True)), force=False)
    changed = OmegaConf.create({"a": 1, "b": 3})  # only the sweep depends on b
    contexts = [FakeContext(tmp_path, FakeState(flag)) for flag in (False, True)]
    ran = [run_stage_list(stages, ["train", "sweep"], changed, tmp_path, c, force=False) for c in contexts]
    assert ran[0] == ran[1] == ["sweep"]
    assert contexts[0].calls == [] and contexts[1].calls == ["sweep"]
    assert contexts[0].state.barriers == contexts[1].state.barriers
