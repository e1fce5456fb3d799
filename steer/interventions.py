"""The unified dynamic weight update, Δh = m1·ΔW·h_in + m2·Δb, at one site of one layer.

The three forms of the paper differ only in which of ΔW, Δb they carry and where they sit:

* ``local_weight``: dense ΔW and Δb inside the MLP ``down_proj`` of layer l;
* ``lora``: ΔW = lora_B @ lora_A (rank r, scaling folded in), no Δb, inside ``down_proj``;
* ``vector``: Δb only, added to the residual stream at the output of decoder layer l.

The update is a forward hook that adds Δh to the site's output, so m = 0 adds an exact zero and
reproduces the bare model bit for bit. The multiplier may be a float or a tensor with one value
per batch row, which lets training draw a multiplier per example and the sweep batch over m.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from steer.atomic import atomic_path, atomic_write_text
from steer.models import decoder_layer, down_proj

FORMS = ("local_weight", "lora", "vector")
SITES = {"local_weight": "mlp.down_proj", "lora": "mlp.down_proj", "vector": "residual"}
TENSORS = {
    "local_weight": ("delta_w", "delta_b"),
    "lora": ("lora_A", "lora_B"),
    "vector": ("delta_b",),
}
WEIGHTS_FILE = "intervention.safetensors"
META_FILE = "intervention.json"

Multiplier = float | torch.Tensor


def check_form(form: str) -> str:
    if form not in FORMS:
        raise ValueError(f"intervention.form={form!r} is not one of {', '.join(FORMS)}")
    return form


def site_module(model: nn.Module, form: str, layer: int) -> nn.Module:
    """The module whose output the form's hook edits."""
    if SITES[check_form(form)] == "residual":
        return decoder_layer(model, layer)
    return down_proj(model, layer)


def site_dims(model: nn.Module, form: str, layer: int) -> tuple[int, int]:
    """(d_in, d_out) of the site: the down_proj shape, or (hidden, hidden) on the residual."""
    module = site_module(model, form, layer)
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    hidden = int(model.config.hidden_size)
    return hidden, hidden


@dataclass
class InterventionInfo:
    """What ``intervention.json`` records beside the tensors."""

    form: str
    layer: int
    d_in: int
    d_out: int
    rank: int | None = None
    model: str = ""
    objective: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def site(self) -> str:
        return SITES[self.form]


