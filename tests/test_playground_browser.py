"""The playground in a real browser: headless Chromium (Debian's chromium and chromium-driver,
driven by selenium) on a real ``python -m steer.serve`` over a run that ``run.py`` trained, swept
and fitted. With the keyboard alone the test moves the m slider and runs the prompt; the streamed
columns must equal the API's own greedy answers at -m, 0 and +m, and again after the slider moves
once more (the page re-runs by itself); the curves carry the marker at that m, on the fitted
curve from fit.json, and it is on screen in the marker's colour; the page's Python code, run,
prints the same answers; server errors show as their own text; two runs send the composed form.

``STEER_SCREENSHOT_DIR=docs/img`` also writes the screenshot docs/serving.md shows
(``playground.png``); otherwise it goes to the test's temporary folder."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import openai
import pytest

from steer import rundir
from steer.analysis.fit import curve
from tests.conftest import REPO
from tests.test_serve import diffmean_run, serving

webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402

GRID = "[-8,-4,-2,-1,0,1,2,4,8]"
PROMPT = "Describe your weekend in one sentence."
TOKENS = 24
MARKER_RGB = (0xCF, 0x22, 0x2E)  # style.css --marker
# Minutes on a loaded CPU: run.py trains, sweeps and fits a run, then a server answers the browser.
pytestmark = pytest.mark.slow


def browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip(
            "the browser test needs Chromium and chromedriver on PATH "
            f"(chromium: {chromium}, chromedriver: {driver}): apt-get install chromium chromium-driver"
        )
    return chromium, driver


@pytest.fixture(scope="module")
def runs(smol, tmp_path_factory) -> dict[str, Path]:
    """pos15: trained, swept and fitted by run.py; pos10: a DiffMean vector with no sweep."""
    root = tmp_path_factory.mktemp("playground")
    out = root / "pos15"
    command = [sys.executable, "run.py", "objective=diffmean", "dataset.limit=8", f"sweep.grid={GRID}",
               "fit.restarts=4", f"hydra.run.dir={out}", "tracking.wandb=false", "progress=false"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (out / rundir.FIT).is_file() and (out / rundir.SWEEP).is_file()
    model, tok = smol
    return {"pos15": out, "pos10": diffmean_run(model, tok, root / "pos10", 10)}


@pytest.fixture(scope="module")
def server(runs):
    with serving([runs["pos15"], runs["pos10"]], "--max-batch", "8") as (url, _):
        yield url


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def browser(server):
    chromium, driver_path = browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1440,1200", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(arg)
    driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    yield driver
    driver.quit()


def wait_for(browser, script: str, timeout: float = 300.0):
    """The value of ``script`` once it is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = browser.execute_script(script)
        if value:
            return value
        assert time.monotonic() < deadline, f"still false after {timeout} s: {script}"
        time.sleep(0.25)


def open_page(browser, server: str) -> None:
    browser.get(server.removesuffix("/v1") + "/")
    wait_for(browser, "return document.body.dataset.ready === 'true'", 60)


def finished_columns(browser, ms: list) -> list[dict]:
    """The columns once they show ``ms`` and none is still running: m, state and text."""
    script = """
        const columns = [...document.querySelectorAll('.column')].map(c => ({
            m: JSON.parse(c.dataset.m), state: c.dataset.state, text: c.querySelector('.text').textContent}));
        const ready = JSON.stringify(columns.map(c => c.m)) === JSON.stringify(JSON.parse(arguments[0]))
            && columns.every(c => c.state !== 'running');
        return ready ? columns : null;"""
    deadline = time.monotonic() + 300
    while True:
        columns = browser.execute_script(script, json.dumps(ms))
        if columns:
            return columns
        assert time.monotonic() < deadline, browser.execute_script("return document.body.innerText")
        time.sleep(0.25)


def answer(client, model: str, m=None) -> str:
    reply = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": PROMPT}], max_tokens=TOKENS, temperature=0, seed=0,
        extra_body=None if m is None else {"m": m},
    )  # fmt: skip
    return reply.choices[0].message.content


def set_field(browser, element_id: str, text: str) -> None:
    field = browser.find_element(By.ID, element_id)
    field.send_keys(Keys.CONTROL, "a")
    field.send_keys(text)


