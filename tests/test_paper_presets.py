"""The paper's presets (experiments/paper_presets.py): the files are the table's, they carry the
published values, and every one composes with them."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from steer.stages import compose_config
from tests.conftest import REPO, load_experiment

P = load_experiment("paper_presets")
PRESETS = sorted(P.presets().items())


def test_presets_are_up_to_date():
    assert P.stale(P.presets()) == []


def test_one_preset_per_source_file_and_model():
    cells = {(c.dataset, c.model, c.form, c.objective) for c in P.CELLS}
    assert len(cells) == len(P.CELLS) == 60  # 3 data sets x 2 models x (3 forms x 3 objectives + CAA)
    assert len({c.source for c in P.CELLS}) == 60
    assert len(PRESETS) == 60 + 30  # and every Gemma cell on the embedded model


def test_published_values_from_the_issue():
    """Spot checks against the authors' files as quoted in issue 27 (Psychopathy, Gemma, layer 20)."""
    vector = yaml.safe_load((P.PRESETS / "psychopathy/gemma-2-9b-it/vector-split.yaml").read_text())
    assert vector["train"]["lr"] == 0.08 and vector["train"]["epochs"] == 2 and vector["layer"] == 20
    assert (vector["objective"]["lambda_n"], vector["objective"]["gamma"], vector["objective"]["theta"]) == (
        0.5,
        8,
        0.3,
    )
    assert vector["train"]["factors"] == [2.0 * k for k in range(1, 11)]
    # batch 4, accumulation 1, both directions: 2 pairs x 2 directions per micro-step, 2 micro-steps
    assert (vector["train"]["batch_size"], vector["train"]["grad_accum"], vector["train"]["dropout"]) == (2, 2, 0.1)
    lora = yaml.safe_load((P.PRESETS / "psychopathy/gemma-2-9b-it/lora-split.yaml").read_text())
    assert lora["train"]["lr"] == 0.01 and lora["intervention"]["rank"] == 4
    assert (lora["objective"]["gamma"], lora["objective"]["theta"], lora["train"]["grad_accum"]) == (5, 0.4, 4)
    assert 1.0 in lora["sweep"]["grid"] and -1.0 in lora["sweep"]["grid"]
    local = yaml.safe_load((P.PRESETS / "psychopathy/gemma-2-9b-it/local_weight-split.yaml").read_text())
    # one direction (orig_add): the 4 pairs of their batch are one micro-step
    assert (local["train"]["directions"], local["train"]["batch_size"], local["train"]["grad_accum"]) == (
        "positive",
        4,
        2,
    )
    embedded = yaml.safe_load((P.PRESETS / "psychopathy/smollm2-135m/lora-split.yaml").read_text())
    assert embedded["layer"] == 15 and embedded["train"] == lora["train"] and embedded["objective"] == lora["objective"]
    assert all(yaml.safe_load(text)["judge"]["select"]["m"] == 1.0 for _, text in PRESETS)


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch):
    monkeypatch.setattr(P, "PRESETS", tmp_path / "paper")
    monkeypatch.setattr(P, "REPO", tmp_path)
    assert P.main([]) == 0 and P.main(["--check"]) == 0
    victim = tmp_path / "paper/psychopathy/gemma-2-9b-it/vector-split.yaml"
    victim.write_text(victim.read_text().replace("theta: 0.3", "theta: 0.5"))
    (tmp_path / "paper/extra.yaml").write_text("x: 1\n")
    assert P.stale(P.presets()) == ["paper/extra.yaml", "paper/psychopathy/gemma-2-9b-it/vector-split.yaml"]
    assert P.main(["--check"]) == 1


def expected_values(cell, layer: int) -> dict:
    values = {"layer": layer}
    if cell.objective != "diffmean":
        values.update({"train.lr": cell.lr, "train.epochs": cell.epochs, "train.factors": P.FACTORS[cell.form]})
    if cell.objective == "split":
        values.update(
            {"objective.lambda_n": cell.lambda_n, "objective.gamma": cell.gamma, "objective.theta": cell.theta}
        )
    return values


CASES = [(c, c.model, c.layer) for c in P.CELLS]
CASES += [(c, P.EMBEDDED, P.EMBEDDED_LAYER) for c in P.CELLS if c.model == P.EMBEDDED_FROM]


@pytest.mark.parametrize(("cell", "model", "layer"), CASES, ids=[P.relative(c, m) for c, m, _ in CASES])
def test_every_preset_composes_with_the_published_values(cell, model, layer):
    cfg = compose_config([f"experiment=paper/{P.relative(cell, model)}"])
    assert (cfg.dataset.loader, cfg.model.name, cfg.intervention.form, cfg.objective.name) == (
        cell.dataset,
        model,
        cell.form,
        cell.objective,
    )
    for key, value in expected_values(cell, layer).items():
        got = cfg
        for part in key.split("."):
            got = got[part]
        assert (list(got) if isinstance(value, list) else got) == value, key
    assert cfg.judge.select.m == 1.0


def test_cfg_job_prints_the_published_values():
    """``python run.py experiment=<preset> --cfg job``, as a user would check a cell."""
    out = subprocess.run(
        [sys.executable, "run.py", "experiment=paper/psychopathy/gemma-2-9b-it/vector-split", "--cfg", "job"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cfg = yaml.safe_load(out)
    assert cfg["layer"] == 20 and cfg["train"]["lr"] == 0.08 and cfg["train"]["epochs"] == 2
    assert (cfg["objective"]["lambda_n"], cfg["objective"]["gamma"], cfg["objective"]["theta"]) == (0.5, 8.0, 0.3)
    assert cfg["train"]["factors"][0] == 2.0 and cfg["train"]["factors"][-1] == 20.0
