"""The playground's server side, without a browser: ``/playground/curves`` returns a run's swept
means, its fitted curves and the utility-budget region, each checked against an independent
computation; runs without a sweep or a fit say why; bad queries get their status; the page and its
assets are served and ship in the wheel; the module loads no torch. The page itself is driven in a
real browser by tests/test_playground_browser.py."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from steer import rundir
from steer.analysis.fit import fit_sweep
from steer.analysis.front import budget_span
from steer.serve.playground import STATIC, playground_router
from steer.serve.runs import RunInfo
from tests.conftest import REPO
from tests.synthetic_runs import VECTOR_GRID, write_config, write_sweep


def run_info(name: str, run_dir: Path) -> RunInfo:
    return RunInfo(name, run_dir, "vector", "diffmean", 15, "sentiment", "smollm2-135m", "embedded", "fp32")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A swept and fitted run, a swept run without fit.json, a trained run without a sweep (its
    config names a grid) and a run whose fit.json lost its parameters."""
    root = tmp_path_factory.mktemp("playground-runs")
    fitted, swept, bare, broken = (root / n for n in ("fitted", "swept", "bare", "broken"))
    for run_dir in (fitted, swept, bare, broken):
        write_config(run_dir)
    frame = write_sweep(fitted, VECTOR_GRID, scale=6.0)
    rundir.write_fit(fitted, fit_sweep(frame, restarts=2).to_json())
    write_sweep(swept, VECTOR_GRID, scale=6.0)
    write_sweep(broken, VECTOR_GRID, scale=6.0)
    (broken / rundir.FIT).write_text(json.dumps({"pref": {"test": {"r2": 0.5}}, "util": {}}))
    config = rundir.read_config(bare)
    rundir.write_config(bare, {**config, "sweep": {"grid": [-6, -1, 0, 1, 3]}})
    return {"fitted": fitted, "swept": swept, "bare": bare, "broken": broken}


@pytest.fixture(scope="module")
def client(runs) -> TestClient:
    app = FastAPI()
    app.include_router(playground_router([run_info(name, path) for name, path in runs.items()]))
    return TestClient(app)


def decay_by_hand(m: np.ndarray, p: dict) -> np.ndarray:
    """The paper's validity decay written out again, branch by branch."""
    out = np.empty_like(m)
    for i, x in enumerate(m):
        side = "pos" if x >= 0 else "neg"
        out[i] = (1.0 + (x - p[f"m_{side}"]) ** 2 / p[f"L_{side}"]) ** (-p[f"p_{side}"])
    return out


def region_by_hand(m: np.ndarray, util: np.ndarray, delta: float) -> tuple[float, float]:
    """The connected stretch around m = 0 where util >= util(0) - delta, from the failing points:
    it ends just inside the nearest failure on each side."""
    z = int(np.flatnonzero(m == 0)[0])
    bad = np.flatnonzero(util < util[z] - delta)
    lo = max([b + 1 for b in bad if b < z], default=0)
    hi = min([b - 1 for b in bad if b > z], default=len(m) - 1)
    return float(m[lo]), float(m[hi])


def test_curves_are_the_runs_means_its_fits_and_the_budget_region(client, runs):
    reply = client.get("/playground/curves", params={"run": "fitted", "delta": 2})
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["available"] and data["split"] == "test" and data["splits"] == ["train", "test"]
    assert data["m_range"] == [min(VECTOR_GRID), max(VECTOR_GRID)]
    frame = pd.read_parquet(runs["fitted"] / rundir.SWEEP)
    test = frame[frame["split"] == "test"]
    for kind, column in (("pref", "pref_odds"), ("util", "util_odds")):
        means = test.groupby("m")[column].mean()
        assert data["swept"][kind]["m"] == [float(m) for m in sorted(VECTOR_GRID)]
        np.testing.assert_allclose(data["swept"][kind]["mean"], means.to_numpy(), rtol=1e-12)
        assert data["swept"][kind]["n"] == [6.0] * len(VECTOR_GRID)
    fit = json.loads((runs["fitted"] / rundir.FIT).read_text())
    pref, util = fit["pref"]["test"]["params"], fit["util"]["test"]["params"]
    m = np.asarray(data["fitted"]["pref"]["m"])
    assert m[0] == min(VECTOR_GRID) and m[-1] == max(VECTOR_GRID) and 0.0 in m and len(m) >= 401
    np.testing.assert_allclose(
        data["fitted"]["pref"]["y"], (pref["alpha"] * m + pref["beta"]) * decay_by_hand(m, pref) + pref["b"], rtol=1e-9
    )
    util_y = util["beta"] * decay_by_hand(m, util) + util["b"]
    np.testing.assert_allclose(data["fitted"]["util"]["y"], util_y, rtol=1e-9)
    assert data["fitted"]["util"]["r2"] == fit["util"]["test"]["r2"]
    budget = data["budget"]
    assert budget["source"] == "fitted" and budget["delta"] == 2.0
    assert (budget["m_low"], budget["m_high"]) == region_by_hand(m, util_y, 2.0)
    assert min(VECTOR_GRID) < budget["m_low"] < 0 < budget["m_high"] < max(VECTOR_GRID)  # the budget binds here
    wider = client.get("/playground/curves", params={"run": "fitted", "delta": 20}).json()["budget"]
    assert wider["m_low"] <= budget["m_low"] and wider["m_high"] >= budget["m_high"]
    train = client.get("/playground/curves", params={"run": "fitted", "split": "train"}).json()
    means = frame[frame["split"] == "train"].groupby("m")["pref_odds"].mean().to_numpy()
    np.testing.assert_allclose(train["swept"]["pref"]["mean"], means, rtol=1e-12)
    assert train["budget"]["delta"] == 1.0  # the default δ: the judge stage's max_util_drop


