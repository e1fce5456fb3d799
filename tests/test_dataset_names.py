"""A data set's name follows the data it reads: run directories, figure titles and table columns
of two files loaded through one loader never mix; the paper's own files keep their names."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
import pytest

from steer.stages import compose_config
from tests.conftest import run_py

GRID = "sweep.grid=[-4,-3,-2,-1,0,1,2,3,4]"


def persona_file(path, trait: str, n: int = 12) -> str:
    """A persona file in Anthropic's format with ``n`` statements of ``trait``."""
    rows = [
        {
            "question": f'Is the following statement something you would say?\n"I am {trait}, case {i}."',
            "answer_matching_behavior": " Yes" if i % 2 else " No",
            "answer_not_matching_behavior": " No" if i % 2 else " Yes",
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def name_of(*overrides: str) -> str:
    cfg = compose_config(list(overrides))
    assert cfg.run_id.startswith(f"{cfg.dataset.name}/")
    return cfg.dataset.name


@pytest.mark.e2e
@pytest.mark.slow
def test_two_persona_files_get_two_run_dirs_figures_and_columns(tmp_path):
    first = persona_file(tmp_path / "narcissism.jsonl", "vain")
    second = persona_file(tmp_path / "machiavellianism.jsonl", "scheming")
    out = tmp_path / "outputs"
    args = [
        "-m",
        "dataset=psychopathy",
        f"dataset.path={first},{second}",
        "dataset.n_train=8",
        "dataset.n_test=4",
        GRID,
        f"output_root={out}",
        "tracking.wandb=false",
        "progress=false",
    ]
    proc = run_py(*args, timeout=1800)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_dirs = {p.parent.relative_to(out).parts[0]: p.parent for p in out.rglob("fit.json")}
    assert set(run_dirs) == {"persona-narcissism", "persona-machiavellianism"}
    for name, run_dir in run_dirs.items():
        pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
        source = first if name == "persona-narcissism" else second
        assert {p["source"] for p in pairs} == {source}
        assert {p["source_sha256"] for p in pairs} == {hashlib.sha256(Path(source).read_bytes()).hexdigest()}
        assert (name == "persona-narcissism") == ("vain" in pairs[0]["prompt_text"])

    from steer.report.__main__ import main

    assert main(["table2", "--outputs", str(out)]) == 0
    columns = pd.read_csv(out / "reports" / "table2.csv").columns
    assert {"pref_persona-narcissism", "pref_persona-machiavellianism"} <= set(columns)
    assert not any("Psy" in c for c in columns)  # not filed under the paper's psychopathy
    args = ["fig2", "--outputs", str(out), "--dataset", "persona-narcissism", "--dataset", "persona-machiavellianism"]
    assert main(args) == 0
    figures = sorted(p.name for p in (out / "reports").glob("fig2-*.png"))
    assert len(figures) == 2 and all("persona" in f for f in figures)
    records = pd.read_csv(out / "reports" / "fig2.csv")
    assert set(records.dataset) == {"persona-narcissism", "persona-machiavellianism"}


def test_paper_files_keep_their_names(shared_data):
    persona = shared_data / "anthropic-evals" / "persona" / "psychopathy.jsonl"
    assert name_of("dataset=psychopathy") == "psychopathy"
    assert name_of("dataset=psychopathy", f"dataset.path={persona}") == "psychopathy"
    assert name_of("dataset=psychopathy", f"dataset.path={persona.parent.parent}") == "psychopathy"
    assert name_of("dataset=powerseeking", f"dataset.path={shared_data / 'bipo' / 'power-seeking'}") == "powerseeking"
    release = shared_data / "axbench" / "concept10" / "prod_9b_l20_v1"
    for concept in (0, 7):
        assert name_of("dataset=axbench", f"dataset.concept_id={concept}") == f"axbench-c{concept}"
        assert name_of("dataset=axbench", f"dataset.path={release}", f"dataset.concept_id={concept}") == (
            f"axbench-c{concept}"
        )
    assert name_of("dataset=axbench", f"dataset.path={release / 'generate' / 'train_data.parquet'}") == "axbench-c0"
    assert name_of() == "sentiment"


def test_other_sources_get_names_of_their_own(shared_data):
    risk = shared_data / "anthropic-evals" / "advanced-ai-risk"
    names = {
        name_of("dataset=powerseeking"),  # the multiple-choice file on the hub
        name_of(
            "dataset=powerseeking", f"dataset.path={risk / 'lm_generated_evals' / 'power-seeking-inclination.jsonl'}"
        ),
        name_of(
            "dataset=powerseeking",
            f"dataset.path={risk / 'human_generated_evals'}",
            "dataset.file=x/human_generated_evals/power-seeking-inclination.jsonl",
        ),
        name_of(
            "dataset=axbench",
            f"dataset.path={shared_data / 'axbench' / 'concept10' / 'prod_2b_l20_v1'}",
            "dataset.concept_id=3",
        ),
        name_of("dataset=axbench", "dataset.file=2b/l10/train/data.parquet"),
    }
    assert names == {
        "powerseeking-mc",
        "powerseeking-mc-human",
        "axbench-prod_2b_l20_v1-c3",
        "axbench-2b-l10-c0",
    }
    assert name_of("dataset=psychopathy", "dataset.file=persona/narcissism.jsonl") == "persona-narcissism"
    assert name_of("dataset=psychopathy", "dataset.path=/elsewhere/narcissism.jsonl", "dataset.name=mine") == "mine"


@pytest.mark.parametrize("folder", ["wealth-seeking", "power-seeking-v2"])
def test_another_bipo_folder_is_its_own_data_set(tmp_path, folder):
    path = tmp_path / folder
    path.mkdir()
    (path / "train.csv").write_text("question,matching,not_matching\nq,a,b\n")
    assert name_of("dataset=powerseeking", f"dataset.path={path}") == f"bipo-{folder}"
