"""``peft``: a LoRA run as a PEFT adapter folder, the multiplier folded into LoRA's scaling.

PEFT computes ``down_proj(x) + scaling · lora_B(lora_A(x))`` with ``scaling = lora_alpha / r``;
steer's LoRA is ``m · (B @ A) x`` with no scaling of its own, so the adapter stores A and B as
trained and ``lora_alpha = m · r`` (negative m and m = 0 included). The target module is the full
name of layer l's ``down_proj`` in the base model, so exactly that one Linear is adapted. Load with
``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), DIR)``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from steer.core.models import MLP_DOWN, load_config, resolve_source, site_module, site_path
from steer.export.base import Exporter, ExportError, Source

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"


def down_proj_name(source: str, layer: int) -> str:
    """The module path of layer ``layer``'s down_proj in the model of ``source`` (built on the meta
    device from its config: no weights are read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(load_config(source))
    target = site_module(model, layer, MLP_DOWN)
    return next(name for name, module in model.named_modules() if module is target)


class PeftExporter(Exporter):
    name = "peft"
    summary = "LoRA run -> PEFT adapter (adapter_config.json + adapter_model.safetensors), m in the scaling"
    owned = (CONFIG, WEIGHTS, "adapter_model.bin")  # PEFT's pickled weights: stale beside ours

    def check(self, source: Source) -> None:
        if set(source.intervention.tensors()) != {"lora_A", "lora_B"}:
            raise ExportError(
                f"--to peft needs a LoRA run (tensors lora_A, lora_B); this run's form is {source.form!r}. "
                "Use --to merged for it (or steering-vectors/gguf for a vector)."
            )
        config = load_config(source.model_source)
        try:
            site_path(config, MLP_DOWN)
        except ValueError as err:
            raise ExportError(f"--to peft: {err}") from None

    def write(self, source: Source, out: Path) -> None:
        tensors = source.intervention.tensors()
        rank = int(tensors["lora_A"].shape[0])
        module = down_proj_name(source.model_source, source.layer)
        config = {
            "peft_type": "LORA",
            "task_type": "CAUSAL_LM",
            "base_model_name_or_path": resolve_source(source.model_source),
            "r": rank,
            "lora_alpha": source.m * rank,
            "lora_dropout": 0.0,
            "bias": "none",
            "fan_in_fan_out": False,
            "use_rslora": False,
            "target_modules": [module],
            "inference_mode": True,
        }
        prefix = f"base_model.model.{module}"
        weights = {f"{prefix}.lora_A.weight": tensors["lora_A"], f"{prefix}.lora_B.weight": tensors["lora_B"]}
        meta = {"format": "pt", **{f"steer_{k}": str(v) for k, v in source.provenance(self.name).items()}}
        save_file(weights, str(out / WEIGHTS), metadata=meta)
        (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
