"""Intervention forms: where Δ sits in the model, which tensors carry it, and what Δh it adds.

Every form is one ``Form`` subclass in the registry ``FORMS`` (name → instance). A form is the
unified update h_out = (W + m1·ΔW)·h_in + (b + m2·Δb) with some of ΔW, Δb fixed to zero:

* ``local_weight``: dense ΔW and Δb inside the MLP ``down_proj`` of layer l;
* ``lora``: ΔW = lora_B @ lora_A (rank r, scaling folded in), no Δb, inside ``down_proj``;
* ``vector``: Δb only, added to the residual stream at the output of decoder layer l.

Adding a form is one subclass and one line in ``FORMS`` (or ``FORMS[name] = MyForm()`` from
outside the package); ``steer.core.interventions.DynamicAffine`` does the rest (hook, save, load).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from torch import nn

from steer.core.models import MLP_DOWN, RESIDUAL, site_module, site_path, text_config

Multiplier = float | torch.Tensor
Tensors = Mapping[str, torch.Tensor]


class Form:
    """One intervention form. Subclasses set the class attributes and ``init``/``delta``/``dense_update``."""

    name: ClassVar[str]
    # A site name of ``steer.core.models`` (RESIDUAL: the decoder layer's output; MLP_DOWN: the MLP's
    # down_proj Linear); ``models.ARCHITECTURES`` says where it is, or why it is absent, per architecture.
    site: ClassVar[str]
    tensor_names: ClassVar[tuple[str, ...]]
    # Whether Δh depends on the site's input (forms with a ΔW): the hook then passes it to ``delta``.
    needs_input: ClassVar[bool] = False
    # Whether ``intervention.rank`` applies (recorded in intervention.json, else null).
    uses_rank: ClassVar[bool] = False

    def check(self, rank: int | None) -> None:
        """Reject options the form cannot use (a bad rank); the message names the key."""

    def check_config(self, config) -> None:
        """Refuse, from the model's config alone (before any weights load), an architecture that has
        no site for this form; the ValueError says why."""
        site_path(config, self.site)

    def site_module(self, model: nn.Module, layer: int) -> nn.Module:
        """The module whose output the form's hook edits."""
        return site_module(model, layer, self.site)

    def dims(self, model: nn.Module, layer: int) -> tuple[int, int]:
        """(d_in, d_out) of the site: the Linear's shape, or (hidden, hidden) on the residual."""
        module = self.site_module(model, layer)
        if isinstance(module, nn.Linear):
            return module.in_features, module.out_features
        hidden = int(text_config(model.config).hidden_size)
        return hidden, hidden

    def init(
        self, d_in: int, d_out: int, *, rank: int | None, init_scale: float, generator: torch.Generator | None
    ) -> dict[str, torch.Tensor]:
        """Fresh tensors, in the order of ``tensor_names``."""
        raise NotImplementedError

    def delta(self, tensors: Tensors, h_in: torch.Tensor | None, m1: Multiplier, m2: Multiplier) -> torch.Tensor:
        """Δh = m1·ΔW·h_in + m2·Δb, broadcast over [batch, seq, d_out]."""
        raise NotImplementedError

    def dense_update(self, tensors: Tensors) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ΔW [d_out, d_in] or None, Δb [d_out] or None) in the site's output coordinates."""
        raise NotImplementedError


class LocalWeight(Form):
    name = "local_weight"
    site = MLP_DOWN
    tensor_names = ("delta_w", "delta_b")
    needs_input = True

    def init(self, d_in, d_out, *, rank, init_scale, generator):
        return {"delta_w": torch.zeros(d_out, d_in), "delta_b": torch.zeros(d_out)}

    def delta(self, tensors, h_in, m1, m2):
        w = tensors["delta_w"]
        return m1 * (h_in.to(w.dtype) @ w.T) + m2 * tensors["delta_b"]

    def dense_update(self, tensors):
        return tensors["delta_w"], tensors["delta_b"]


class LoRA(Form):
    name = "lora"
    site = MLP_DOWN
    tensor_names = ("lora_A", "lora_B")
    needs_input = True
    uses_rank = True

    def check(self, rank):
        if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
            raise ValueError(f"intervention.rank must be a positive integer for lora, got {rank!r}")

    def init(self, d_in, d_out, *, rank, init_scale, generator):
        self.check(rank)
        bound = 1.0 / d_in**0.5  # kaiming-uniform-like A, B = 0: no effect before training
        a = torch.empty(rank, d_in).uniform_(-bound, bound, generator=generator)
        return {"lora_A": a, "lora_B": torch.zeros(d_out, rank)}

    def delta(self, tensors, h_in, m1, m2):
        a, b = tensors["lora_A"], tensors["lora_B"]
        return m1 * ((h_in.to(a.dtype) @ a.T) @ b.T)

    def dense_update(self, tensors):
        return tensors["lora_B"] @ tensors["lora_A"], None


class Vector(Form):
    name = "vector"
    site = RESIDUAL
    tensor_names = ("delta_b",)

    def init(self, d_in, d_out, *, rank, init_scale, generator):
        return {"delta_b": torch.randn(d_out, generator=generator) * init_scale}

    def delta(self, tensors, h_in, m1, m2):
        return m2 * tensors["delta_b"]

    def dense_update(self, tensors):
        return None, tensors["delta_b"]


FORMS: dict[str, Form] = {form.name: form for form in (LocalWeight(), LoRA(), Vector())}


def get_form(name: str) -> Form:
    """The registered form ``name``; an unknown name is an error naming the key and the choices."""
    if name not in FORMS:
        raise ValueError(f"intervention.form={name!r} is not one of {', '.join(FORMS)}")
    return FORMS[name]
