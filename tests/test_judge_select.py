"""Choosing m (against a brute-force computation of the fitted curves), the answer cache, and
Table 3 from hand-written metrics.json files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from synthetic_runs import markdown_rows, write_config, write_fit

from steer.judge.cache import AnswerCache, answer_key
from steer.judge.select import by_fit, by_validation, fixed
from steer.report.table3 import build_table3

NEUTRAL = {"m_pos": 0.0, "m_neg": 0.0, "L_pos": 1.0, "L_neg": 1.0, "p_pos": 1.0, "p_neg": 1.0}


def rq(m, centre, L, p):
    return (1 + (m - centre) ** 2 / L) ** (-p)


def test_fit_choice_maximises_pref_within_the_utility_budget():
    # PrefOdds = (2m + 0) * D(m) with D = (1 + m²/16)^-1 peaks at m = 4 (value 4); utility
    # UtilOdds = 3 * (1 + m²/4)^-1 - 5 drops by 3·(1 - 1/(1 + m²/4)) from m = 0.
    pref = {"alpha": 2.0, "beta": 0.0, "b": 0.0, **NEUTRAL, "L_pos": 16.0, "L_neg": 16.0}
    util = {"beta": 3.0, "b": -5.0, **NEUTRAL, "L_pos": 4.0, "L_neg": 4.0}
    fit_json = {"pref": {"train": {"params": pref}}, "util": {"train": {"params": util}}}
    for drop in (10.0, 1.0, 0.1):
        choice = by_fit(fit_json, (-8, 8), drop)
        # brute force on a fine grid, from the formulas written out here
        m = np.linspace(-8, 8, 160001)
        p = 2 * m * rq(m, 0, 16, 1)
        u = 3 * rq(m, 0, 4, 1) - 5
        ok = u >= -2 - drop
        best = m[ok][np.argmax(p[ok])]
        assert choice.m == pytest.approx(best, abs=5e-3)
        assert choice.method == "fit" and "max_util_drop" in choice.reason
    assert by_fit(fit_json, (-8, 8), 10.0).m == pytest.approx(4.0, abs=5e-3)  # the unconstrained peak
    # utility budget 1: 3(1 - 1/(1 + m²/4)) <= 1  <=>  m <= sqrt(2)
    assert by_fit(fit_json, (-8, 8), 1.0).m == pytest.approx(np.sqrt(2), abs=5e-3)


def test_validation_choice_takes_the_best_and_the_smallest_m_on_ties():
    choice = by_validation({1.0: 0.5, 2.0: 0.9, 4.0: 0.9, 8.0: float("nan")}, "hm")
    assert choice.m == 2.0 and choice.method == "validation" and "0.900" in choice.reason
    with pytest.raises(ValueError, match="no candidate"):
        by_validation({1.0: None}, "hm")
    assert fixed(3).m == 3.0 and fixed(3).method == "fixed"


def test_cache_round_trip_and_key_covers_every_input(tmp_path):
    base = dict(model="m", messages=[{"role": "user", "content": "x"}], temperature=0.0, max_tokens=8)
    key = answer_key(**base, rubric_version="v1")
    variants = [
        answer_key(**{**base, "model": "m2"}, rubric_version="v1"),
        answer_key(**{**base, "messages": [{"role": "user", "content": "y"}]}, rubric_version="v1"),
        answer_key(**{**base, "temperature": 0.5}, rubric_version="v1"),
        answer_key(**{**base, "max_tokens": 9}, rubric_version="v1"),
        answer_key(**base, rubric_version="v2"),
        answer_key(**base, rubric_version="v1", top_logprobs=5),
    ]
    assert len({key, *variants}) == 7
    cache = AnswerCache(tmp_path)
    assert cache.get(key) is None
    cache.put(key, {"text": "Rating: [[2]]", "logprobs": None})
    cache.close()
    again = AnswerCache(tmp_path)  # another instance (another process would do the same) reads it
    assert again.get(key) == {"text": "Rating: [[2]]", "logprobs": None}
    assert (again.hits, again.misses, len(again)) == (1, 0, 1)
    again.close()


def write_run(root, name, loader, form, objective, vanilla, steered, select="fixed"):
    """A finished run (config.yaml, fit.json: what steer.report reads) with a judge section."""
    run = root / name
    write_config(run, form=form, objective=objective, dataset=name, loader=loader)
    write_fit(run, {})
    judge = {"m": 2.0, "select": select, "vanilla": vanilla, "steered": steered, "judge": {}, "usage": {}}
    (run / "metrics.json").write_text(json.dumps({"judge": judge}))


def test_table3_rows_columns_and_family_means(tmp_path):
    write_run(tmp_path, "psy", "psychopathy", "vector", "split", {"accuracy": 0.5}, {"accuracy": 0.9})
    write_run(
        tmp_path, "axb-c0", "axbench", "vector", "split", {"concept": 0.2, "hm": 0.1}, {"concept": 1.0, "hm": 0.6}
    )
    write_run(
        tmp_path, "axb-c1", "axbench", "vector", "split", {"concept": 0.4, "hm": 0.3}, {"concept": 2.0, "hm": 1.0}
    )
    write_run(tmp_path, "axb-lora", "axbench", "lora", "sft", {"concept": 0.3, "hm": None}, {"concept": 1.5, "hm": 0.5})
    # the same cell with m chosen by steer's fit: a row of its own, labelled
    write_run(tmp_path, "psy-fit", "psychopathy", "vector", "split", {"accuracy": 0.5}, {"accuracy": 0.7}, "fit")
    write_config(tmp_path / "half")  # finished, not judged
    write_fit(tmp_path / "half", {})
    md, csv, tex = build_table3(tmp_path)
    text = md.read_text()
    rows = markdown_rows(text)
    assert rows[0] == ["Model", "Layer", "Form", "Objective", "m chosen by", "Psy Acc", "Axb Concept", "Axb HM"]
    # Vanilla: the mean over the model's runs; vector/SPLIT: AxBench averaged over its 2 concepts
    assert ["smollm2-135m", "15", "Vanilla", "—", "m = 0", "0.500 (n=2)", "0.300 (n=3)", "0.200 (n=2)"] in rows
    assert ["smollm2-135m", "15", "Vector", "SPLIT", "fixed (m = 2)", "0.900", "1.500 (n=2)", "0.800 (n=2)"] in rows
    assert ["smollm2-135m", "15", "Vector", "SPLIT", "fit", "0.700", "—", "—"] in rows
    assert ["smollm2-135m", "15", "LoRA", "SFT", "fixed (m = 2)", "—", "1.500", "0.500"] in rows
    assert "half: metrics.json has no judge section" in text
    assert csv.read_text().splitlines()[0].startswith("model,layer,form,objective,m chosen by,psychopathy_accuracy")
    latex = tex.read_text()
    assert "\\toprule" in latex and "\\multicolumn{2}{c}{Axb}" in latex
    assert "smollm2-135m & 15 & Vector & SPLIT & fixed (m = 2) & 0.900 & 1.500 (n=2) & 0.800 (n=2) \\\\" in latex


def test_settings_follow_the_protocol_and_sampling_is_checked():
    """AxBench samples at temperature 1.0 by default; PowerSeeking is greedy with 200 new tokens;
    sampling at temperature 0 or top_p outside (0, 1] is refused naming the key."""
    from steer.judge.settings import parse_settings

    judge = {"backend": "local", "model": "embedded:smollm2-135m", "select": {"method": "fit", "max_util_drop": 1.0}}
    judge |= {"scoring": "parsed", "temperature": 0.0, "concurrency": 2, "max_retries": 1, "timeout": 5.0}
    judge["generation"] = {"batch_size": 4}
    axbench = parse_settings(judge, "axbench", [-2, 0, 2]).generation
    assert (axbench.do_sample, axbench.temperature, axbench.max_new_tokens) == (True, 1.0, 128)
    power = parse_settings(judge, "powerseeking", [-2, 0, 2]).generation
    assert (power.do_sample, power.max_new_tokens) == (False, 200)
    assert parse_settings(judge, "sentiment", [-2, 0, 2]).candidates == (2.0,)
    for generation, message in (
        ({"do_sample": True, "temperature": 0.0}, r"judge\.generation\.temperature must be > 0 when sampling"),
        ({"top_p": 1.5}, r"judge\.generation\.top_p must be in \(0, 1\]"),
    ):
        with pytest.raises(ValueError, match=message):
            parse_settings({**judge, "generation": {"batch_size": 4, **generation}}, "axbench", [2])


def write_examples(run, correct: list[bool], concept: list[float], fluency: list[float], m: float = 2.0) -> None:
    """pairs.jsonl, accuracy.parquet and judgments.parquet of a judged sentiment run: the same
    per-example results at m = 0 and at m (instruction always 2)."""
    import pandas as pd

    from steer.pairs import PairRecord, write_pairs

    ids = [f"t{i}" for i in range(len(correct))]
    write_pairs(run / "pairs.jsonl", [PairRecord("test", i, "p", "a", "b") for i in ids])
    accuracy = [
        {"split": "test", "example_id": i, "m": mm, "pref_odds": 1.0 if ok else -1.0} for mm in (0.0, m)
        for i, ok in zip(ids, correct, strict=True)
    ]  # fmt: skip
    pd.DataFrame(accuracy).to_parquet(run / "accuracy.parquet")
    rows = []
    for mm in (0.0, m):
        for i, c, f in zip(ids, concept, fluency, strict=True):
            for rubric, score in (("concept", c), ("instruction", 2.0), ("fluency", f)):
                rows.append({"example_id": i, "part": "report", "m": mm, "rubric": rubric, "score": score})
    pd.DataFrame(rows).to_parquet(run / "judgments.parquet")


def test_table3_bootstrap_intervals_over_test_examples(tmp_path):
    """Accuracy of 8 pairs, 4 right: a resampled accuracy is Binomial(8, 1/2) / 8, whose 2.5 and 97.5
    percentiles are 1/8 and 7/8. A metric equal on every example has a zero-width interval. The
    per-example rows reproduce the metrics of metrics.json (hand-computed here)."""
    from steer.report.table3 import find_judged, run_examples

    correct = [True, False] * 4
    concept = [2.0, 1.0, 0.0, 2.0, 2.0, 1.0, 2.0, float("nan")]  # the last reply unparseable
    fluency = [2.0] * 8
    # HM per example of (concept, 2, 2): 2, 1.5, 0, 2, 2, 1.5, 2, missing -> mean 11/7
    hand = {"accuracy": 0.5, "concept": 10 / 7, "hm": 11 / 7}
    write_run(tmp_path, "sentiment", "sentiment", "vector", "split", hand, hand)
    run = tmp_path / "sentiment"
    metrics = json.loads((run / "metrics.json").read_text())
    metrics["judge"]["protocol"] = {"rubrics": {"concept": "v1", "instruction": "v1", "fluency": "v1"}}
    for condition in ("vanilla", "steered"):
        metrics["judge"][condition]["m"] = 0.0 if condition == "vanilla" else 2.0
    (run / "metrics.json").write_text(json.dumps(metrics))
    write_examples(run, correct, concept, fluency)

    (judged,), _ = find_judged(tmp_path)
    examples = run_examples(judged)
    for condition, frame in examples.items():
        assert list(frame.index) == [f"t{i}" for i in range(8)]
        for metric, value in hand.items():
            assert np.nanmean(frame[metric]) == pytest.approx(value), (condition, metric)

    md, csv, tex = build_table3(tmp_path, bootstrap=4000, seed=1)
    text = md.read_text()
    steered = [row for row in markdown_rows(text) if row[2:4] == ["Vector", "SPLIT"]]
    assert steered[0][4:6] == ["fixed (m = 2)", "0.500 [0.125, 0.875]"]
    # the LaTeX carries the same cells, intervals included
    assert "& Vector & SPLIT & fixed (m = 2) & 0.500 [0.125, 0.875] & " in tex.read_text()
    assert "4000 replicates per run (seed 1), 1 of 1 runs with per-example files" in text
    first = csv.read_text()
    row = [line for line in first.splitlines() if ",vector," in line][0].split(",")
    header = first.splitlines()[0].split(",")
    values = dict(zip(header, row, strict=True))
    assert float(values["sentiment_accuracy_lo"]) == 0.125 and float(values["sentiment_accuracy_hi"]) == 0.875
    assert float(values["sentiment_concept_lo"]) < 10 / 7 < float(values["sentiment_concept_hi"]) <= 2.0
    # same seed, same intervals; another seed, other (concept) intervals
    assert markdown_rows(build_table3(tmp_path, bootstrap=4000, seed=1)[0].read_text()) == markdown_rows(text)
    other = build_table3(tmp_path, bootstrap=50, seed=2)[1].read_text()
    assert other != first
    # without the per-example files the values stay and the interval goes
    (run / "judgments.parquet").unlink()
    plain = build_table3(tmp_path, bootstrap=100)[0].read_text()
    assert ["Vector", "SPLIT", "fixed (m = 2)", "0.500", "1.429", "1.571"] in [row[2:] for row in markdown_rows(plain)]
    assert "0 of 1 runs" in plain


def test_judge_tuning_and_front_give_one_best_m_on_a_utility_trough():
    """A fitted utility that dips below the budget at m ≈ 2 and recovers by m = 4 (an inverted fit,
    β_u < 0, as fits made before the bound had): pref rises all the way to m = 4. The old judge
    rule (best anywhere with utility in budget) took m = 4, beyond the trough; the front's walk from
    m = 0 stops at the trough. One function (front.best_fitted) now answers for the judge too."""
    from steer.analysis.front import best_fitted, front_value

    pref = {"alpha": 1.0, "beta": 0.0, "b": 0.0, **NEUTRAL, "p_pos": 0.0, "p_neg": 0.0}  # PrefOdds = m
    util = {"beta": -3.0, "b": 0.0, **NEUTRAL, "m_pos": 2.0, "m_neg": -2.0, "L_pos": 0.25, "L_neg": 0.25}
    fit_json = {"pref": {"train": {"params": pref}}, "util": {"train": {"params": util}}}
    drop = 1.0
    # by hand: U(m) = -3 (1 + 4 (m - 2)²)^-1, U(0) = -3/17; U ≥ U(0) - 1 until (1 + 4 (m - 2)²) = 3 / (1 + 3/17)
    u0 = -3 / 17
    edge = 2 - np.sqrt((3 / (1 - u0) - 1) / 4)
    judge = by_fit(fit_json, (-4, 4), drop)
    front = best_fitted(pref, util, -4.0, 4.0, drop)
    assert judge.m == front.m == pytest.approx(edge, abs=2e-3)
    assert judge.m < 2.0  # not the m = 4 beyond the trough
    # tuning's front value on a split reads the same function
    import pandas as pd

    m = np.linspace(-4, 4, 9)
    rows = pd.DataFrame({"split": "train", "example_id": "a", "m": m, "pref_odds": m, "util_odds": 0.0})
    assert front_value(rows, fit_json, "train", drop).m == pytest.approx(edge, abs=2e-3)


def write_yes_no_run(root, name, form, objective, grid, pref, judged=None, fitted=True):
    """A Psychopathy run with 8 test pairs (4 Yes-positive, then 4 No-positive) whose sweep has
    PrefOdds ``pref[m]`` (8 values) at each m of ``grid``; ``judged``: the same for the judge
    stage's accuracy.parquet; ``fitted``: whether it has a fit.json."""
    import pandas as pd

    from steer.pairs import PairRecord, write_pairs

    run = root / name
    write_config(run, form=form, objective=objective, dataset="psychopathy", loader="psychopathy")
    if fitted:
        write_fit(run, {})
    ids = [f"t{i}" for i in range(8)]
    answers = [("Yes", "No")] * 4 + [("No", "Yes")] * 4
    write_pairs(run / "pairs.jsonl", [PairRecord("test", i, "p", a, b) for i, (a, b) in zip(ids, answers, strict=True)])

    def frame(values: dict) -> pd.DataFrame:
        return pd.DataFrame(
            [
                {
                    "split": "test",
                    "example_id": i,
                    "m": m,
                    "loss_pos": 0.0,
                    "loss_neg": 0.0,
                    "pref_odds": p,
                    "util_odds": 0.0,
                }
                for m, row in values.items()
                for i, p in zip(ids, row, strict=True)
            ]
        )

    frame({m: pref[m] for m in grid}).to_parquet(run / "sweep.parquet")
    if judged is not None:
        frame(judged).to_parquet(run / "accuracy.parquet")


