"""Every steer/conf/model entry composes, names its architecture's shapes, and its layer lies within its depth."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from steer.core.models import ARCHITECTURES, config_from_shapes, load_config, model_size, num_layers
from steer.runtime.plan import Hardware, JobSpec, PairTokens, memory
from steer.stages import CONF, compose_config

MODELS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
# Parameter counts the checkpoints' model cards state (billions), to check the shapes against.
CARDS = {
    "gemma-2-9b-it": 9.24,
    "gemma-3-1b-it": 1.00,
    "llama-3.1-8b-instruct": 8.03,
    "llama-3.2-1b-instruct": 1.24,
    "mistral-7b-instruct-v0.3": 7.25,
    "mixtral-8x7b-instruct": 46.7,
    "olmo-2-7b-instruct": 7.30,
    "phi-3-mini-4k-instruct": 3.82,
    "qwen2.5-7b-instruct": 7.62,
    "qwen3-30b-a3b": 30.5,
    "qwen3-8b": 8.19,
    "smollm2-135m": 0.135,
}
ACTIVE = {"mixtral-8x7b-instruct": 12.9, "qwen3-30b-a3b": 3.3}  # billions per token, from the cards


def architecture_config(model):
    """The config of a steer/conf/model entry: from its ``shapes`` (no download), else its own (embedded)."""
    if model.get("shapes") is not None:
        return config_from_shapes(OmegaConf.to_container(model.shapes))
    return load_config(model.source)


@pytest.fixture(scope="module")
def sizes():
    cache = {}

    def get(name):
        if name not in cache:
            model = compose_config([f"model={name}"]).model
            cache[name] = (model, architecture_config(model))
        return cache[name]

    return get


def test_every_model_has_a_card_count():
    assert set(MODELS) == set(CARDS)


@pytest.mark.parametrize("name", MODELS)
def test_model_entry_composes_and_its_layer_is_within_its_depth(name, sizes):
    model, config = sizes(name)
    cfg = compose_config([f"model={name}"])  # the model's option sets the top-level layer and precision
    assert cfg.model.name == name and set(model) >= {"name", "source"} and "layer" not in model
    depth = num_layers(config)
    assert 0 < cfg.layer < depth
    # the paper's choices: layer 20 of 42 (Gemma-2-9B), 14 of 28 (Qwen-2.5-7B) -- about half depth
    assert abs(cfg.layer / depth - 0.5) <= 0.05, f"{name}: layer {cfg.layer} of {depth}"
    if model.source.startswith("embedded:"):
        assert cfg.precision == "fp32"  # the CPU default model
    else:
        assert cfg.precision == "bf16" and model.get("shapes") is not None
        assert config.model_type in ARCHITECTURES, f"{name}: {config.model_type} has no site data"


@pytest.mark.parametrize("name", MODELS)
def test_shapes_give_the_model_cards_parameter_count(name, sizes):
    _, config = sizes(name)
    size = model_size(config)
    assert size.params / 1e9 == pytest.approx(CARDS[name], rel=0.02)
    assert size.active_params / 1e9 == pytest.approx(ACTIVE.get(name, CARDS[name]), rel=0.05)


def test_memory_counts_weights_and_each_stage(sizes):
    _, config = sizes("qwen2.5-7b-instruct")
    size = model_size(config)
    pairs = [PairTokens(100, 20, 30)]
    job = JobSpec("d", "q", size.params, pairs, pairs, 9, 2, True, size=size, layer=14, sweep_batch=16, train_batch=8)
    hw = Hardware()
    mem = memory(job, hw)
    assert mem.weights == size.params * 2
    assert mem.sweep - mem.weights == 16 * 150 * size.vocab * 6  # bf16 logits + fp32 log-softmax
    kv = 16 * (100 + 128) * size.layers * 2 * size.kv_width * 2
    assert mem.generation - mem.weights == kv + 16 * size.vocab * 4
    deeper = memory(JobSpec(**{**job.__dict__, "layer": 0}), hw)
    assert deeper.train > mem.train > mem.weights  # backward through more layers saves more


def test_flop_count_matches_the_packed_mask_and_torch_flop_counter():
    """``context_sum`` is the number of (query, key) pairs the packed row's mask allows, and
    ``forward_flops``' matmul part is what torch's FLOP counter counts for the Linears."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from steer.core.metrics import EncodedPair, packed_inputs
    from steer.runtime.plan import context_sum, forward_flops, forward_shape
    from tests.conftest import tiny_model

    model = tiny_model("llama")
    pair = EncodedPair((1, 5, 9, 2, 7), (7, 3, 4), (11, 4))
    inputs = packed_inputs([pair], "cpu", torch.float32, model.config)
    mask = inputs["attention_mask"]
    mask = mask["full_attention"] if isinstance(mask, dict) else mask
    assert int((mask[0, 0] == 0).sum()) == context_sum(PairTokens(5, 3, 2))
    shape = forward_shape(model)
    tokens = PairTokens(5, 3, 2)
    layer = model.model.layers[0]
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        for name in ("q_proj", "k_proj", "v_proj", "o_proj"):
            module = getattr(layer.self_attn, name)
            module(torch.zeros(1, tokens.row, module.in_features))
        for name in ("gate_proj", "up_proj", "down_proj"):
            module = getattr(layer.mlp, name)
            module(torch.zeros(1, tokens.row, module.in_features))
    per_layer = forward_flops(shape, tokens, shape.layers - 1) - 2 * shape.hidden * shape.vocab * 5
    assert counter.get_total_flops() == per_layer - 4 * shape.attention_width * context_sum(tokens)
