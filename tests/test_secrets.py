"""Secret names are scrubbed, ordinary keys are kept, secret values never reach text or logs."""

from __future__ import annotations

import logging

import pytest

from steer.io.secrets import MASK, RedactingFilter, is_secret_name, redact, redact_argv, scrub, secret_values

SECRET_NAMES = [
    "api_key",
    "apikey",
    "apiKey",
    "API-KEY",
    "WANDB_API_KEY",
    "OPENAI_API_KEY",
    "judge.api_key",
    "hf_token",
    "HF_TOKEN",
    "hfToken",
    "auth_token",
    "access_token",
    "token",
    "GITHUB_TOKEN",
    "secret",
    "client_secret",
    "AWS_SECRET_ACCESS_KEY",
    "password",
    "db_password",
    "private_key",
    "credentials",
]
ORDINARY_NAMES = [
    "per_token",
    "max_tokens",
    "max_new_tokens",
    "num_tokens",
    "tokenizer",
    "tokens",
    "pad_token",
    "eos_token",
    "key",
    "keys",
    "sort_key",
    "PWD",
    "lr",
    "model",
    "source",
    "secretary_bird",
    "pass_rate",
]


@pytest.mark.parametrize("name", SECRET_NAMES)
def test_secret_names_are_recognised(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ORDINARY_NAMES)
def test_ordinary_names_are_not_secrets(name):
    assert not is_secret_name(name)


def test_scrub_blanks_nested_secrets_and_keeps_per_token():
    cfg = {
        "judge": {"api_key": "sk-abc", "model": "m", "max_tokens": 64},
        "hf_token": "hf_xyz",
        "objective": {"per_token": True, "lambda_p": 1.0},
        "tokenizer": "tok",
        "password": None,
    }
    assert scrub(cfg) == {
        "judge": {"api_key": MASK, "model": "m", "max_tokens": 64},
        "hf_token": MASK,
        "objective": {"per_token": True, "lambda_p": 1.0},
        "tokenizer": "tok",
        "password": None,
    }
    assert cfg["judge"]["api_key"] == "sk-abc"  # a copy: the input is untouched


def test_secret_values_come_from_secret_named_variables_only():
    env = {"WANDB_API_KEY": "wandb-0123456789", "MY_JUDGE_API_KEY": "sk-judge-42", "HOME": "/home/u", "HF_TOKEN": "x"}
    assert secret_values(env) == ["wandb-0123456789", "sk-judge-42"]  # longest first; "x" too short


def test_redact_removes_every_occurrence():
    text = "curl -H 'Authorization: Bearer sk-judge-42' ... sk-judge-42 again; key wandb-0123456789"
    clean = redact(text, ["sk-judge-42", "wandb-0123456789"])
    assert "sk-judge-42" not in clean and "wandb-0123456789" not in clean
    assert clean.count(MASK) == 3
    assert redact("nothing to hide", ["sk-judge-42"]) == "nothing to hide"


def test_redact_uses_the_environment_by_default(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-the-env-777")
    assert redact("key=sk-from-the-env-777") == f"key={MASK}"


def test_redact_argv_blanks_secret_overrides_and_known_values():
    argv = [
        "run.py",
        "judge.api_key=sk-typed-in",
        "+hf_token=hf_abcdef",
        "objective.per_token=true",
        "x=wandb-secret-1",
    ]
    assert redact_argv(argv, ["wandb-secret-1"]) == [
        "run.py",
        f"judge.api_key={MASK}",
        f"+hf_token={MASK}",
        "objective.per_token=true",
        f"x={MASK}",
    ]


def test_redacting_filter_cleans_messages_args_and_tracebacks(monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_API_KEY", "wandb-key-0123456789")
    logger = logging.getLogger("steer.test_secrets")
    path = tmp_path / "run.log"
    handler = logging.FileHandler(path)
    handler.addFilter(RedactingFilter(extra=["typed-secret-99"]))
    logger.addHandler(handler)
    try:
        logger.warning("key is %s", "wandb-key-0123456789")
        logger.warning("cli had typed-secret-99 in it")
        try:
            raise RuntimeError("failed with wandb-key-0123456789")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
        handler.close()
    text = path.read_text()
    assert "wandb-key-0123456789" not in text and "typed-secret-99" not in text
    assert text.count(MASK) == 4  # message, argument, exception message, source line in the traceback
    assert "RuntimeError" in text  # the traceback is kept, only the value is gone


def test_no_secret_reaches_the_files_wandb_writes(tmp_path, monkeypatch):
    """A real offline W&B run started by Tracker.start: secrets given in the environment, on the
    command line and in the config appear in none of the files under the run directory."""
    from steer.runtime.tracking import Tracker

    env_secret, argv_secret, config_secret = "wandb-env-secret-0001", "sk-argv-secret-0002", "sk-config-secret-0003"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("MY_JUDGE_API_KEY", env_secret)
    monkeypatch.setenv("WANDB_SILENT", "true")
    argv = ["run.py", f"judge.api_key={argv_secret}", f"note={env_secret}", "objective.per_token=true"]
    monkeypatch.setattr("sys.argv", argv)
    config = {
        "judge": {"api_key": config_secret, "model": "m"},
        "note": env_secret,
        "objective": {"name": "sft", "per_token": True},
        "intervention": {"form": "vector"},  # run_labels names the W&B job and tags from these
        "dataset": {"name": "sentiment"},
        "model": {"name": "smollm2-135m"},
    }
    tracker = Tracker.start(tmp_path, "secrets", config, project="steer-test")
    tracker.log({"value": 1.0})
    tracker.finish()
    import wandb

    wandb.teardown()  # wandb-core writes the run file after finish() returns; teardown waits for it
    assert __import__("sys").argv == argv  # restored after wandb.init
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    for path in files:
        data = path.read_bytes()
        for secret in (env_secret, argv_secret, config_secret):
            assert secret.encode() not in data, f"{secret} found in {path}"
    record = next(p for p in files if p.suffix == ".wandb").read_bytes()  # the run's metadata holds argv
    assert b"objective.per_token=true" in record and f"judge.api_key={MASK}".encode() in record
