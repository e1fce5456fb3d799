"""Damaged or foreign run files are one clear CorruptArtifact naming the file, never a traceback
from deep inside a library nor a silent reuse."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import save_file

from steer.io.artifacts import CorruptArtifact, read_json, read_parquet, read_safetensors, verify_intervention
from tests.conftest import python


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def garble(path, seed: int = 0) -> None:
    """Same length, random bytes: what a bad copy or disk leaves."""
    path.write_bytes(np.random.default_rng(seed).bytes(path.stat().st_size))


@pytest.fixture
def sweep_file(tmp_path):
    path = tmp_path / "sweep.parquet"
    frame = pd.DataFrame({"split": ["train", "test"] * 50, "m": np.arange(100.0), "pref_odds": np.linspace(-1, 1, 100)})
    frame.to_parquet(path, index=False)
    return path, frame


def test_read_parquet_reads_a_good_file(sweep_file):
    path, frame = sweep_file
    pd.testing.assert_frame_equal(read_parquet(path, columns=["m", "pref_odds"]), frame)


@pytest.mark.parametrize(
    "damage", [truncate, garble, lambda p: p.write_bytes(b"")], ids=["truncated", "garbled", "empty"]
)
def test_read_parquet_damaged(sweep_file, damage):
    path, _ = sweep_file
    damage(path)
    with pytest.raises(CorruptArtifact, match=r"sweep\.parquet: is not a readable parquet file .*force=true") as info:
        read_parquet(path)
    assert info.value.path == path and "\n" not in str(info.value)


def test_read_parquet_missing_columns(sweep_file):
    path, _ = sweep_file
    with pytest.raises(CorruptArtifact, match=r"lacks the columns \['util_odds'\]"):
        read_parquet(path, columns=["m", "util_odds"])


def test_read_parquet_missing_file_is_not_corrupt(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_parquet(tmp_path / "absent.parquet")


@pytest.fixture
def weights(tmp_path):
    path = tmp_path / "intervention.safetensors"
    tensors = {"delta_b": torch.randn(64), "delta_w": torch.randn(64, 32)}
    save_file(tensors, str(path))
    return path, tensors


def test_read_safetensors_reads_a_good_file(weights):
    path, tensors = weights
    loaded = read_safetensors(path)
    assert set(loaded) == set(tensors)
    for name in tensors:
        torch.testing.assert_close(loaded[name], tensors[name], rtol=0, atol=0)


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.01, 0.0])
def test_read_safetensors_truncated(weights, keep):
    path, _ = weights
    truncate(path, keep)
    with pytest.raises(CorruptArtifact, match=r"intervention\.safetensors: is not a readable safetensors file"):
        read_safetensors(path)


def test_read_safetensors_garbled(weights):
    path, _ = weights
    garble(path)
    with pytest.raises(CorruptArtifact, match="delete the file"):
        read_safetensors(path)


def test_read_json(tmp_path):
    path = tmp_path / "fit.json"
    path.write_text(json.dumps({"pref": {"r2": 0.9}}))
    assert read_json(path) == {"pref": {"r2": 0.9}}
    truncate(path)
    with pytest.raises(CorruptArtifact, match=r"fit\.json: is not valid JSON"):
        read_json(path)
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CorruptArtifact, match="is not valid JSON"):
        read_json(path)
    path.write_text("[1, 2]")
    with pytest.raises(CorruptArtifact, match="holds a JSON list, not an object"):
        read_json(path)


@pytest.mark.e2e
def test_a_corrupt_artifact_ends_a_program_in_one_line(weights):
    """What the user sees: the message alone carries file and remedy (the runner prints str(err))."""
    path, _ = weights
    truncate(path)
    code = textwrap.dedent(
        f"""
        import sys
        from steer.io.artifacts import CorruptArtifact, read_safetensors
        try:
            read_safetensors({str(path)!r})
        except CorruptArtifact as err:
            sys.exit(str(err))
        """
    )
    done = python("-c", code, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0
    assert str(path) in done.stderr and "force=true" in done.stderr


META = {
    "form": "vector",
    "layer": 15,
    "site": "residual",
    "model": "embedded:smollm2-135m",
    "d_in": 576,
    "d_out": 576,
    "rank": None,
    "shapes": {"delta_b": [576]},
}
EXPECTED = {"form": "vector", "layer": 15, "model": "embedded:smollm2-135m", "d_in": 576, "d_out": 576}


def test_verify_intervention_accepts_its_own_run():
    verify_intervention(META, {"delta_b": torch.zeros(576)}, EXPECTED)
    verify_intervention(META, {"delta_b": torch.zeros(576)}, {**EXPECTED, "layer": 15.0, "shapes": {"delta_b": (576,)}})


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        ({"layer": 3}, r"intervention\.json: says layer=3 but this run's config has layer=15"),
        ({"form": "lora"}, "says form='lora' but this run's config has form='vector'"),
        ({"model": "Qwen/Qwen2.5-7B-Instruct"}, "says model='Qwen/Qwen2.5-7B-Instruct'"),
        ({"d_out": 512}, "says d_out=512"),
        ({"shapes": {"delta_b": [512]}}, r"tensor delta_b has shape \[576\] but intervention\.json says \[512\]"),
        ({"shapes": {"delta_b": [576], "delta_w": [576, 576]}}, r"holds the tensors \['delta_b'\] but"),
        ({"shapes": None}, "has no 'shapes' object"),
    ],
)
def test_verify_intervention_refuses_an_edited_json(edit, match):
    with pytest.raises(CorruptArtifact, match=match):
        verify_intervention({**META, **edit}, {"delta_b": torch.zeros(576)}, EXPECTED)


def test_verify_intervention_refuses_non_finite_tensors(tmp_path):
    tensor = torch.zeros(576)
    tensor[7] = float("nan")
    tensor[9] = float("inf")
    with pytest.raises(CorruptArtifact, match=r"w\.safetensors: tensor delta_b holds 2 non-finite values"):
        verify_intervention(META, {"delta_b": tensor}, EXPECTED, tmp_path / "m.json", tmp_path / "w.safetensors")