def test_the_curves_endpoint_answers_in_the_apis_error_format(server, runs):
    base = server.removesuffix("/v1")
    missing = httpx.get(f"{base}/playground/curves", params={"run": "nope"})
    assert missing.status_code == 404
    assert missing.json()["error"] == {
        "message": "no run named 'nope' is served; served: pos15, pos10",
        "type": "not_found_error",
        "param": None,
        "code": None,
    }
    bad = httpx.get(f"{base}/playground/curves", params={"run": "pos15", "delta": "-2"})
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    assert not httpx.get(f"{base}/playground/curves", params={"run": "pos10"}).json()["available"]
    fitted = httpx.get(f"{base}/playground/curves", params={"run": "pos15"}).json()
    assert fitted["available"] and fitted["fitted"] is not None and fitted["m_range"] == [-8.0, 8.0]


def test_keyboard_slider_streams_the_apis_answers_and_marks_the_curve(browser, server, client, runs, tmp_path):
    open_page(browser, server)
    # keyboard alone: the focus order runs through the pickers, the slider, the prompt, the options, Run
    order = []
    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.TAB)
    for _ in range(11):
        order.append(browser.execute_script("return document.activeElement.id"))
        browser.switch_to.active_element.send_keys(Keys.TAB)
    expected = ["run-0", "run-1", "m-0", "m-0-number", "prompt", "max-tokens", "temperature", "seed", "live", "run"]
    assert order[:10] == expected
    slider = browser.find_element(By.ID, "m-0")
    assert slider.get_attribute("value") == "2" and slider.get_attribute("step") == "0.1"  # a quarter of [-8, 8]
    for _ in range(5):
        slider.send_keys(Keys.ARROW_RIGHT)
    assert browser.find_element(By.CSS_SELECTOR, ".m-number").get_attribute("value") == "2.5"
    set_field(browser, "max-tokens", str(TOKENS))
    set_field(browser, "prompt", PROMPT)
    browser.find_element(By.ID, "prompt").send_keys(Keys.ENTER)  # Enter runs

    columns = finished_columns(browser, [-2.5, 0, 2.5])
    expected = [answer(client, "pos15", -2.5), answer(client, "smollm2-135m"), answer(client, "pos15", 2.5)]
    assert [c["text"] for c in columns] == expected
    assert [c["state"] for c in columns] == ["done"] * 3
    assert len(set(expected)) == 3  # the run really steers at this m, both ways
    assert_marker(browser, runs["pos15"], 2.5)

    # the page's Python code, run as it stands, prints what the columns show
    code = browser.find_element(By.ID, "code").get_attribute("textContent")
    printed = []
    exec(code, {"print": lambda *args: printed.append(args)})
    assert printed == [(f"m = {m}:", c["text"]) for m, c in zip((-2.5, 0, 2.5), columns, strict=True)]

    # the slider moves again: the page re-runs by itself (the base column is kept)
    for _ in range(5):
        slider.send_keys(Keys.ARROW_LEFT)
    columns = finished_columns(browser, [-2, 0, 2])
    assert [c["text"] for c in columns] == [answer(client, "pos15", -2), expected[1], answer(client, "pos15", 2)]
    assert_marker(browser, runs["pos15"], 2.0)
    screenshot(browser, tmp_path)


def assert_marker(browser, run_dir: Path, m: float) -> None:
    """Both panels mark m on the fitted test curve of fit.json, at the pixel the axes map it to,
    and the marker's colour is on screen there."""
    fit = rundir.read_fit(run_dir)
    for kind in ("pref", "util"):
        svg = browser.find_element(By.CSS_SELECTOR, f'svg.chart-{kind}[data-run="pos15"]')
        data = browser.execute_script("return {...arguments[0].dataset}", svg)
        marker = svg.find_element(By.CSS_SELECTOR, "circle.marker")
        assert float(marker.get_attribute("data-m")) == m
        y = float(marker.get_attribute("data-y"))
        ms = np.linspace(-8, 8, 1601)
        ys = curve(kind, ms, fit[kind]["test"]["params"])
        assert abs(y - float(curve(kind, m, fit[kind]["test"]["params"]))) < 2e-3 * np.ptp(ys)
        x_left, x_right, y_top, y_bottom = (float(data[k]) for k in ("xLeft", "xRight", "yTop", "yBottom"))
        m_min, m_max, y_min, y_max = (float(data[k]) for k in ("mMin", "mMax", "yMin", "yMax"))
        cx = x_left + (m - m_min) / (m_max - m_min) * (x_right - x_left)
        cy = y_bottom - (y - y_min) / (y_max - y_min) * (y_bottom - y_top)
        assert float(marker.get_attribute("cx")) == pytest.approx(cx, abs=1e-6)
        assert float(marker.get_attribute("cy")) == pytest.approx(cy, abs=1e-6)
        assert len(svg.find_element(By.CSS_SELECTOR, "path.fit").get_attribute("d").split("L")) >= 401
        assert len(svg.find_elements(By.CSS_SELECTOR, "circle.swept")) == 9
        assert svg.find_elements(By.CSS_SELECTOR, "rect.budget")
        assert marker_on_screen(svg, cx, cy), f"no marker pixels at ({cx:.1f}, {cy:.1f}) of the {kind} panel"


