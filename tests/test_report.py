"""steer.report on hand-made run directories: averaging, missing cells, formats, figures, no runs."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from synthetic_runs import VECTOR_GRID, WEIGHT_GRID, markdown_rows, write_config, write_fit, write_sweep

from steer.report.__main__ import main
from steer.report.figures import build_figure
from steer.report.r2 import build_table


def r2s(pref: float, util: float | None, test_shift: float = -0.1, transfer: float = -0.5) -> dict:
    """R² per (kind, which): train as given, test and transfer shifted; None stays None (undefined)."""
    out = {}
    for kind, value in (("pref", pref), ("util", util)):
        for which, shift in (("train", 0.0), ("test", test_shift), ("transfer", transfer)):
            out[kind, which] = None if value is None else value + shift
    return out


@pytest.fixture
def outputs(tmp_path):
    """Vector-diffmean on all four families (AxBench: three concepts), LoRA-SFT without PowerSeeking."""
    out = tmp_path / "outputs"

    def add(dataset, loader, form, objective, pref, util):
        run_dir = out / dataset / "smollm2-135m" / f"{form}-{objective}" / "layer15"
        write_config(run_dir, form=form, objective=objective, dataset=dataset, loader=loader)
        write_fit(run_dir, r2s(pref, util))

    add("psychopathy", "psychopathy", "vector", "diffmean", 0.90, 0.80)
    add("powerseeking", "powerseeking", "vector", "diffmean", 0.70, 0.60)
    for concept, value in enumerate((0.95, 0.85, 0.75)):
        add(f"axbench-c{concept}", "axbench", "vector", "diffmean", value, value - 0.1)
    add("sentiment", "sentiment", "vector", "diffmean", 0.99, 0.98)
    add("psychopathy", "psychopathy", "lora", "sft", 0.50, 0.40)
    add("axbench-c0", "axbench", "lora", "sft", 0.30, 0.20)
    add("sentiment", "sentiment", "lora", "sft", 0.10, None)  # util R² undefined (flat curve)
    return out


def test_table2_averages_families_and_shows_missing_cells(outputs):
    build_table("table2", outputs)
    csv = pd.read_csv(outputs / "reports" / "table2.csv")
    vector = csv[csv.form == "vector"].iloc[0]
    assert vector["pref_Axb"] == pytest.approx(np.mean([0.95, 0.85, 0.75]))
    assert vector["pref_Axb_n"] == 3
    assert vector["util_Axb"] == pytest.approx(np.mean([0.85, 0.75, 0.65]))
    # Avg is over families (Psy, Pwr, Axb, sentiment), not over runs
    assert vector["pref_Avg"] == pytest.approx(np.mean([0.90, 0.70, 0.85, 0.99]))
    lora = csv[csv.form == "lora"].iloc[0]
    assert np.isnan(lora["pref_Pwr"]) and lora["pref_Pwr_n"] == 0  # missing, not zero
    assert np.isnan(lora["pref_Avg"]) and np.isnan(lora["util_sentiment"])
    assert lora["pref_sentiment"] == pytest.approx(0.10)
    assert list(csv.columns[4:9]) == ["pref_Psy", "pref_Psy_n", "pref_Pwr", "pref_Pwr_n", "pref_Axb"]

    md = (outputs / "reports" / "table2.md").read_text()
    rows = markdown_rows(md)
    assert rows[0][4:10] == ["Pref Psy", "Pref Pwr", "Pref Axb", "Pref sentiment", "Pref Avg", "Util Psy"]
    assert rows[1][:9] == ["smollm2-135m", "15", "LoRA", "SFT", "0.500", "—", "0.300", "0.100", "—"]
    assert rows[2][:9] == [
        "smollm2-135m",
        "15",
        "Vector",
        "DiffMean",
        "0.900",
        "0.700",
        "0.850 (n=3)",
        "0.990",
        "0.860",
    ]
    assert "## Runs used (9)" in md and "axbench-c2/smollm2-135m/vector-diffmean/layer15" in md
    tex = (outputs / "reports" / "table2.tex").read_text()
    # the same cells as the Markdown, under spanning Pref/Util headers with booktabs rules
    assert "smollm2-135m & 15 & Vector & DiffMean & 0.900 & 0.700 & 0.850 (n=3) & 0.990 & 0.860 &" in tex
    assert "LoRA & SFT & 0.500 & --- & 0.300 &" in tex
    assert "\\multicolumn{4}{c}{} & \\multicolumn{5}{c}{Pref} & \\multicolumn{5}{c}{Util} & " in tex
    assert "\\multicolumn{5}{c}{Pref form} & \\multicolumn{5}{c}{Util form} \\\\" in tex
    assert "\\toprule" in tex and "\\bottomrule" in tex and "\\label{tab:table2}" in tex


def test_table5_and_table6_read_their_own_r2(outputs):
    build_table("table5", outputs)
    build_table("table6", outputs)
    test = pd.read_csv(outputs / "reports" / "table5.csv").set_index("form")
    transfer = pd.read_csv(outputs / "reports" / "table6.csv").set_index("form")
    assert test.loc["vector", "pref_Psy"] == pytest.approx(0.80)
    assert transfer.loc["vector", "pref_Psy"] == pytest.approx(0.40)
    assert transfer.loc["lora", "pref_sentiment"] == pytest.approx(-0.40)  # negative R² is shown as it is


def test_unfinished_and_broken_runs_are_listed_not_used(outputs):
    broken = outputs / "sentiment" / "smollm2-135m" / "vector-sft" / "layer15"
    broken.mkdir(parents=True)
    (broken / "fit.json").write_text("{}")  # no config.yaml
    unfinished = outputs / "sentiment" / "smollm2-135m" / "lora-split" / "layer15"
    unfinished.mkdir(parents=True)
    (unfinished / "sweep.parquet").write_bytes(b"")
    build_table("table2", outputs)
    md = (outputs / "reports" / "table2.md").read_text()
    assert "## Not used (2)" in md
    assert "vector-sft/layer15: " in md and "config.yaml is missing" in md
    assert "lora-split/layer15: not finished: sweep.parquet without fit.json" in md
    assert "## Runs used (9)" in md


@pytest.mark.parametrize("target", ["table2", "fig2"])
def test_no_runs_is_a_clear_message(tmp_path, capsys, target):
    assert main([target, "--outputs", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert "no finished runs under" in err and "fit.json" in err and "Traceback" not in err
    assert not (tmp_path / "nothing" / "reports").exists()


def test_figure_of_one_data_set(tmp_path, capsys):
    out = tmp_path / "outputs"
    combos = [("vector", "diffmean"), ("vector", "sft"), ("lora", "sft"), ("local_weight", "split")]
    for i, (form, objective) in enumerate(combos):
        for concept in (0, 1):
            run_dir = out / f"axbench-c{concept}" / "smollm2-135m" / f"{form}-{objective}" / "layer15"
            write_config(run_dir, form=form, objective=objective, dataset=f"axbench-c{concept}", loader="axbench")
            grid, scale = (VECTOR_GRID, 8.0) if form == "vector" else (WEIGHT_GRID, 0.8)
            write_sweep(run_dir, grid, scale, seed=10 * i + concept)
            write_fit(run_dir, r2s(0.9, 0.9))
    assert main(["fig2", "--outputs", str(out)]) == 2  # fig2 defaults to psychopathy: absent
    assert "--dataset" in capsys.readouterr().err
    no_sweep = out / "axbench-c2" / "smollm2-135m" / "vector-sft" / "layer15"
    write_config(no_sweep, form="vector", objective="sft", dataset="axbench-c2", loader="axbench")
    write_fit(no_sweep, r2s(0.9, 0.9))  # finished once, its sweep.parquet since deleted

    assert main(["fig5", "--outputs", str(out)]) == 0
    png = out / "reports" / "fig5-smollm2-135m-L15-axbench.png"
    assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")  # the vector twin, for papers
    image = imread(png)
    assert image.shape[0] > 600 and image.shape[1] > 600  # 3 rows (vector, lora, local_weight) × 2 columns
    data = pd.read_csv(out / "reports" / "fig5.csv")
    assert len(data) == 2 * len(VECTOR_GRID) + 2 * len(WEIGHT_GRID)  # one row per panel and m
    assert set(data.runs) == {2} and set(data.n_examples) == {12}  # two concepts pooled, 6 examples each
    assert data.pref_r2.min() > 0.99 and data.util_r2.min() > 0.99
    pooled = pd.concat(
        pd.read_parquet(out / f"axbench-c{c}/smollm2-135m/lora-sft/layer15/sweep.parquet") for c in (0, 1)
    )
    expected = pooled[pooled.split == "train"].groupby("m").pref_odds.mean()
    got = data[data.form == "lora"].set_index("m").pref_mean
    np.testing.assert_allclose(got.to_numpy(), expected.loc[got.index].to_numpy())
    md = (out / "reports" / "fig5.md").read_text()
    assert "![fig5-smollm2-135m-L15-axbench](fig5-smollm2-135m-L15-axbench.png)" in md
    assert "## Runs used (8)" in md
    assert "axbench-c2/smollm2-135m/vector-sft/layer15: sweep.parquet is missing" in md


def test_fit_json_from_the_stage_is_read(tmp_path):
    """The report reads the fit.json the stage writes (not only the hand-made ones)."""
    from steer.analysis.fit import fit_sweep

    run_dir = tmp_path / "outputs" / "sentiment" / "m" / "vector-diffmean" / "layer3"
    write_config(run_dir, model="m", layer=3)
    frame = write_sweep(run_dir, VECTOR_GRID, 8.0)
    summary = fit_sweep(frame, restarts=2).to_json()
    (run_dir / "fit.json").write_text(json.dumps(summary))
    build_table("table6", tmp_path / "outputs")
    csv = pd.read_csv(tmp_path / "outputs" / "reports" / "table6.csv")
    assert csv.loc[0, "util_sentiment"] == pytest.approx(summary["util"]["transfer"]["r2"], abs=1e-6)
    assert csv.loc[0, "layer"] == 3 and csv.loc[0, "model"] == "m"
    transfer = {k: v for k, v in summary["pref"]["transfer"]["alternatives"].items() if v is not None}
    assert csv.loc[0, "pref_form_alt R²"] == pytest.approx(max(transfer.values()), abs=1e-6)

    # Table 2's form columns are the train fit's form test, a fit on a bound is marked
    summary["util"]["train"]["at_bound"] = {"p_pos": "upper"}
    (run_dir / "fit.json").write_text(json.dumps(summary))
    build_table("table2", tmp_path / "outputs")
    csv = pd.read_csv(tmp_path / "outputs" / "reports" / "table2.csv")
    form = summary["pref"]["train"]["form"]
    assert csv.loc[0, "pref_form_CV R²"] == pytest.approx(form["paper"]["cv_r2"], abs=1e-6)
    assert csv.loc[0, "pref_form_ex R²"] == pytest.approx(form["paper"]["example_r2"], abs=1e-6)
    aicc = {k: v["aicc"] for k, v in form["alternatives"].items()}
    assert csv.loc[0, "pref_form_ΔAICc"] == pytest.approx(form["paper"]["aicc"] - min(aicc.values()), abs=1e-6)
    assert csv.loc[0, "pref_form_alt"] == min(aicc, key=aicc.get)
    assert csv.loc[0, "util_sentiment_mark"] == "†"
    md = (tmp_path / "outputs" / "reports" / "table2.md").read_text()
    assert "p_pos (upper)" in md and form["verdict"] in md


def test_a_single_run_panel_draws_the_fit_of_its_fit_stage(tmp_path):
    """One run per panel: the figure shows the fit.json fit (the one the tables score), not a refit."""
    from steer.analysis.fit import curve, fit_sweep

    out = tmp_path / "outputs"
    run_dir = out / "sentiment" / "smollm2-135m" / "vector-sft" / "layer15"
    write_config(run_dir, form="vector", objective="sft")
    summary = fit_sweep(write_sweep(run_dir, VECTOR_GRID, 8.0), restarts=2).to_json()
    stored = summary["pref"]["train"]
    stored["params"]["b"] += 1.0  # a refit of the curve would not land here
    stored["r2"] = 0.123
    (run_dir / "fit.json").write_text(json.dumps(summary))
    broken = out / "sentiment" / "smollm2-135m" / "lora-sft" / "layer15"
    write_config(broken, form="lora", objective="sft")
    write_sweep(broken, WEIGHT_GRID, 0.8)
    del summary["util"]["test"]["params"]
    (broken / "fit.json").write_text(json.dumps(summary))

    build_figure("fig2", out, ["sentiment"])
    data = pd.read_csv(out / "reports" / "fig2.csv")
    assert set(data.form) == {"vector"} and set(data.runs) == {1}
    np.testing.assert_allclose(data.pref_fit, curve("pref", data.m, stored["params"]))
    assert set(data.pref_r2) == {0.123}
    assert data.util_r2.to_numpy() == pytest.approx(summary["util"]["train"]["r2"])
    assert "lora-sft/layer15: " in (out / "reports" / "fig2.md").read_text()
    assert "util.test.params must name" in (out / "reports" / "fig2.md").read_text()
