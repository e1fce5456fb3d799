"""``merged``: a full model folder in the base model's own architecture with the update merged at m.

``W ← W + m·ΔW`` on layer l's ``down_proj``, and ``b ← b + m·Δb`` on its bias. Loadable with plain
``AutoModelForCausalLM.from_pretrained`` (and servable by ``transformers serve``): no steer code,
no hooks, no remote code.

Where Δb can go, per architecture (``ARCHITECTURES``):
- ΔW (lora, local_weight) merges into every architecture: down_proj always has a weight.
- Δb needs a bias on down_proj. Llama's has none by default but its config has ``mlp_bias``:
  the export sets it and gives every MLP Linear a bias, zero except layer l's down_proj (zeros
  change nothing). Qwen2, Mistral and Gemma-2 build their MLP without bias and have no switch:
  a run with Δb is refused for them.
- The vector form adds m·Δb to the residual stream after decoder layer l. Where the layer ends
  in ``h + down_proj(...)`` (Llama, Qwen2, Mistral) that is exactly a bias on layer l's down_proj,
  so it merges as one. Gemma-2 normalises the MLP output (``post_feedforward_layernorm``) before
  the residual add, so a down_proj bias would be rescaled by the norm: not equivalent, refused.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from steer.core.models import decoder_layers, layer_linear, load_config, load_model
from steer.export.base import Exporter, ExportError, Source


@dataclass(frozen=True)
class Architecture:
    """What a merge can do in one ``config.model_type``."""

    bias_switch: str | None  # the config key that gives down_proj a bias, if any
    residual_is_mlp_output: bool  # decoder layer output = residual + down_proj output, no norm between
    why: str = ""


ARCHITECTURES = {
    "llama": Architecture("mlp_bias", True),
    "qwen2": Architecture(None, True, "Qwen2's MLP Linears have no bias and its config no mlp_bias switch"),
    "mistral": Architecture(None, True, "Mistral's MLP Linears have no bias and its config no mlp_bias switch"),
    "gemma2": Architecture(
        None,
        False,
        "Gemma-2 has no MLP bias, and its post_feedforward_layernorm sits between down_proj and the "
        "residual add, so a residual vector is not a down_proj bias there",
    ),
}


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

    def check(self, source: Source) -> None:
        weight, bias = source.intervention.dense_update()
        site = source.intervention.info.site
        if weight is not None and site != "mlp.down_proj":
            raise ExportError(f"--to merged: a ΔW at site {site!r} has no weight to merge into")
        if bias is None:
            return
        model_type = load_config(source.model_source).model_type
        arch = ARCHITECTURES.get(model_type)
        if arch is None:
            raise ExportError(
                f"--to merged: the run's Δb needs a bias on down_proj, and steer does not know whether "
                f"architecture {model_type!r} can have one (known: {', '.join(ARCHITECTURES)})"
            )
        if site == "residual" and not arch.residual_is_mlp_output:
            raise ExportError(f"--to merged cannot fold a {source.form} run into {model_type}: {arch.why}")
        if arch.bias_switch is None:
            raise ExportError(
                f"--to merged cannot give {model_type}'s down_proj the run's Δb: {arch.why}. "
                "Export a vector with --to steering-vectors or --to gguf instead."
            )

    def write(self, source: Source, out: Path) -> list[Path]:
        model, tokenizer = load_model(source.model_source, dtype=source.model_dtype)
        weight, bias = source.scaled_update()
        target = layer_linear(model, source.layer, "mlp.down_proj")
        with torch.no_grad():
            if weight is not None:
                target.weight.copy_((target.weight.float() + weight).to(target.weight.dtype))
            if bias is not None:
                give_mlp_bias(model, ARCHITECTURES[model.config.model_type].bias_switch)
                target.bias.copy_((target.bias.float() + bias).to(target.bias.dtype))
        model.config.steer_export = source.provenance(self.name)
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        return sorted(p for p in out.iterdir() if p.is_file())
