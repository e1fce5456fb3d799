"""Every command line's expected failures end in one message and exit 2, never a traceback; the
``steer`` command lists its subcommands and hands each its ``--help``.

Each failure case calls the command's ``main(argv)`` as its command line does (an exception it let
through would fail the test: that is the traceback a user would see) and checks exit 2 and the
message; one case per command line also runs as a subprocess (slow suite; the report's and
``steer``'s in the fast one). ``steer`` is run as ``python -m steer`` (the console script of
``[project.scripts]`` calls the same ``main``).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from synthetic_runs import VECTOR_GRID, write_config, write_fit, write_sweep

from steer.__main__ import COMMANDS
from tests.conftest import REPO, assert_clean_failure, python

NO_WANDB = {"WANDB_MODE": "disabled"}


def cli(*args: str, cwd: Path = REPO):
    """``python ARGS`` as a user runs it, W&B off."""
    return python(*args, cwd=cwd, env=NO_WANDB, timeout=300)


def command(name: str) -> Callable[[list[str]], int]:
    """The ``main`` that ``steer NAME`` runs."""
    return COMMANDS[name].load()


def fails(capsys, name: str, args: list[str], message: str) -> None:
    """``steer NAME ARGS`` in this process: exit 2 (returned, or argparse's SystemExit) and ``message``."""
    try:
        code = command(name)(args)
    except SystemExit as done:
        code = done.code
    captured = capsys.readouterr()
    assert code == 2, captured.out + captured.err
    assert message in captured.out + captured.err, captured.out + captured.err


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    """One finished (synthetic) run whose sweep.parquet is damaged, for the commands that read runs."""
    out = tmp_path_factory.mktemp("outputs")
    run_dir = out / "sentiment" / "smollm2-135m" / "vector-diffmean" / "layer15"
    write_config(run_dir)
    write_sweep(run_dir, VECTOR_GRID, 8.0)
    write_fit(run_dir, {(k, w): 0.9 for k in ("pref", "util") for w in ("train", "test", "transfer")})
    (run_dir / "sweep.parquet").write_bytes(b"not parquet")
    return out


REPORT = [
    ("front-no-runs", ["front"], "no finished runs under"),
    ("table2-no-runs", ["table2"], "no finished runs under"),
    ("table3-no-runs", ["table3"], "no judged runs under"),
    ("fig2-no-runs", ["fig2"], "no finished runs under"),
    ("bad-deltas", ["front", "--deltas", "a,b"], "--deltas: not a comma-separated list of numbers"),
    ("negative-delta", ["front", "--deltas=-1"], "utility budgets >= 0"),
    ("negative-bootstrap", ["table2", "--bootstrap", "-1"], "--bootstrap must be >= 0"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in REPORT], ids=[c[0] for c in REPORT])
def test_report(tmp_path, capsys, args, message):
    fails(capsys, "report", [*args, "--outputs", str(tmp_path / "none")], message)


@pytest.mark.e2e
def test_report_front_without_runs_in_a_subprocess(tmp_path):
    """The issue's case: `python -m steer.report front` with no finished runs."""
    assert_clean_failure(cli("-m", "steer.report", "front", "--outputs", str(tmp_path)), "no finished runs under")


@pytest.mark.parametrize("target", ["front", "fig2"])
def test_report_damaged_run(runs, capsys, target):
    extra = ["--dataset", "sentiment"] if target.startswith("fig") else []
    fails(capsys, "report", [target, "--outputs", str(runs), *extra], "sweep.parquet")


def test_export_failures(tmp_path, runs, capsys):
    run_dir = next(runs.rglob("config.yaml")).parent
    out = ["--out", str(tmp_path / "x")]
    fails(capsys, "export", [str(tmp_path / "none"), "--m", "1", "--to", "gguf", *out], "config.yaml is missing")
    a_file = tmp_path / "file"
    a_file.write_text("")
    fails(capsys, "export", [str(run_dir), "--m", "1", "--to", "gguf", "--out", str(a_file)], "is a file")
    (run_dir / "config.yaml").write_text("model: {name: smollm2-135m, source: 'embedded:smollm2-135m'}\n")
    for name in ("intervention.json", "intervention.safetensors"):
        (run_dir / name).write_text("{}")  # damaged
    fails(capsys, "export", [str(run_dir), "--m", "1", "--to", "gguf", *out], f"{run_dir / 'intervention.'}")
    (run_dir / "config.yaml").write_text("model: [unclosed\n")
    fails(capsys, "export", [str(run_dir), "--m", "1", "--to", "gguf", *out], "config.yaml: not valid YAML")


DATACHECK = [
    ("unknown-key", ["foo=1"], "foo=1: no such key"),
    ("unknown-group", ["dataset=nosuch"], "dataset=nosuch is not one of axbench, powerseeking"),
    ("bad-grammar", ["sweep.grid=[1,2"], "data-check:"),
    ("bad-model", ["model.source=/no/such/model"], "model.source='/no/such/model'"),
]


@pytest.mark.parametrize(("args", "message"), [c[1:] for c in DATACHECK], ids=[c[0] for c in DATACHECK])
def test_datacheck(capsys, args, message):
    fails(capsys, "datacheck", args, message)


def test_datacheck_empty_data_folder(tmp_path, capsys):
    fails(capsys, "datacheck", ["dataset=powerseeking", f"dataset.path={tmp_path}"], "train.csv and")


def test_paper_recipe_failures(tmp_path, capsys):
    fails(capsys, "paper", ["table2", "--data", str(tmp_path / "none")], "no such folder")
    fails(capsys, "paper", ["table2", "--datasets", "nosuch"], "unknown data set 'nosuch'")
    fails(capsys, "paper", ["table2", "--bogus"], "not a Hydra override")
    fails(capsys, "plan", ["foo=1"], "foo=1: no such key")


def test_train_matrix_report_without_runs(tmp_path, capsys):
    from steer.__main__ import Command

    main = Command("", "experiments/train_matrix.py:main").load()
    assert main(["--report-only", "--output-root", str(tmp_path)]) == 2
    assert "no finished sweep in" in capsys.readouterr().err


def test_bench_arguments(capsys):
    from steer.__main__ import Command

    main = Command("", "experiments/bench.py:main").load()
    for args, message in (
        (["--pairs", "0"], "--pairs must be a positive integer"),
        (["--gen-multipliers", "a"], "--gen-multipliers"),
    ):
        with pytest.raises(SystemExit) as done:
            main(args)
        assert done.value.code == 2 and message in capsys.readouterr().err


# One failure per command line, as a user runs it (each starts Python and imports torch: slow suite).
SUBPROCESS = [
    ("export", ["-m", "steer.export", "/no/such/run", "--m", "1", "--to", "gguf", "--out", "/no/out"], "config.yaml"),
    ("datacheck", ["-m", "steer.datacheck", "foo=1"], "foo=1: no such key"),
    ("paper", ["experiments/paper.py", "table2", "--datasets", "nosuch"], "unknown data set"),
    ("plan", ["-m", "steer", "plan", "foo=1"], "foo=1: no such key"),
    ("train_matrix", ["experiments/train_matrix.py", "--report-only", "--output-root", "/no/such"], "no finished"),
    ("bench", ["experiments/bench.py", "--pairs", "0"], "--pairs must be a positive integer"),
]


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.parametrize(("args", "message"), [c[1:] for c in SUBPROCESS], ids=[c[0] for c in SUBPROCESS])
def test_command_line_in_a_subprocess(args, message):
    assert_clean_failure(cli(*args), message)


@pytest.mark.e2e
@pytest.mark.slow
def test_steer_run_is_run_py(tmp_path):
    """`steer run OVERRIDES` is run.py (steer.stages.command.main; Hydra finds steer/conf/ from any directory)."""
    root = tmp_path / "outputs"
    assert_clean_failure(
        cli("-m", "steer", "run", "judge.select.m=3", f"output_root={root}", cwd=tmp_path), "judge.select.m=3"
    )
    assert not any(root.rglob("*"))
    done = cli("-m", "steer", "run", "--help", cwd=tmp_path)
    assert done.returncode == 0 and "Configuration groups" in done.stdout


@pytest.mark.e2e
@pytest.mark.slow
def test_run_py_bad_data_file(tmp_path):
    """A binary dataset.path: one line naming the file and line, exit 2, no run folder left."""
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\x00\x80\x81" * 50)
    root = tmp_path / "outputs"
    done = cli("run.py", "dataset=psychopathy", f"dataset.path={data}", f"output_root={root}")
    assert_clean_failure(done, f"{data}:line 1: not UTF-8")
    assert not any(root.rglob("*"))


@pytest.mark.e2e
def test_steer_help_lists_the_commands():
    done = cli("-m", "steer", "--help")
    assert done.returncode == 0, done.stderr
    listed = {line.split()[0] for line in done.stdout.splitlines() if line.startswith("  ")}
    assert listed == {name for name, c in COMMANDS.items() if c.available()}
    assert {"run", "report", "export", "datacheck", "plan", "paper"} <= listed


@pytest.mark.parametrize("name", [n for n, c in COMMANDS.items() if c.available() and ":" in c.target])
def test_each_subcommand_help(name, capsys):
    try:
        code = command(name)(["--help"])
    except SystemExit as done:  # argparse's --help
        code = done.code
    assert code in (0, None)
    assert "usage:" in capsys.readouterr().out


@pytest.mark.e2e
def test_steer_dispatches_with_arguments(tmp_path):
    """The subcommand gets the arguments after its name (here: report's own failure message)."""
    assert_clean_failure(cli("-m", "steer", "report", "front", "--outputs", str(tmp_path)), "no finished runs under")
    assert_clean_failure(cli("-m", "steer", "nosuch"), "unknown command 'nosuch'")


@pytest.mark.e2e
def test_the_installed_steer_script_runs_the_same_main(tmp_path):
    """The ``steer`` console script that `make setup` installs beside the venv's python dispatches
    like ``python -m steer``, from any folder."""
    script = Path(sys.executable).with_name("steer")
    assert script.is_file(), f"{script} is missing: `make setup` installs the console script"
    done = subprocess.run([str(script), "nosuch"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert_clean_failure(done, "unknown command 'nosuch'")
    listed = subprocess.run([str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert listed.returncode == 0 and "export" in listed.stdout and "report" in listed.stdout
