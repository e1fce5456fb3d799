"""The built package carries its Hydra config: a non-editable install composes and runs from any folder."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.mark.slow  # builds a wheel and runs the train stage from it: a minute or more on a busy CPU
def test_the_wheel_ships_steer_conf_and_steer_run_works_from_another_folder(tmp_path):
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(REPO)]
    subprocess.run(build, check=True, capture_output=True, text=True, cwd=tmp_path)
    wheel = next(wheels.glob("steer-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {"steer/conf/config.yaml", "steer/conf/model/smollm2-135m.yaml", "steer/conf/experiment/smoke.yaml"} <= names
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, text=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "disabled"}
    where = subprocess.run([sys.executable, "-c", "import steer; print(steer.__file__)"], cwd=elsewhere, env=env,
                           capture_output=True, text=True, check=True)  # fmt: skip
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the installed copy, not the checkout
    command = [sys.executable, "-m", "steer", "run", "dataset.limit=2", "stages=[train]", "objective=diffmean"]
    done = subprocess.run(command, cwd=elsewhere, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (elsewhere / "outputs" / "sentiment" / "smollm2-135m" / "vector-diffmean").is_dir()
    assert list((elsewhere / "outputs").rglob("intervention.safetensors"))