def test_table3_at_m1_accuracy_and_balanced_accuracy_without_a_judge(tmp_path):
    """At m = 0 every pair prefers "Yes": accuracy 0.5 (the label balance), balanced 0.5 with no
    spread (each class is all right or all wrong in every draw). At m = 1: 3 of 4 Yes-positive and
    4 of 4 No-positive right: accuracy 7/8, balanced (3/4 + 1)/2. The vector run was swept at
    three m and never fitted (too few m for the fit): the table reads its sweep all the same."""
    yes_prior = [1.0] * 4 + [-1.0] * 4
    steered = [1.0, 1.0, 1.0, -1.0] + [1.0] * 4
    write_yes_no_run(
        tmp_path,
        "vec",
        "vector",
        "split",
        [-1.0, 0.0, 1.0],
        {-1.0: yes_prior, 0.0: yes_prior, 1.0: steered},
        fitted=False,
    )
    # a LoRA whose grid lacks 1: its m = 1 comes from the judge stage's scoring
    write_yes_no_run(
        tmp_path,
        "lora",
        "lora",
        "sft",
        [0.0, 2.0],
        {0.0: yes_prior, 2.0: steered},
        judged={0.0: yes_prior, 1.0: yes_prior},
    )
    write_yes_no_run(tmp_path, "lw", "local_weight", "sft", [0.0, 2.0], {0.0: yes_prior, 2.0: steered})
    md, csv, tex = build_table3(tmp_path, bootstrap=2000, seed=0)
    assert md.name == "table3_m1.md"  # no judged run: only the m = 1 table
    rows = markdown_rows(md.read_text())
    assert rows[0][:6] == ["Data set", "Model", "Layer", "Form", "Objective", "m"]
    vanilla = next(r for r in rows if r[3] == "Vanilla")
    vector = next(r for r in rows if r[3] == "Vector")
    lora = next(r for r in rows if r[3] == "LoRA")
    assert vanilla[8].startswith("0.500 [") and vanilla[9] == "0.500 [0.500, 0.500]"
    assert vector[5] == "1" and vanilla[5] == "0" and vector[6] == "8"
    assert vector[8].startswith("0.875 [") and vector[9].startswith("0.875 [")
    lo, hi = (float(x) for x in vector[8].split("[")[1].rstrip("]").split(","))
    assert lo < 0.875 < hi or hi == 1.0
    assert lora[7] == "judge scoring" and lora[8].startswith("0.500") and vector[7] == "sweep"
    text = md.read_text()
    assert "lw: no test PrefOdds at m = 1" in text and "LocalWeight" not in text
