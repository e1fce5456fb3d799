"""The paper recipes: experiment configs compose as documented, and experiments/paper.py chains
the two multiruns and the report with the overrides and data sets it is given."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from steer.runtime.resolvers import variant_overrides
from steer.stages import STAGES, compose_config
from steer.stages.runner import fingerprinted
from tests.conftest import load_experiment


def composed(command: list[str]):
    """The config a recipe's ``run.py -m OVERRIDES`` command composes."""
    return compose_config(command[command.index("-m") + 1 :])


def report_args(command: list[str]) -> argparse.Namespace:
    """A recipe's ``python -m steer.report ARGS`` command as steer.report parses it."""
    from steer.report.__main__ import parser

    return parser().parse_args(command[command.index("steer.report") + 1 :])


@pytest.mark.parametrize(
    ("experiment", "forms", "objectives"),
    [("dynamics", "vector,lora,local_weight", "sft,reps,split"), ("dynamics_diffmean", "vector", "diffmean")],
)
def test_experiment_configs_compose(experiment, forms, objectives):
    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    assert list(cfg.stages) == ["train", "sweep", "fit"]
    assert cfg.dataset.limit == 16 and cfg.dataset.name == "sentiment"
    assert dict(cfg.hydra.sweeper.params) == {"intervention": forms, "objective": objectives}


def test_table3_reuses_the_runs_of_table2():
    """A recipe's extra overrides set no fingerprinted key: Table 3 judges Table 2's run directories
    instead of training its own; its small judge lengths come from the preset."""
    paper = load_experiment("paper")
    for extra in paper.EXTRA.values():
        assert variant_overrides(extra, {}, *fingerprinted(STAGES)) == {}
    for experiment in paper.EXPERIMENTS:
        cfg = compose_config([f"experiment={experiment}"])
        assert cfg.judge.max_tokens == 48 and cfg.judge.generation.max_new_tokens == 32


def test_recipe_commands(capsys):
    paper = load_experiment("paper")
    assert paper.main(["fig5", "--dry-run", "--datasets", "psychopathy,axbench", "output_root=/x", "seed=1"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ")]
    assert len(lines) == 3
    for line, experiment in zip(lines, paper.EXPERIMENTS, strict=False):
        assert f"run.py -m experiment={experiment} dataset=psychopathy,axbench output_root=/x seed=1" in line
    assert lines[2].endswith("-m steer.report fig5 --outputs /x --dataset psychopathy --dataset axbench")
    [*runs, report] = paper.commands("table2", "sentiment", [])
    assert [list(composed(command).stages) for command in runs] == [["train", "sweep", "fit"]] * 2
    assert (report_args(report).target, report_args(report).outputs) == ("table2", Path("outputs/paper"))
    *judged, report = paper.commands("table3", "sentiment", ["judge.max_tokens=8"])
    for command in judged:  # the judge stage added; the caller's override wins over the preset's 48
        cfg = composed(command)
        assert list(cfg.stages) == ["train", "sweep", "fit", "judge"] and cfg.judge.max_tokens == 8
        assert cfg.output_root == "outputs/paper"
    assert (report_args(report).target, report_args(report).outputs) == ("table3", Path("outputs/paper"))
    [*smoke, report] = paper.commands("table2", "sentiment", [], preset="smoke")
    assert {composed(command).output_root for command in smoke} == {"outputs/smoke"}
    assert report_args(report).outputs == Path("outputs/smoke")  # the report reads where the preset's runs land
    with pytest.raises(SystemExit):
        paper.main(["table2", "--dry-run", "--not-an-override"])


def test_table3_paper_protocol_fixes_m_1_for_every_run(capsys):
    """``--protocol paper`` (make table3 PROTOCOL=paper): every multirun judges at m = 1, as runs of
    their own (a variant on judge.select.m), beside steer's protocol, the default."""
    paper = load_experiment("paper")
    assert paper.main(["table3", "--dry-run", "--protocol", "paper"]) == 0
    runs = [line for line in capsys.readouterr().out.splitlines() if line.startswith("+ ") and "run.py" in line]
    assert len(runs) == 2 and all(line.endswith("judge/select=fixed judge.select.m=1") for line in runs)
    assert variant_overrides(paper.PROTOCOLS["paper"], {}, *fingerprinted(STAGES)) == {"judge.select.m": "1"}
    steer = paper.commands("table3", "sentiment", [])
    assert not any("judge/select" in word for command in steer for word in command)
    plain = paper.commands("table2", "sentiment", [], protocol="paper")  # no judge stage: nothing added
    assert not any("judge/select" in word for command in plain for word in command)
