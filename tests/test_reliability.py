"""Issue 12 through the runner: every bad value refused before work, stages keyed on the content
they read, damaged or edited run files refused by name, stale files removed, reproducible bytes,
provenance and a clean end on interruption."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from steer.io.artifacts import CorruptArtifact
from steer.stages import ConfigError, compose_config, run
from tests.conftest import run_py

FAST = ["dataset.limit=2", "sweep.grid=[-1,1]", "stages=[train,sweep]", "tracking.wandb=false", "progress=false"]
# Nine multipliers (the fit's minimum) and one restart keep a full train → sweep → fit run short.
FULL = [
    "dataset.limit=2",
    "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]",
    "stages=[train,sweep,fit]",
    "fit.restarts=1",
    "tracking.wandb=false",
    "progress=false",
]
NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a CUDA GPU")


def config(*overrides: str, base=FAST):
    return compose_config([*base, *overrides])


def persona_rows(n: int, tag: str = "") -> str:
    rows = [
        {
            "question": f'Is the following statement something you would say?\n"I like rule {i}{tag}."',
            "answer_matching_behavior": " Yes",
            "answer_not_matching_behavior": " No",
        }
        for i in range(n)
    ]
    return "".join(json.dumps(r) + "\n" for r in rows)


def data_file(tmp_path: Path, text: str, name: str = "traits.jsonl") -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def persona(path: Path) -> list[str]:
    return ["dataset=psychopathy", f"dataset.path={path}", "dataset.n_train=2", "dataset.n_test=2"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# (overrides, what the message must say). {tmp} is the test's temporary folder.
BAD_INPUTS = [
    (["seed=x"], "seed must be an integer in 0..2**32-1, got 'x'"),
    (["seed=-1"], "seed must be an integer in 0..2**32-1, got -1"),
    (["seed=1.5"], "seed must be an integer in 0..2**32-1, got 1.5"),
    pytest.param(["device=cuda"], "device=cuda but this machine has no CUDA GPU", marks=NO_GPU),
    (["device=tpu"], "device='tpu' is not one of auto, cpu, cuda, cuda:<index>"),
    (["precision=float7"], "precision='float7' is not one of fp32, bf16"),
    (["sweep.batch_size=0"], "sweep.batch_size must be a positive integer (pairs per forward pass), got 0"),
    (["sweep.batch_size=two"], "sweep.batch_size=two: Value 'two' of type 'str' could not be converted to Integer"),
    (["sweep.grid=[nan]"], "sweep.grid: nan is not finite"),
    (["sweep.grid=[0,inf]"], "sweep.grid: inf is not finite"),
    (["sweep.grid=[1,1]"], "sweep.grid: 1.0 appears twice"),
    (["sweep.grid=[0,x]"], "sweep.grid=[0,x]: Value 'x' of type 'str' could not be converted to Float"),
    (
        ["stages=[train,sweep,fit]", "sweep.grid=[nan,nan,nan,nan,nan,nan,nan,nan,nan]"],
        "sweep.grid: nan is not finite",
    ),
    (["stages=[fit]", "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"], "stages: stage fit needs the outputs of sweep"),
    (["stages=[sweep]"], "stages: stage sweep needs the outputs of train"),
    (["model.source={tmp}/empty"], "model.source='{tmp}/empty' is a folder without config.json, weights"),
    (["model.source={tmp}/config_only"], "is a folder without weights (*.safetensors or *.bin), a tokenizer"),
    (["layer=99"], "layer=99 is out of range: model smollm2-135m has layers 0..29"),
    (["layer=x"], "layer must be an integer (a 0-based decoder layer index), got 'x'"),
    (["dataset.limit=0"], "dataset.limit must be a positive integer or null, got 0"),
    ([*persona(Path("{tmp}/absent.jsonl"))], "{tmp}/absent.jsonl: no such file or folder"),
    ([*persona(Path("{tmp}/data/bad.jsonl"))], "{tmp}/data/bad.jsonl:line 1: not valid JSON"),
    (["stages=[train,sweep,fit]", "fit.restarts=0"], "fit.restarts must be a positive integer, got 0"),
    (
        ["objective=sft", "train.epochs=0"],
        "train.epochs=0 is not valid: it must be a positive integer",
    ),
    (["objective=sft", "train.lr=x"], "train.lr=x: Value 'x' of type 'str' could not be converted to Float"),
    (["objective=sft", "train.lr=nan"], "train.lr=nan is not valid: it must be a finite"),
    (["intervention=lora", "intervention.rank=0"], "intervention.rank must be a positive integer"),
]


@pytest.mark.parametrize("overrides,message", BAD_INPUTS)
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, overrides, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "config_only").mkdir()
    (tmp_path / "config_only" / "config.json").write_text("{}")
    data_file(tmp_path, "{not json\n" + persona_rows(4), "bad.jsonl")
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in overrides]
    with pytest.raises(ConfigError, match=re.escape(message.replace("{tmp}", str(tmp_path)))):
        run(config(*overrides), tmp_path / "run")  # refused by composition (the schema) or by the run's check
    assert not (tmp_path / "run").exists()


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_bad_values_leave_a_finished_run_untouched(finished, tmp_path):
    """The same refusals on an existing run directory change none of its files."""
    run_dir = copy_run(finished, tmp_path)
    before = snapshot(run_dir)
    for overrides in (["seed=x"], ["sweep.batch_size=0"], ["sweep.grid=[nan]"], ["precision=float7"]):
        with pytest.raises(ConfigError):
            run(config(*overrides, base=FULL), run_dir)
    assert snapshot(run_dir) == before


def test_a_json_error_on_line_1_of_a_large_file_is_found_without_reading_it(tmp_path):
    """A 40 MB JSONL file whose first line is broken fails at once, reading only that line."""
    import tracemalloc

    from steer.datasets.files import read_table

    path = tmp_path / "big.jsonl"
    with open(path, "w") as fh:
        fh.write("{broken\n")
        line = persona_rows(1)
        fh.write(line * (40_000_000 // len(line)))
    tracemalloc.start()
    with pytest.raises(ValueError, match=re.escape(f"{path}:line 1: not valid JSON")):
        read_table(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2_000_000, f"peak {peak} bytes: the file was read whole"


@pytest.fixture(scope="module")
def finished(tmp_path_factory, smol):
    """One finished train → sweep → fit run (DiffMean, 2+2 pairs, 9 multipliers)."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    assert run(config(base=FULL), run_dir).ran == ["data", "train", "sweep", "fit"]
    return run_dir