def marker_on_screen(svg, cx: float, cy: float) -> bool:
    """Whether the rendered panel shows the marker's dot at (cx, cy) (viewBox units): nearly all of
    the 5 x 5 pixels around it in the marker's colour (the dashed line through m alone fills under
    a quarter of them)."""
    from PIL import Image

    image = Image.open(io.BytesIO(svg.screenshot_as_png)).convert("RGB")
    scale = image.width / 440  # the panels' viewBox is 440 wide
    x, y = round(cx * scale), round(cy * scale)
    pixels = np.asarray(image, dtype=int)[y - 2 : y + 3, x - 2 : x + 3]
    return pixels.shape[:2] == (5, 5) and float(np.all(np.abs(pixels - MARKER_RGB) < 40, axis=-1).mean()) > 0.8


def screenshot(browser, tmp_path: Path) -> Path:
    """The whole page as one PNG (Chromium's capture beyond the window): in STEER_SCREENSHOT_DIR
    when set (docs/img for the docs), else in the test's folder."""
    width, height = browser.execute_script(
        "return [document.documentElement.clientWidth, Math.ceil(document.body.getBoundingClientRect().height)]"
    )
    clip = {"x": 0, "y": 0, "width": width, "height": height, "scale": 1}
    options = {"format": "png", "captureBeyondViewport": True, "clip": clip}
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", options)
    folder = Path(os.environ.get("STEER_SCREENSHOT_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "playground.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    from PIL import Image

    assert Image.open(path).size == (width, height) and height > 800  # the whole page, not the window's top
    return path


def test_server_errors_show_as_their_own_text(browser, server, client):
    open_page(browser, server)
    set_field(browser, "max-tokens", "100000")
    set_field(browser, "prompt", PROMPT)
    browser.find_element(By.ID, "run").send_keys(Keys.ENTER)  # the Run button, from the keyboard
    columns = finished_columns(browser, [-2, 0, 2])
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(
            model="pos15", messages=[{"role": "user", "content": PROMPT}], max_tokens=100000, extra_body={"m": 2}
        )
    message = refused.value.body["message"]
    assert "maximum context length" in message
    assert [c["state"] for c in columns] == ["error"] * 3
    assert all(c["text"] == f"HTTP 400: {message}" for c in columns)
    assert browser.find_elements(By.CSS_SELECTOR, ".column [role=alert]")


def test_two_runs_send_the_composed_form(browser, server):
    """With pos10 picked too, each column sends {"pos15": ±m₁, "pos10": ±m₂}: the column shows what
    the API answers to that body (the text, or the server's reason when it cannot compose)."""
    open_page(browser, server)
    set_field(browser, "max-tokens", str(TOKENS))
    set_field(browser, "prompt", PROMPT)
    browser.find_element(By.ID, "run-1").send_keys(Keys.SPACE)
    second = wait_for(browser, "return document.getElementById('m-1')", 30)
    assert second.get_attribute("step") == "0.05"  # pos10 has no sweep: the default range [-4, 4]
    for _ in range(20):
        second.send_keys(Keys.ARROW_RIGHT)
    browser.find_element(By.ID, "run").click()
    minus, plus = {"pos15": -2, "pos10": -1}, {"pos15": 2, "pos10": 1}
    columns = finished_columns(browser, [minus, 0, plus])
    figure = browser.find_element(By.CSS_SELECTOR, 'figure[data-run="pos10"]').text
    assert "No curves: sweep.parquet is missing" in figure
    code = browser.find_element(By.ID, "code").get_attribute("textContent")
    assert 'for m in ({"pos15": -2, "pos10": -1}, {"pos15": 0, "pos10": 0}, {"pos15": 2, "pos10": 1}):' in code
    for m, column in ((minus, columns[0]), (plus, columns[2])):
        body = {"model": "pos15", "messages": [{"role": "user", "content": PROMPT}], "m": m, "max_tokens": TOKENS}
        reply = httpx.post(f"{server}/chat/completions", json={**body, "temperature": 0, "seed": 0}, timeout=300)
        if reply.status_code == 200:
            assert column["state"] == "done" and column["text"] == reply.json()["choices"][0]["message"]["content"]
        else:
            assert column["state"] == "error"
            assert column["text"] == f"HTTP {reply.status_code}: {reply.json()['error']['message']}"