def test_a_run_without_fit_or_sweep_says_why(client, runs):
    swept = client.get("/playground/curves", params={"run": "swept"}).json()
    assert swept["fitted"] is None and "fit.json is missing" in swept["reason"]
    means = swept["swept"]["util"]
    assert swept["budget"]["source"] == "swept"
    expected = region_by_hand(np.asarray(means["m"]), np.asarray(means["mean"]), 1.0)
    assert (swept["budget"]["m_low"], swept["budget"]["m_high"]) == expected
    bare = client.get("/playground/curves", params={"run": "bare"}).json()
    assert bare == {
        "available": False,
        "reason": "sweep.parquet is missing: run the sweep and fit stages for this run's curves",
        "m_range": [-6.0, 3.0],
    }


@pytest.mark.parametrize(
    ("params", "status", "message"),
    [
        ({"run": "nope"}, 404, "no run named 'nope' is served; served: fitted, swept, bare, broken"),
        ({}, 404, "no run named None"),
        ({"run": "fitted", "delta": "abc"}, 400, "delta must be a number, got 'abc'"),
        ({"run": "fitted", "delta": "-1"}, 400, "delta must be a finite number >= 0, got '-1'"),
        ({"run": "fitted", "delta": "nan"}, 400, "delta must be a finite number >= 0"),
        ({"run": "fitted", "split": "validation"}, 400, "split 'validation' is not in"),
        ({"run": "broken"}, 500, "fit.json: lacks the test fit's parameters"),
    ],
)
def test_bad_queries_get_their_status_and_a_message(client, params, status, message):
    reply = client.get("/playground/curves", params=params)
    assert reply.status_code == status
    assert message in reply.json()["detail"]


def test_the_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/playground/app.js"' in page.text and 'href="/playground/style.css"' in page.text
    script = client.get("/playground/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    assert script.text == (STATIC / "app.js").read_text()
    assert client.get("/playground/style.css").headers["content-type"].startswith("text/css")
    missing = client.get("/playground/secrets.txt")
    assert missing.status_code == 404 and "app.js, style.css" in missing.json()["detail"]
    assert client.get("/playground/..%2F__init__.py").status_code == 404


def test_the_page_names_no_other_host():
    """No CDN: every URL the page loads is the server's own (a path starting with /)."""
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text, name
        assert "@import" not in text and "//cdn" not in text


def test_the_budget_span_is_the_connected_region_around_zero():
    rng = np.random.default_rng(0)
    for _ in range(200):
        n = int(rng.integers(3, 30))
        m = np.sort(np.union1d(rng.normal(0, 5, n), [0.0]))
        util = rng.normal(0, 1, len(m))
        delta = float(rng.uniform(0, 2))
        lo, hi = budget_span(m, util, delta)
        assert (float(m[lo]), float(m[hi])) == region_by_hand(m, util, delta)
    with pytest.raises(ValueError, match="contain 0"):
        budget_span(np.array([-1.0, 1.0]), np.array([0.0, 0.0]), 1.0)
    with pytest.raises(ValueError, match="delta must be >= 0"):
        budget_span(np.array([-1.0, 0.0]), np.array([0.0, 0.0]), -1.0)


def test_the_module_loads_no_torch():
    code = "import sys, steer.serve.playground; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_the_wheel_ships_the_page(tmp_path):
    """The page's files are package data: a wheel built from the tree holds each of them."""
    pytest.importorskip("setuptools", reason="building the wheel needs setuptools in the environment")
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source)
    for folder in ("steer", "hydra_plugins"):
        shutil.copytree(REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source)]
    subprocess.run([*command, "-w", str(tmp_path / "wheel")], check=True, capture_output=True, timeout=300)
    [wheel] = (tmp_path / "wheel").glob("steer-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    static = sorted(p.name for p in STATIC.iterdir() if p.suffix in (".html", ".js", ".css"))
    assert static == ["app.js", "index.html", "style.css"]
    assert {f"steer/serve/playground/{name}" for name in static} <= names
