"""``make gpu-check``'s CPU path (reduced sizes): every stage runs, the JSON holds every number, the
table prints, and the bf16/fp32 agreement and the multirun pass."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import load_experiment


@pytest.mark.e2e
@pytest.mark.slow
def test_gpu_check_cpu_path_writes_every_number(tmp_path, capsys):
    out = tmp_path / "gpu_check.json"
    assert load_experiment("gpu_check").main(["--reduced", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out
    if not torch.cuda.is_available():
        assert "no CUDA device" in printed
    assert "gpu-check on" in printed and "bf16 vs fp32" in printed and "multirun" in printed
    for precision in ("fp32", "bf16"):
        stages = result[precision]["stages"]
        assert set(stages) == {"train", "sweep", "fit", "generate b1", "generate 4x3"}
        for name in ("train", "sweep"):
            row = stages[name]
            assert row["tokens_per_second"] > 0 and row["fraction_of_peak"] > 0 and row["peak_mib"] > 0
        assert stages["generate 4x3"]["rows"] == 12 and stages["generate b1"]["rows"] == 1
        judge = result[precision]["judge"]
        assert judge["calls"] == 2 and judge["continuous_batching"]
    agreement = result["agreement"]
    assert agreement["pass"], agreement
    assert result["multirun"]["pass"], result["multirun"]
    assert result["peak_tflops"] > 0