def copy_run(finished: Path, tmp_path: Path) -> Path:
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_a_finished_run_records_its_provenance_and_a_content_addressed_ledger(finished):
    info = json.loads((finished / "run_info.json").read_text())
    assert info["status"] == "finished" and info["ended"] and info["seed"] == 0
    assert info["model"]["digest"] and info["packages"]["torch"] and info["command"]
    assert info["git"] is None or len(info["git"]["commit"]) == 40
    ledger = json.loads((finished / "stages.json").read_text())
    assert ledger["train"]["inputs"]["model"] == ledger["sweep"]["inputs"]["model"] == info["model"]["digest"]
    assert set(ledger["sweep"]["inputs"]) == {"model", "intervention.safetensors", "intervention.json"}
    assert set(ledger["fit"]["inputs"]) == {"sweep.parquet"}
    assert not (finished / "sweep.parts").exists(), "the sweep's parts are deleted once sweep.parquet is written"


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_editing_the_data_file_in_place_reruns_data_and_everything_after(tmp_path, smol):
    path = data_file(tmp_path, persona_rows(4))
    run_dir = tmp_path / "run"
    assert run(config(*persona(path)), run_dir).ran == ["data", "train", "sweep"]
    assert run(config(*persona(path)), run_dir).ran == []
    old_info = json.loads((run_dir / "run_info.json").read_text())["data"][str(path)]["sha256"]
    path.write_text(persona_rows(4, tag=" (edited)"))  # same path, same size class, new content
    assert run(config(*persona(path)), run_dir).ran == ["data", "train", "sweep"]
    assert "(edited)" in (run_dir / "pairs.jsonl").read_text()
    assert json.loads((run_dir / "run_info.json").read_text())["data"][str(path)]["sha256"] != old_info


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_an_edited_intervention_json_is_refused_naming_the_file_and_the_mismatch(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    meta = json.loads((run_dir / "intervention.json").read_text())
    meta["layer"] = 3
    (run_dir / "intervention.json").write_text(json.dumps(meta))
    before = snapshot(run_dir)
    for overrides in ([], ["force=true", "stages=[sweep]"]):  # the case: force=true swept it at layer 3
        with pytest.raises(CorruptArtifact, match=r"intervention.json: says layer=3 but this run's config has layer=1"):
            run(config(*overrides, base=FULL), run_dir)
    assert snapshot(run_dir) == before, "refused before anything was written"
    # The remedy the message names: force=true retrains, and the run ends as an untouched one does.
    assert run(config("force=true", base=FULL), run_dir).ran == ["train", "sweep", "fit"]
    assert (run_dir / "sweep.parquet").read_bytes() == (finished / "sweep.parquet").read_bytes()


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_a_truncated_safetensors_is_refused_then_retrained_once_deleted(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    weights = run_dir / "intervention.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    before = snapshot(run_dir)
    with pytest.raises(CorruptArtifact, match=r"intervention.safetensors: is not a readable safetensors file"):
        run(config(base=FULL), run_dir)
    assert snapshot(run_dir) == before
    weights.unlink()  # the remedy the message names
    assert run(config(base=FULL), run_dir).ran == ["train", "sweep", "fit"]
    assert weights.read_bytes() == (finished / "intervention.safetensors").read_bytes()
    assert (run_dir / "sweep.parquet").read_bytes() == (finished / "sweep.parquet").read_bytes()


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_a_garbled_sweep_parquet_is_refused_then_recomputed_once_deleted(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    sweep_file = run_dir / "sweep.parquet"
    data = bytearray(sweep_file.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\0" * 64
    sweep_file.write_bytes(bytes(data))
    before = snapshot(run_dir)
    with pytest.raises(CorruptArtifact, match=r"sweep.parquet: changed since the sweep stage wrote it"):
        run(config(base=FULL), run_dir)
    assert snapshot(run_dir) == before
    sweep_file.unlink()
    assert run(config(base=FULL), run_dir).ran == ["sweep", "fit"]
    assert sweep_file.read_bytes() == (finished / "sweep.parquet").read_bytes()
    assert json.loads((run_dir / "fit.json").read_text()) == json.loads((finished / "fit.json").read_text())


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_a_rerun_sweep_removes_the_stale_fit_and_figure(finished, tmp_path):
    run_dir = copy_run(finished, tmp_path)
    assert run(config("sweep.grid=[-1,1]", "stages=[train,sweep]", base=FULL), run_dir).ran == ["sweep"]
    assert not (run_dir / "fit.json").exists() and not (run_dir / "dynamics.png").exists()
    assert "fit" not in json.loads((run_dir / "stages.json").read_text())


@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_the_same_seed_twice_gives_bitwise_identical_files(tmp_path, smol):
    trained = ["objective=sft", "train.epochs=1", "train.batch_size=2"]
    for name in ("a", "b"):
        assert run(config(*trained), tmp_path / name).ran == ["data", "train", "sweep"]
    for file in ("intervention.safetensors", "sweep.parquet", "pairs.jsonl"):
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file


@pytest.mark.e2e
@pytest.mark.slow  # a train → sweep (→ fit) run: a minute or more on a busy CPU
def test_cli_refuses_a_bad_value_and_a_damaged_file_in_one_line_exit_2(finished, tmp_path):
    proc = run_py("seed=x", f"hydra.run.dir={tmp_path / 'fresh'}")
    assert proc.returncode == 2 and "seed must be an integer in 0..2**32-1, got 'x'" in proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr and not (tmp_path / "fresh").exists()
    run_dir = copy_run(finished, tmp_path)
    (run_dir / "sweep.parquet").write_bytes(b"PAR1 not really")
    proc = run_py(*FULL, f"hydra.run.dir={run_dir}")
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert f"{run_dir}/sweep.parquet: changed since the sweep stage wrote it" in out and "force=true" in out
    assert "Traceback" not in out
