"""Messages that say where: the file and line of bad data, the layouts a data folder may have, the
config key that fixes a failure."""

from __future__ import annotations

import json

import pytest

from steer import rundir
from steer.datasets import load_splits
from steer.judge.server import ServerError, free_port, wait_ready
from steer.judge.settings import parse_settings
from steer.stages import ConfigError, check, compose_config
from tests.conftest import start

ROW = {"question": "Q?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}


def test_binary_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "psychopathy.jsonl"
    path.write_bytes((json.dumps(ROW) + "\n").encode() * 2 + b'{"question": "\x80\x81"}\n')
    with pytest.raises(ValueError) as caught:
        load_splits("psychopathy", {"path": str(path), "n_train": 1, "n_test": 1})
    assert f"{path}:line 3" in str(caught.value) and "not UTF-8" in str(caught.value)
    assert "codec can't decode" not in str(caught.value)


def test_binary_file_through_the_run_check(tmp_path):
    """What `python run.py dataset=psychopathy dataset.path=<a binary file>` prints (as a ConfigError)."""
    path = tmp_path / "weights.jsonl"
    path.write_bytes(bytes(range(256)) * 4)
    overrides = ["dataset=psychopathy", f"dataset.path={path}"]
    with pytest.raises(ConfigError, match=rf"{path}:line 2: not UTF-8 text \(byte 0x80 at offset 128\)"):
        check(compose_config(overrides), overrides=overrides)


def test_binary_csv_names_file_and_line(tmp_path):
    folder = tmp_path / "power-seeking"
    folder.mkdir()
    header = b"question,matching,not_matching\n"
    (folder / "train.csv").write_bytes(header + b"q,a,b\nq2,\xff,b\n")
    (folder / "test.csv").write_bytes(header + b"q,a,b\n")
    with pytest.raises(ValueError, match=rf"{folder / 'train.csv'}:line 3: not UTF-8"):
        load_splits("powerseeking", {"path": str(folder), "n_train": 1, "n_test": 1})


def test_powerseeking_folder_without_data_names_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError) as caught:
        load_splits("powerseeking", {"path": str(tmp_path)})
    text = str(caught.value)
    assert "train.csv" in text and "test.csv" in text and "question, matching, not_matching" in text
    assert "power-seeking-inclination.jsonl" in text


def test_bipo_folder_missing_test_csv(tmp_path):
    (tmp_path / "train.csv").write_text("question,matching,not_matching\nq,a,b\n")
    with pytest.raises(FileNotFoundError, match=rf"needs train.csv and test.csv.*{tmp_path / 'test.csv'} is missing"):
        load_splits("powerseeking", {"path": str(tmp_path), "n_train": 1, "n_test": 1})


@pytest.mark.e2e
def test_server_timeout_names_the_real_key(tmp_path):
    process = start("-c", "import signal; signal.pause()")  # a "server process" that never answers
    try:
        with pytest.raises(ServerError) as caught:
            wait_ready(f"http://127.0.0.1:{free_port()}", "m", process, tmp_path / "server.log", timeout=1)
    finally:
        process.kill()
    assert "judge.startup_timeout" in str(caught.value) and "local_startup_timeout" not in str(caught.value)


def judge_config(**changes) -> dict:
    judge = compose_config(["stages=[train,sweep,fit,judge]"]).judge
    select = {"method": "fit", **dict(judge.select)}  # the judge stage adds the judge/select option's name
    return {**dict(judge), "generation": dict(judge.generation), "select": select, **changes}


def test_local_judge_model_that_is_no_folder(tmp_path):
    with pytest.raises(ValueError, match=r"judge.model='/no/such/judge': judge=local serves a local model folder"):
        parse_settings(judge_config(model="/no/such/judge"), "sentiment", [1, 2])
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match=r"judge.model=.* is a folder without weights"):
        parse_settings(judge_config(model=str(tmp_path)), "sentiment", [1, 2])


def test_damaged_config_yaml_names_the_file(tmp_path):
    (tmp_path / rundir.CONFIG).write_text("model: {name: [unclosed\n")
    with pytest.raises(ValueError, match=rf"{tmp_path / rundir.CONFIG}: not valid YAML"):
        rundir.read_config(tmp_path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"n_train": -1}, r"dataset\.n_train must be a non-negative integer, got -1"),
        ({"seed": "a"}, r"dataset\.seed must be a non-negative integer, got 'a'"),
        ({"n_train": 1000}, r"dataset=sentiment \(built in\): asked for 1000 train .* \(set dataset\.n_train"),
    ],
)
def test_split_sizes_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        load_splits("sentiment", options)