class DynamicAffine(nn.Module):
    """One steering intervention: trainable ΔW/Δb plus a settable multiplier."""

    def __init__(self, info: InterventionInfo, init_scale: float = 0.0, generator=None) -> None:
        super().__init__()
        check_form(info.form)
        self.info = info
        d_in, d_out = info.d_in, info.d_out
        if info.form == "local_weight":
            self.delta_w = nn.Parameter(torch.zeros(d_out, d_in))
            self.delta_b = nn.Parameter(torch.zeros(d_out))
        elif info.form == "lora":
            if not info.rank or info.rank < 1:
                raise ValueError(f"intervention.rank must be a positive integer, got {info.rank!r}")
            bound = 1.0 / d_in**0.5  # kaiming-uniform-like A, B = 0: no effect before training
            a = torch.empty(info.rank, d_in).uniform_(-bound, bound, generator=generator)
            self.lora_A = nn.Parameter(a)
            self.lora_B = nn.Parameter(torch.zeros(d_out, info.rank))
        else:
            b = torch.randn(d_out, generator=generator) * init_scale
            self.delta_b = nn.Parameter(b)
        self.multiplier: Multiplier = 0.0
        self.bias_multiplier: Multiplier | None = None
        self._handle = None

    @property
    def form(self) -> str:
        return self.info.form

    def set_multiplier(self, m: Multiplier, m_bias: Multiplier | None = None) -> None:
        """Set m1 (and m2, which follows m1 unless given). Takes effect on the next forward."""
        self.multiplier = m
        self.bias_multiplier = m_bias

    def delta_weight(self) -> torch.Tensor | None:
        """ΔW as one [d_out, d_in] matrix (None for the vector form)."""
        if self.form == "local_weight":
            return self.delta_w
        if self.form == "lora":
            return self.lora_B @ self.lora_A
        return None

    def dense_update(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ΔW [d_out, d_in] | None, Δb [d_out] | None) in the site's output coordinates, detached:
        what an export merges or writes, whatever the form's own parametrisation."""
        with torch.no_grad():
            weight = self.delta_weight()
            bias = getattr(self, "delta_b", None)
            return tuple(None if t is None else t.detach().cpu().clone() for t in (weight, bias))

    def delta(self, h_in: torch.Tensor | None) -> torch.Tensor:
        """Δh = m1·ΔW·h_in + m2·Δb, broadcast over [batch, seq, d_out]."""
        m1 = _per_row(self.multiplier)
        m2 = m1 if self.bias_multiplier is None else _per_row(self.bias_multiplier)
        out = None
        if self.form == "local_weight":
            out = m1 * (h_in.to(self.delta_w.dtype) @ self.delta_w.T)
        elif self.form == "lora":
            out = m1 * ((h_in.to(self.lora_A.dtype) @ self.lora_A.T) @ self.lora_B.T)
        if hasattr(self, "delta_b"):
            bias = m2 * self.delta_b
            out = bias if out is None else out + bias
        return out

    def _hook(self, module, args, output):
        if isinstance(output, tuple):  # decoder layers of older transformers return tuples
            hidden = output[0]
            return (hidden + self.delta(None).to(hidden.dtype), *output[1:])
        h_in = args[0] if self.form != "vector" else None
        return output + self.delta(h_in).to(output.dtype)

    def attach(self, model: nn.Module) -> DynamicAffine:
        """Register the hook on the site of ``model``; the module follows the model's device."""
        if self._handle is not None:
            raise RuntimeError("intervention is already attached; detach it first")
        module = site_module(model, self.form, self.info.layer)
        dims = site_dims(model, self.form, self.info.layer)
        if dims != (self.info.d_in, self.info.d_out):
            raise ValueError(
                f"intervention shape (d_in, d_out)={(self.info.d_in, self.info.d_out)} does not "
                f"fit layer {self.info.layer} {SITES[self.form]} of this model {dims}"
            )
        param = next(model.parameters())
        self.to(param.device)
        self._handle = module.register_forward_hook(self._hook)
        return self

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @contextlib.contextmanager
    def attached(self, model: nn.Module, multiplier: Multiplier | None = None) -> Iterator[DynamicAffine]:
        """``with iv.attached(model, multiplier=4.0): ...`` steers the model inside the block."""
        self.attach(model)
        if multiplier is not None:
            self.set_multiplier(multiplier)
        try:
            yield self
        finally:
            self.detach()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {name: getattr(self, name).detach().cpu().contiguous() for name in TENSORS[self.form]}

    def save(self, run_dir: str | Path) -> None:
        """Write ``intervention.safetensors`` and ``intervention.json`` atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        with atomic_path(run_dir / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata={"form": self.form})
        meta = {
            "form": self.form,
            "layer": self.info.layer,
            "site": self.info.site,
            "model": self.info.model,
            "objective": self.info.objective,
            "d_in": self.info.d_in,
            "d_out": self.info.d_out,
            "rank": self.info.rank,
            "shapes": {name: list(t.shape) for name, t in tensors.items()},
            **self.info.extra,
        }
        atomic_write_text(run_dir / META_FILE, json.dumps(meta, indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> DynamicAffine:
        """Rebuild an intervention from its two files, checking names and shapes."""
        run_dir = Path(run_dir)
        meta_path, weights_path = run_dir / META_FILE, run_dir / WEIGHTS_FILE
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: run the train stage first")
        meta = json.loads(meta_path.read_text())
        known = {"form", "layer", "site", "model", "objective", "d_in", "d_out", "rank", "shapes"}
        info = InterventionInfo(
            form=check_form(meta["form"]),
            layer=int(meta["layer"]),
            d_in=int(meta["d_in"]),
            d_out=int(meta["d_out"]),
            rank=meta.get("rank"),
            model=meta.get("model", ""),
            objective=meta.get("objective", ""),
            extra={k: v for k, v in meta.items() if k not in known},
        )
        module = cls(info)
        tensors = load_file(str(weights_path))
        expected = set(TENSORS[info.form])
        if set(tensors) != expected:
            raise ValueError(f"{weights_path}: tensors {sorted(tensors)} != {sorted(expected)} for form {info.form}")
        with torch.no_grad():
            for name, value in tensors.items():
                param = getattr(module, name)
                if param.shape != value.shape:
                    raise ValueError(
                        f"{weights_path}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}"
                    )
                param.copy_(value)
        return module


def _per_row(m: Multiplier) -> Multiplier:
    """A per-row multiplier [B] becomes [B, 1, 1] so it scales every position of its row."""
    if isinstance(m, torch.Tensor) and m.dim() == 1:
        return m.view(-1, 1, 1)
    return m


def new_intervention(
    model: nn.Module,
    form: str,
    layer: int,
    *,
    rank: int | None = None,
    init_scale: float = 0.0,
    seed: int = 0,
    model_name: str = "",
    objective: str = "",
) -> DynamicAffine:
    """A fresh intervention sized for ``model``'s site; seeded so runs are reproducible."""
    d_in, d_out = site_dims(model, check_form(form), layer)
    info = InterventionInfo(form, layer, d_in, d_out, rank if form == "lora" else None, model_name, objective)
    generator = torch.Generator().manual_seed(seed)
    return DynamicAffine(info, init_scale=init_scale, generator=generator)
