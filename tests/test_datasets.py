"""The paper's data sets: split sizes and answers against the files, other files of the same format,
bad files failing before anything is written, hub access failing with the key to set, and the
AxBench data stage generating A_n with the model."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import pandas as pd
import pytest

from steer.core.generate import greedy_generate
from steer.datasets.powerseeking import parse_choices
from steer.io.cache import cache_root
from steer.pairs import read_pairs, render_prompt
from steer.stages import ConfigError, compose_config, data, run
from tests.conftest import assert_refused, python, run_py

PSYCHOPATHY = "anthropic-evals/persona/psychopathy.jsonl"
MC = "anthropic-evals/advanced-ai-risk/lm_generated_evals/power-seeking-inclination.jsonl"
BIPO = "bipo/power-seeking"
AXBENCH = "axbench/concept10/prod_9b_l20_v1"
QUIET = ["tracking.wandb=false", "progress=false"]


def cfg_for(*overrides: str):
    return compose_config([*QUIET, *overrides])


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def all_pairs(splits):
    return splits.train + splits.test


def check_split(splits, n_train: int, n_test: int) -> None:
    assert (len(splits.train), len(splits.test)) == (n_train, n_test)
    ids = [p.id for p in all_pairs(splits)]
    assert len(set(ids)) == len(ids)  # train and test disjoint, no pair twice
    assert len(splits.digest) == 64


# --- the paper's files ------------------------------------------------------------------------


def test_psychopathy_paper_split_and_answers(shared_data):
    splits = data.load_dataset(cfg_for("dataset=psychopathy", f"dataset.path={shared_data / PSYCHOPATHY}"))
    check_split(splits, 500, 100)
    rows = jsonl(shared_data / PSYCHOPATHY)
    for pair in all_pairs(splits):
        row = rows[int(pair.id)]
        assert pair.prompt == row["question"]
        assert row["answer_matching_behavior"] == " " + pair.positive  # the whitespace rule: " Yes" -> "Yes"
        assert row["answer_not_matching_behavior"] == " " + pair.negative
    assert {p.positive for p in splits.train} == {"Yes", "No"}
    # the folder of the hub layout finds the same file
    folder = data.load_dataset(cfg_for("dataset=psychopathy", f"dataset.path={shared_data / 'anthropic-evals'}"))
    assert folder == splits


def test_powerseeking_bipo_paper_split_and_answers(shared_data):
    splits = data.load_dataset(cfg_for("dataset=powerseeking", f"dataset.path={shared_data / BIPO}"))
    check_split(splits, 500, 200)
    train = pd.read_csv(shared_data / BIPO / "train.csv", keep_default_na=False)
    test = pd.read_csv(shared_data / BIPO / "test.csv", keep_default_na=False)
    for split, frame, pairs in (("train", train, splits.train), ("test", test, splits.test)):
        for pair in pairs:
            kind, index = pair.id.split("-")
            row = frame.iloc[int(index)]
            assert kind == split
            assert (pair.prompt, pair.positive, pair.negative) == (
                row["question"],
                row["matching"].strip(),
                row["not_matching"].strip(),
            )
    assert sorted(int(p.id.split("-")[1]) for p in splits.test) == list(range(200))  # all of test.csv
    assert all(p.prompt.strip() for p in splits.train)  # the two empty questions are skipped


def test_powerseeking_multiple_choice_file(shared_data):
    splits = data.load_dataset(cfg_for("dataset=powerseeking", f"dataset.path={shared_data / MC}"))
    check_split(splits, 500, 200)
    rows = jsonl(shared_data / MC)
    for pair in all_pairs(splits):
        row = rows[int(pair.id)]
        assert pair.prompt == row["question"]
        for answer, column in (
            (pair.positive, "answer_matching_behavior"),
            (pair.negative, "answer_not_matching_behavior"),
        ):
            letter = row[column].strip()  # "(A)"; one option is written "(B)I choose ..."
            option = re.split(rf"\n {re.escape(letter)} ?", row["question"])[1].split("\n")[0].strip()
            assert answer == f"{letter} {option}"


def test_axbench_concepts_split_64_8_with_concept_meta(shared_data):
    frame = pd.read_parquet(shared_data / AXBENCH / "generate/train_data.parquet")
    concepts = {r["concept_id"]: r["concept"] for r in jsonl(shared_data / AXBENCH / "generate/metadata.jsonl")}
    seen = set()
    for concept_id in range(10):
        cfg = cfg_for("dataset=axbench", f"dataset.path={shared_data / AXBENCH}", f"dataset.concept_id={concept_id}")
        assert cfg.dataset.name == f"axbench-c{concept_id}" and cfg.dataset.loader == "axbench"
        assert cfg.run_id.startswith(f"axbench-c{concept_id}/")
        splits = data.load_dataset(cfg)
        check_split(splits, 64, 8)
        for pair in all_pairs(splits):
            row = frame.iloc[int(pair.id.split("-")[1])]
            assert (row["category"], row["concept_id"]) == ("positive", concept_id)
            assert (pair.prompt, pair.positive) == (row["input"], row["output"].strip())
            assert pair.negative is None  # A_n is the model's own answer, generated by the data stage
            assert pair.meta == {"concept_id": concept_id, "concept": concepts[concept_id]}
        ids = {p.id for p in all_pairs(splits)}
        assert not ids & seen
        seen |= ids
    with pytest.raises(ValueError, match=r"dataset.concept_id=10 .*concepts: 0..9"):
        data.load_dataset(cfg_for("dataset=axbench", f"dataset.path={shared_data / AXBENCH}", "dataset.concept_id=10"))


# --- other files of the same formats ----------------------------------------------------------


def test_another_persona_trait_loads_with_only_the_path_changed(tmp_path):
    path = tmp_path / "narcissism.jsonl"
    rows = []
    for i in range(600):
        yes = i % 3 != 0
        rows.append(
            {
                "question": f'Is the following statement something you would say?\n"I deserve admiration #{i}"',
                "statement": f"I deserve admiration #{i}",
                "label_confidence": 0.9,
                "answer_matching_behavior": " Yes" if yes else " No",
                "answer_not_matching_behavior": " No" if yes else " Yes",
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    splits = data.load_dataset(cfg_for("dataset=psychopathy", f"dataset.path={path}"))
    check_split(splits, 500, 100)
    for pair in all_pairs(splits):
        row = rows[int(pair.id)]
        assert (pair.prompt, pair.positive, pair.negative) == (
            row["question"],
            row["answer_matching_behavior"].strip(),
            row["answer_not_matching_behavior"].strip(),
        )


def test_axbench_parquet_without_metadata_takes_the_concept_from_its_rows(tmp_path):
    rows = [
        {"input": f"Question {c}-{i}?", "output": f" Answer {i} about topic {c}. ", "output_concept": f"topic {c}"}
        | {"category": "positive", "concept_id": c}
        for c in (0, 1)
        for i in range(9)
    ] + [{"input": "Q?", "output": "A", "output_concept": "EEEEE", "category": "negative", "concept_id": -1}]
    path = tmp_path / "concepts.parquet"
    pd.DataFrame(rows).to_parquet(path)
    cfg = cfg_for(
        "dataset=axbench", f"dataset.path={path}", "dataset.concept_id=1", "dataset.n_train=6", "dataset.n_test=3"
    )
    splits = data.load_dataset(cfg)
    check_split(splits, 6, 3)
    assert {p.meta["concept"] for p in all_pairs(splits)} == {"topic 1"}
    assert sorted(p.positive for p in all_pairs(splits)) == [f"Answer {i} about topic 1." for i in range(9)]


def test_choices_parse_multiline_options_and_stop_at_a_blank_line():
    question = "Do it?\n\nChoices:\n (A) Yes, and\nmore of it.\n (B) No.\n\nAnswer:"
    assert parse_choices(question) == {"A": "Yes, and more of it.", "B": "No."}


def test_bipo_rows_with_an_empty_question_are_skipped_with_a_warning(tmp_path, caplog):
    folder = tmp_path / "bipo"
    folder.mkdir()
    for name, n in (("train.csv", 6), ("test.csv", 2)):
        with open(folder / name, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["question", "matching", "not_matching"])
            for i in range(n):
                out.writerow(["" if (name, i) == ("train.csv", 2) else f"Take power {i}?\nReally?", "Yes.", "No."])
    cfg = cfg_for("dataset=powerseeking", f"dataset.path={folder}", "dataset.n_train=5", "dataset.n_test=2")
    splits = data.load_dataset(cfg)
    assert [p.id for p in splits.train] == ["train-0000", "train-0001", "train-0003", "train-0004", "train-0005"]
    # the physical line of the empty row: header, two 2-line rows, then it
    assert f"{folder / 'train.csv'}:line 6" in caplog.text
    with pytest.raises(ValueError, match=r"train.csv: asked for 6 examples \(dataset.n_train\), the file has 5"):
        data.load_dataset(cfg_for("dataset=powerseeking", f"dataset.path={folder}", "dataset.n_train=6"))


# --- bad files: a clear error naming file and row, nothing written ---------------------------


def write_psychopathy(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


GOOD = {"question": "Would you say X?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}
BAD_FILES = {
    "missing column": (
        "p.jsonl",
        [GOOD, GOOD, {"question": "Q?", "answer_matching_behavior": " Yes"}],
        r"p.jsonl:line 3: missing column 'answer_not_matching_behavior'",
    ),
    "empty file": ("p.jsonl", [], r"p.jsonl: the file is empty"),
    "wrong type": (
        "p.jsonl",
        [GOOD, GOOD | {"question": 7}],
        r"p.jsonl:line 2: column 'question' must be a string, got int",
    ),
    "not json": ("p.jsonl", [GOOD, "{oops"], r"p.jsonl:line 2: not valid JSON"),
    "empty answer": (
        "p.jsonl",
        [GOOD | {"answer_matching_behavior": "  "}],
        r"p.jsonl:line 1: column 'answer_matching",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_persona_file_fails_before_anything_is_written(case, tmp_path):
    name, rows, message = BAD_FILES[case]
    path = write_psychopathy(tmp_path / name, rows)
    cfg = cfg_for("dataset=psychopathy", f"dataset.path={path}", "dataset.n_train=1", "dataset.n_test=1")
    assert_refused(cfg, tmp_path / "run", re.escape(f"{tmp_path}/") + message)


def test_bad_csv_and_parquet_files_name_file_and_row(tmp_path):
    folder = tmp_path / "bipo"
    folder.mkdir()
    (folder / "train.csv").write_text("question,matching\nQ?,Yes\n")
    (folder / "test.csv").write_text("question,matching,not_matching\nQ?,Yes,No\nQ2?,Yes\n")
    cfg = cfg_for("dataset=powerseeking", f"dataset.path={folder}", "dataset.n_train=1", "dataset.n_test=1")
    with pytest.raises(
        ConfigError, match=re.escape(f"{folder / 'train.csv'}: line 1 (header): missing column 'not_matching'")
    ):
        run(cfg, tmp_path / "run")
    (folder / "train.csv").write_text("question,matching,not_matching\nQ?,Yes,No\n")
    with pytest.raises(ConfigError, match=re.escape(f"{folder / 'test.csv'}:line 3: expected 3 fields") + ".*got 2"):
        run(cfg, tmp_path / "run")
    parquet = tmp_path / "ax.parquet"
    pd.DataFrame({"input": ["Q"], "output": ["A"], "category": ["positive"], "concept_id": ["zero"]}).to_parquet(
        parquet
    )
    cfg = cfg_for("dataset=axbench", f"dataset.path={parquet}")
    with pytest.raises(
        ConfigError, match=re.escape(f"{parquet}: row 1: column 'concept_id' must be an integer, got str")
    ):
        run(cfg, tmp_path / "run")
    pd.DataFrame({"input": ["Q"], "output": ["A"], "category": ["positive"]}).to_parquet(parquet)
    with pytest.raises(ConfigError, match=re.escape(f"{parquet}: schema: missing column 'concept_id'")):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.e2e
def test_run_py_exits_2_on_a_bad_file_and_leaves_no_run_dir(tmp_path):
    path = write_psychopathy(tmp_path / "p.jsonl", [GOOD, {"question": "Q?"}])
    run_dir = tmp_path / "out"
    result = run_py("dataset=psychopathy", f"dataset.path={path}", f"hydra.run.dir={run_dir}", *QUIET)
    assert result.returncode == 2, result.stderr
    assert f"{path}:line 2: missing column 'answer_matching_behavior'" in result.stdout + result.stderr
    assert not run_dir.exists()


@pytest.mark.e2e
def test_hub_unreachable_names_dataset_path(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    result = python("-m", "steer.datacheck", "dataset=psychopathy", env=env)
    assert result.returncode == 2
    assert "Anthropic/model-written-evals" in result.stderr
    assert "dataset.path=" in result.stderr


def test_loader_rejects_an_unknown_option():
    with pytest.raises(ValueError, match="dataset.colour is not an option of the axbench loader"):
        data.load_dataset(cfg_for("dataset=axbench", "+dataset.colour=red"))


# --- the AxBench data stage: A_n is the model's own greedy answer ----------------------------


def test_axbench_run_generates_and_caches_negatives(smol, tmp_path, monkeypatch):
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(cache_root() / "models")  # the converted model, not the answers
    monkeypatch.setenv("STEER_CACHE", str(tmp_path / "cache"))
    rows = [
        {"input": f"Name {i} thing{'s' * i} you like.", "output": f" I like concept item {i}."}
        | {"category": "positive", "concept_id": 4, "output_concept": "items"}
        for i in range(6)
    ]
    path = tmp_path / "ax.parquet"
    pd.DataFrame(rows).to_parquet(path)
    overrides = [
        "dataset=axbench",
        f"dataset.path={path}",
        "dataset.concept_id=4",
        "dataset.n_train=4",
        "dataset.n_test=2",
        "dataset.generation.max_new_tokens=5",
        "stages=[train,sweep]",
        "sweep.grid=[-1,0,1]",
    ]
    run_dir = tmp_path / "run"
    run(cfg_for(*overrides), run_dir)
    records = read_pairs(run_dir / "pairs.jsonl")
    model, tok = smol
    prompts = [render_prompt(tok, rows[int(r.example_id.split("-")[1])]["input"]) for r in records]
    assert [r.prompt_text for r in records] == prompts
    expected = [a.strip() for a in greedy_generate(model, tok, prompts, 5, progress=False)]
    assert [r.negative for r in records] == expected
    source = {"source": str(path), "source_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    queries = [rows[int(r.example_id.split("-")[1])]["input"] for r in records]
    assert [r.meta for r in records] == [{"concept_id": 4, "concept": "items", "query": q, **source} for q in queries]
    assert (run_dir / "sweep.parquet").is_file()
    assert len(list((tmp_path / "cache" / "own_answers").iterdir())) == 1
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["models", "own_answers"]
    # a bad generation setting fails before anything is written
    assert_refused(
        cfg_for(*overrides, "dataset.generation.max_new_tokens=0"),
        tmp_path / "other",
        "dataset.generation.max_new_tokens must be a positive integer",
    )


def test_hub_folder_gives_the_same_pairs(shared_data):
    """A local folder in the hub layout stands in for a hub repo (``dataset.hub=FOLDER``)."""
    local = data.load_dataset(cfg_for("dataset=psychopathy", f"dataset.path={shared_data / PSYCHOPATHY}"))
    hub = data.load_dataset(cfg_for("dataset=psychopathy", f"dataset.hub={shared_data / 'anthropic-evals'}"))
    assert (hub.train, hub.test) == (local.train, local.test)
    ax = ["dataset=axbench", "dataset.concept_id=2"]
    local = data.load_dataset(cfg_for(*ax, f"dataset.path={shared_data / AXBENCH}"))
    hub = data.load_dataset(
        cfg_for(*ax, f"dataset.hub={shared_data / AXBENCH}", "dataset.file=generate/train_data.parquet")
    )
    assert (hub.train, hub.test) == (local.train, local.test)  # the concept text from output_concept


def persona_lines(n: int, flip: int | None = None) -> str:
    rows = [
        {"question": f"Statement {i}?", "answer_matching_behavior": " Yes", "answer_not_matching_behavior": " No"}
        for i in range(n)
    ]
    if flip is not None:
        rows[flip]["question"] = "An edited statement?"
    return "".join(json.dumps(r) + "\n" for r in rows)


def test_hub_data_is_fetched_by_huggingface_hub_and_addressed_by_commit_and_bytes(tmp_path, monkeypatch):
    """The real hub client (``hf_hub_download``) reads a Hugging Face cache laid out as the hub
    leaves it (offline: no network here). The data stage's input identity names the commit the
    revision resolves to and the file's sha256: a new commit on main is a new identity, a pinned
    ``dataset.revision`` keeps the old one, and a revision that cannot be fetched is named."""
    from huggingface_hub import constants

    from steer.stages.runner import data_identity

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    repo = cache / "datasets--Anthropic--model-written-evals"

    def push(commit: str, text: str) -> None:
        file = repo / "snapshots" / commit / "persona" / "psychopathy.jsonl"
        file.parent.mkdir(parents=True)
        file.write_text(text)
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / "main").write_text(commit)

    old, new = "a" * 40, "b" * 40
    push(old, persona_lines(6))
    sizes = ["dataset.n_train=4", "dataset.n_test=2"]
    cfg = cfg_for("dataset=psychopathy", *sizes)
    first = data_identity(cfg)
    digest = hashlib.sha256(persona_lines(6).encode()).hexdigest()
    assert first == f"hub:Anthropic/model-written-evals@{old}/persona/psychopathy.jsonl sha256:{digest}"
    splits = data.load_dataset(cfg)
    assert len(splits.train) == 4 and len(splits.test) == 2
    assert first == f"{splits.source} sha256:{splits.digest}"  # what pairs.jsonl records as its source
    assert {p.prompt for p in splits.train + splits.test} == {f"Statement {i}?" for i in range(6)}

    push(new, persona_lines(6, flip=3))  # someone pushes an edit to main
    assert data_identity(cfg) != first
    edited = data.load_dataset(cfg)
    assert "An edited statement?" in {p.prompt for p in edited.train + edited.test}
    pinned = cfg_for("dataset=psychopathy", *sizes, f"dataset.revision={old}")
    assert data_identity(pinned) == first
    missing = cfg_for("dataset=psychopathy", *sizes, "dataset.revision=v9")
    assert data_identity(missing) == "unreachable hub:Anthropic/model-written-evals/persona/psychopathy.jsonl@v9"
    with pytest.raises(ValueError, match=r"at revision v9 .*dataset\.path="):
        data.load_dataset(missing)


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ["dataset=psychopathy", f"dataset.path=SHARED/{PSYCHOPATHY}"],
        ["dataset=powerseeking", f"dataset.path=SHARED/{BIPO}"],
        [
            "dataset=axbench",
            f"dataset.path=SHARED/{AXBENCH}",
            "dataset.concept_id=9",
            "dataset.generation.max_new_tokens=16",
        ],
    ],
    ids=["psychopathy", "powerseeking", "axbench"],
)
def test_paper_data_sets_train_and_sweep(overrides, shared_data, tmp_path):
    overrides = [o.replace("SHARED", str(shared_data)) for o in overrides]
    cfg = cfg_for(*overrides, "dataset.limit=4", "stages=[train,sweep]", "sweep.grid=[-1,0,1]")
    run(cfg, tmp_path / "run")
    records = read_pairs(tmp_path / "run" / "pairs.jsonl")
    splits = data.load_dataset(cfg)
    assert [(r.example_id, r.positive) for r in records] == [(p.id, p.positive) for p in all_pairs(splits)]
    assert all(r.negative and r.negative == r.negative.strip() for r in records)
    frame = pd.read_parquet(tmp_path / "run" / "sweep.parquet")
    assert len(frame) == 3 * len(records) and frame["util_odds"].notna().all()
