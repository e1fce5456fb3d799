"""The embedded model's conversion cache, loading by path, and finding steering sites."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from steer.core.models import (
    EMBEDDED_SHA256,
    EMBEDDED_SOURCE,
    convert_gguf,
    decoder_layer,
    embedded_gguf_path,
    layer_linear,
    load_model,
    resolve_source,
)
from steer.io.provenance import file_digest
from steer.stages import compose_config
from tests.conftest import python, tiny_model


def test_embedded_gguf_is_the_pinned_file():
    assert file_digest(embedded_gguf_path()) == EMBEDDED_SHA256


def test_converted_cache_is_plain_safetensors(smol):
    folder = Path(resolve_source(EMBEDDED_SOURCE))
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert "quantization_config" not in config
    assert config["num_hidden_layers"] == 30 and config["hidden_size"] == 576
    assert (folder / "model.safetensors").is_file()
    assert not list(folder.parent.glob(".*tmp-*")), "no half-written conversion left behind"


def test_loading_by_local_path_is_the_same_model(smol):
    model, tok = smol
    again, tok2 = load_model(resolve_source(EMBEDDED_SOURCE))
    ids = torch.tensor([tok("Hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)
    assert not again.training and not any(p.requires_grad for p in again.parameters())


def test_conversion_checks_the_sha_before_anything(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"not a gguf")
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="sha256"):
        convert_gguf(fake, target, sha256=EMBEDDED_SHA256)
    assert not target.exists()


def test_failed_conversion_leaves_no_cache(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF but broken")
    target = tmp_path / "out"
    with pytest.raises(Exception):  # noqa: B017 - whatever the GGUF reader raises
        convert_gguf(fake, target)
    assert list(tmp_path.iterdir()) == [fake], "neither the target nor a temporary folder may remain"


@pytest.mark.e2e
def test_offline_hub_source_names_the_key():
    """In a fresh process, so HF_HUB_OFFLINE is read at import as in a real offline session."""
    code = "from steer.core.models import load_config; load_config('google/gemma-2-9b-it')"
    proc = python("-c", code, env={"HF_HUB_OFFLINE": "1"})
    assert proc.returncode != 0
    assert "model.source='google/gemma-2-9b-it' could not be loaded" in proc.stderr
    assert "set model.source to a local folder" in proc.stderr


@pytest.mark.parametrize(
    "name,source,layer",
    [("gemma-2-9b-it", "google/gemma-2-9b-it", 20), ("qwen2.5-7b-instruct", "Qwen/Qwen2.5-7B-Instruct", 14)],
)
def test_paper_model_configs(name, source, layer):
    cfg = compose_config([f"model={name}"])
    assert cfg.model.source == source and cfg.layer == layer and cfg.precision == "bf16"
    assert cfg.run_id.startswith(f"sentiment/{name}/")


@pytest.mark.parametrize("arch", ["llama", "qwen2", "gemma2"])
def test_sites_on_every_architecture(arch):
    model = tiny_model(arch)
    assert decoder_layer(model, 3) is model.model.layers[3]
    assert layer_linear(model, 1, "mlp.down_proj") is model.model.layers[1].mlp.down_proj
    assert layer_linear(model, 2, "self_attn.o_proj") is model.model.layers[2].self_attn.o_proj
    with pytest.raises(IndexError, match="layer=4 is out of range: the model has layers 0..3"):
        layer_linear(model, 4, "mlp.down_proj")
    with pytest.raises(TypeError, match="no mlp.up_down Linear in layer 1"):
        layer_linear(model, 1, "mlp.up_down")


@pytest.mark.slow
def test_converted_model_equals_the_gguf_load(smol):
    from transformers import AutoModelForCausalLM

    model, tok = smol
    gguf = embedded_gguf_path()
    direct = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name).eval()
    ids = torch.tensor([tok("The quick brown fox", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, direct(ids).logits)
