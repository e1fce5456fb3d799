"""``merged``: a full model folder in the base model's own architecture with the update merged at m.

``W ← W + m·ΔW`` on layer l's ``down_proj``, and ``b ← b + m·Δb`` on its bias. Loadable with plain
``AutoModelForCausalLM.from_pretrained`` (and servable by ``transformers serve``): no steer code,
no hooks, no remote code.

Where Δb can go, per architecture (``steer.core.models.ARCHITECTURES``: the same site data training uses):
- ΔW (lora, local_weight) merges into every architecture with a down_proj Linear (not a mixture of
  experts: it has none, and training refuses those forms there).
- Δb needs a bias on down_proj. Llama's has none by default but its config has ``mlp_bias``
  (``mlp_bias_switch``): the export sets it and gives every MLP Linear a bias, zero except layer l's
  down_proj (zeros change nothing). Qwen2/3, Mistral, Phi-3, Gemma 2/3 and OLMo 2 build their MLP
  without bias and have no switch: a run with Δb is refused for them.
- The vector form adds m·Δb to the residual stream after decoder layer l. Where the layer ends
  in ``h + down_proj(...)`` (Llama, Qwen, Mistral, Phi-3) that is exactly a bias on layer l's
  down_proj, so it merges as one. Gemma 2/3 and OLMo 2 normalise the MLP output
  (``norm_after_mlp``: post_feedforward_layernorm) before the residual add, so a down_proj bias
  would be rescaled by the norm: not equivalent, refused.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from steer.core.models import (
    MLP_DOWN,
    RESIDUAL,
    architecture,
    decoder_layers,
    load_config,
    load_model,
    site_module,
    site_path,
)
from steer.export.base import Exporter, ExportError, Source

# What save_pretrained writes for a model and its tokenizer (transformers 5): a stale file of this set
# beside a new model would be read with it (an old shard index, an old tokenizer's vocabulary).
MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "model-*-of-*.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model-*-of-*.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "chat_template.jinja",
    "chat_template.json",
)


def give_mlp_bias(model: nn.Module, switch: str) -> None:
    """Set ``config.<switch>`` and give every MLP Linear of every layer a zero bias, so the saved
    folder reloads (with that config) into exactly the model it was."""
    setattr(model.config, switch, True)
    for layer in decoder_layers(model):
        for linear in layer.mlp.modules():
            if isinstance(linear, nn.Linear) and linear.bias is None:
                weight = linear.weight
                linear.bias = nn.Parameter(torch.zeros(linear.out_features, dtype=weight.dtype, device=weight.device))


class MergedExporter(Exporter):
    name = "merged"
    summary = "any form -> a plain model folder with W + m·ΔW (and the bias b + m·Δb where the architecture allows)"
    owned = MODEL_FILES + TOKENIZER_FILES

    def check(self, source: Source) -> None:
        weight, bias = source.intervention.dense_update()
        site = source.intervention.info.site
        if weight is not None and site != MLP_DOWN:
            raise ExportError(f"--to merged: a ΔW at site {site!r} has no weight to merge into")
        config = load_config(source.model_source)
        model_type = config.model_type
        try:  # every merge writes into layer l's down_proj
            site_path(config, MLP_DOWN)
        except ValueError as err:
            raise ExportError(f"--to merged cannot fold a {source.form} run into {model_type}: {err}") from None
        if bias is None:
            return
        arch = architecture(config)
        if site == RESIDUAL and arch.norm_after_mlp is not None:
            raise ExportError(
                f"--to merged cannot fold a {source.form} run into {model_type}: its {arch.norm_after_mlp} "
                "sits between down_proj and the residual add, so a residual vector is not a down_proj bias there. "
                "Export it with --to steering-vectors or --to gguf instead."
            )
        if arch.mlp_bias_switch is None:
            raise ExportError(
                f"--to merged cannot give {model_type}'s down_proj the run's Δb: its MLP Linears have no bias "
                "and its config no mlp_bias switch. Export a vector with --to steering-vectors or --to gguf instead."
            )

    def write(self, source: Source, out: Path) -> None:
        model, tokenizer = load_model(source.model_source, dtype=source.model_dtype)
        weight, bias = source.scaled_update()
        target = site_module(model, source.layer, MLP_DOWN)
        with torch.no_grad():
            if weight is not None:
                target.weight.copy_((target.weight.float() + weight).to(target.weight.dtype))
            if bias is not None:
                give_mlp_bias(model, architecture(model.config).mlp_bias_switch)
                target.bias.copy_((target.bias.float() + bias).to(target.bias.dtype))
        model.config.steer_export = source.provenance(self.name)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
