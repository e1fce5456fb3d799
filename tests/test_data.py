"""Polarity pairs, seeded splits and the built-in sentiment data set."""

from __future__ import annotations

import pytest

from steer.datasets import load_splits, sentiment
from steer.pairs import PairRecord, PolarityPair, apply_limit, read_pairs, render_prompt, seeded_split, write_pairs


def test_sentiment_has_enough_distinct_mirrored_pairs():
    pairs = sentiment.all_pairs()
    assert len(pairs) >= 150
    assert len({p.prompt for p in pairs}) == len(pairs) and len({p.id for p in pairs}) == len(pairs)
    for p in pairs:
        assert p.positive != p.negative
        assert abs(len(p.positive.split()) - len(p.negative.split())) <= 2, p


def test_splits_are_seeded_disjoint_and_sized():
    a = load_splits("sentiment", {"n_train": 160, "n_test": 40, "seed": 0})
    b = load_splits("sentiment", {"n_train": 160, "n_test": 40, "seed": 0})
    c = load_splits("sentiment", {"n_train": 160, "n_test": 40, "seed": 1})
    assert [p.id for p in a.train] == [p.id for p in b.train]
    assert [p.id for p in a.train] != [p.id for p in c.train]
    assert len(a.train) == 160 and len(a.test) == 40
    assert not {p.id for p in a.train} & {p.id for p in a.test}


def test_limit_caps_each_split():
    splits = apply_limit(load_splits("sentiment", {"n_train": 160, "n_test": 40, "seed": 0}), 8)
    assert len(splits.train) == 8 and len(splits.test) == 8
    with pytest.raises(ValueError, match="dataset.limit"):
        apply_limit(splits, 0)


def test_split_larger_than_the_data_is_an_error():
    pairs = [PolarityPair(str(i), "q", "a", "b") for i in range(5)]
    with pytest.raises(ValueError, match="asked for 4 train \\+ 2 test examples, the data set has 5"):
        seeded_split(pairs, 4, 2, seed=0)


def test_unknown_loader_and_option_are_named():
    with pytest.raises(ValueError, match="dataset.loader='nope'"):
        load_splits("nope", {})
    with pytest.raises(ValueError, match="dataset.n_valid is not an option of the sentiment loader"):
        load_splits("sentiment", {"n_valid": 3})


def test_pairs_jsonl_round_trip_keeps_meta(tmp_path):
    records = [PairRecord("train", "x-1", "<p>", "good", "bad", {"concept_id": 3, "concept": "cats"})]
    write_pairs(tmp_path / "pairs.jsonl", records)
    assert read_pairs(tmp_path / "pairs.jsonl") == records
    (tmp_path / "broken.jsonl").write_text('{"split": "train"}\n')
    with pytest.raises(ValueError, match="broken.jsonl:1"):
        read_pairs(tmp_path / "broken.jsonl")


def test_render_prompt_uses_the_chat_template_with_generation_prompt(smol):
    _, tok = smol
    text = render_prompt(tok, "Is it good?", instruction="Answer Yes or No.")
    assert text.endswith("<|im_start|>user\nIs it good?\n\nAnswer Yes or No.<|im_end|>\n<|im_start|>assistant\n")


def test_render_prompt_with_a_system_turn(smol):
    _, tok = smol
    text = render_prompt(tok, "Would you take the job?", system="You are a helpful, honest and concise assistant.")
    assert text == (
        "<|im_start|>system\nYou are a helpful, honest and concise assistant.<|im_end|>\n"
        "<|im_start|>user\nWould you take the job?<|im_end|>\n<|im_start|>assistant\n"
    )
