"""Shared fixtures: the embedded model (loaded once per session), tiny models built from a config,
and the shared data folder (tests that need it skip with a reason when it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def smol():
    """(model, tokenizer) of the embedded SmolLM2-135M-Instruct, frozen, eval mode, CPU."""
    from steer.models import EMBEDDED_SOURCE, load_model

    torch.manual_seed(0)
    return load_model(EMBEDDED_SOURCE)


def assert_refused(cfg, run_dir: Path, match: str) -> None:
    """``steer.stages.run`` refuses ``cfg`` with a ConfigError matching ``match`` (a regex) and
    leaves no run directory behind."""
    from steer.stages import ConfigError, run

    with pytest.raises(ConfigError, match=match):
        run(cfg, run_dir)
    assert not run_dir.exists()


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"needs the shared data sets at {SHARED_DATA} (absent on this machine)")
    return SHARED_DATA


def tiny_model(arch: str, seed: int = 0, vocab_size: int = 128):
    """A randomly initialised 4-layer causal LM of architecture ``arch`` (llama, qwen2, gemma2)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
    )
    if arch == "gemma2":
        common.update(head_dim=8, final_logit_softcapping=30.0, sliding_window=4)
    config = AutoConfig.for_model(arch, **common)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    model.eval()
    model.requires_grad_(False)
    return model


@pytest.fixture(params=["llama", "qwen2", "gemma2"])
def tiny(request):
    return tiny_model(request.param)
