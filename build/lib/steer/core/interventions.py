"""The unified dynamic weight update, Δh = m1·ΔW·h_in + m2·Δb, at one site of one layer.

The forms (``steer.core.forms``) differ only in which of ΔW, Δb they carry and where they sit;
``DynamicAffine`` holds one form's tensors as parameters and applies its Δh.

The update is a forward hook that adds Δh to the site's output, so m = 0 adds an exact zero and
reproduces the bare model bit for bit. The multiplier may be a float or a tensor with one value
per batch row, which lets training draw a multiplier per example and the sweep batch over m.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from steer import rundir
from steer.core.forms import Form, Multiplier, get_form
from steer.io.artifacts import CorruptArtifact, read_json, read_safetensors, verify_intervention
from steer.io.atomic import atomic_path


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
        return get_form(self.form).site


class DynamicAffine(nn.Module):
    """One steering intervention: its form's trainable tensors plus a settable multiplier."""

    def __init__(self, info: InterventionInfo, init_scale: float = 0.0, generator=None) -> None:
        super().__init__()
        self.info = info
        form = get_form(info.form)
        tensors = form.init(info.d_in, info.d_out, rank=info.rank, init_scale=init_scale, generator=generator)
        for name, value in tensors.items():
            self.register_parameter(name, nn.Parameter(value))
        self.multiplier: Multiplier = 0.0
        self.bias_multiplier: Multiplier | None = None
        # Training dropout on Δh, active only in train mode (``steer.objectives.training`` sets both).
        self.dropout = 0.0
        self._handle = None

    @property
    def form(self) -> str:
        return self.info.form

    @property
    def spec(self) -> Form:
        """The registered ``steer.core.forms.Form`` of this intervention."""
        return get_form(self.info.form)

    def set_multiplier(self, m: Multiplier, m_bias: Multiplier | None = None) -> None:
        """Set m1 (and m2, which follows m1 unless given). Takes effect on the next forward."""
        self.multiplier = m
        self.bias_multiplier = m_bias

    def params(self) -> dict[str, nn.Parameter]:
        return {name: getattr(self, name) for name in self.spec.tensor_names}

    def dense_update(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(ΔW [d_out, d_in] or None, Δb [d_out] or None) at m = 1 in the site's output coordinates,
        detached on the CPU: what an export merges or writes, whatever the form's parametrisation."""
        with torch.no_grad():
            return tuple(None if t is None else t.detach().cpu().clone() for t in self.spec.dense_update(self.params()))

    def delta(self, h_in: torch.Tensor | None) -> torch.Tensor:
        """Δh = m1·ΔW·h_in + m2·Δb, broadcast over [batch, seq, d_out]."""
        m1 = _per_row(self.multiplier)
        m2 = m1 if self.bias_multiplier is None else _per_row(self.bias_multiplier)
        return self.spec.delta(self.params(), h_in, m1, m2)

    def _hook(self, module, args, output):
        if isinstance(output, tuple):  # decoder layers of older transformers return tuples
            hidden = output[0]
            return (hidden + self._dropped(self.delta(None)).to(hidden.dtype), *output[1:])
        h_in = args[0] if self.spec.needs_input else None
        return output + self._dropped(self.delta(h_in)).to(output.dtype)

    def _dropped(self, delta: torch.Tensor) -> torch.Tensor:
        """Δh with inverted dropout while training (as the authors' code drops its steering term):
        per element of [rows, seq, d] for ΔW forms; a vector's Δh is [rows, 1, d], one mask per row."""
        if self.dropout and self.training:
            return F.dropout(delta, self.dropout, training=True)
        return delta

    def attach(self, model: nn.Module) -> DynamicAffine:
        """Register the hook on the site of ``model``; the module follows the model's device."""
        if self._handle is not None:
            raise RuntimeError("intervention is already attached; detach it first")
        module = self.spec.site_module(model, self.info.layer)
        dims = self.spec.dims(model, self.info.layer)
        if dims != (self.info.d_in, self.info.d_out):
            raise ValueError(
                f"intervention shape (d_in, d_out)={(self.info.d_in, self.info.d_out)} does not "
                f"fit layer {self.info.layer} {self.spec.site} of this model {dims}"
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
        return {name: value.detach().cpu().contiguous() for name, value in self.params().items()}

    def digest(self) -> str:
        """A hash of what the intervention computes (form, layer, every tensor's dtype and values):
        keys the resumable parts of the computations run under it (sweep, generation)."""
        h = hashlib.sha256(f"{self.form}|{self.info.layer}".encode())
        for name, tensor in sorted(self.tensors().items()):
            h.update(name.encode() + str(tensor.dtype).encode() + tensor.float().numpy().tobytes())
        return h.hexdigest()

    def load_tensors(self, tensors: dict[str, torch.Tensor], source: str = "tensors") -> None:
        """Copy ``tensors`` into the parameters; names and shapes must match the form's exactly."""
        expected = set(self.spec.tensor_names)
        if set(tensors) != expected:
            raise ValueError(f"{source}: tensors {sorted(tensors)} != {sorted(expected)} for form {self.form}")
        with torch.no_grad():
            for name, value in tensors.items():
                param = getattr(self, name)
                if param.shape != value.shape:
                    raise ValueError(f"{source}: {name} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
                param.copy_(value)

    def save(self, run_dir: str | Path) -> None:
        """Write ``intervention.safetensors`` and ``intervention.json`` atomically."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        with atomic_path(run_dir / rundir.WEIGHTS) as tmp:
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
        rundir.write_json(run_dir / rundir.META, meta)

    @classmethod
    def load(cls, run_dir: str | Path, expected: Mapping | None = None) -> DynamicAffine:
        """Rebuild an intervention from its two files, verified (``steer.io.artifacts.verify_intervention``):
        the json against ``expected`` (what the run's config says: form, layer, model, ...), the
        tensors against the json's shapes, every value finite. A damaged or foreign file is a
        ``CorruptArtifact`` naming it."""
        run_dir = Path(run_dir)
        meta_path, weights_path = run_dir / rundir.META, run_dir / rundir.WEIGHTS
        for path in (meta_path, weights_path):
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing: run the train stage first")
        meta = read_json(meta_path)
        tensors = read_safetensors(weights_path)
        verify_intervention(meta, tensors, expected or {}, meta_path, weights_path)
        known = {"form", "layer", "site", "model", "objective", "d_in", "d_out", "rank", "shapes"}
        try:
            info = InterventionInfo(
                form=get_form(meta["form"]).name,
                layer=int(meta["layer"]),
                d_in=int(meta["d_in"]),
                d_out=int(meta["d_out"]),
                rank=meta.get("rank"),
                model=meta.get("model", ""),
                objective=meta.get("objective", ""),
                extra={k: v for k, v in meta.items() if k not in known},
            )
            module = cls(info)
            module.load_tensors(tensors, source=str(weights_path))
        except (KeyError, TypeError, ValueError) as err:
            raise CorruptArtifact(meta_path, f"does not describe the tensors of {weights_path.name} ({err})") from None
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
    spec = get_form(form)
    d_in, d_out = spec.dims(model, layer)
    info = InterventionInfo(form, layer, d_in, d_out, rank if spec.uses_rank else None, model_name, objective)
    generator = torch.Generator().manual_seed(seed)
    return DynamicAffine(info, init_scale=init_scale, generator=generator)


# A batch row's steering: (intervention index, m) pairs, one per run that steers the row, in index
# order; () is the bare model. Several pairs compose: Δh = Σ mᵢ·(ΔWᵢ·h + Δbᵢ), each at its own site.
Steering = tuple[tuple[int, float], ...]


def steering(pairs: Mapping[int, float] | Sequence[tuple[int, float]]) -> Steering:
    """The canonical ``Steering`` of (index, m) pairs: sorted, zeros dropped (m = 0 adds an exact
    zero, so a run at 0 and no run are one row). An index given twice is a ValueError."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    indices = [k for k, _ in items]
    if len(set(indices)) != len(indices):
        raise ValueError(f"a run is given twice in {items}: a run cannot be composed with itself")
    return tuple(sorted((int(k), float(m) + 0.0) for k, m in items if float(m) != 0.0))


def multiplier_limit(iv: DynamicAffine, dtype: torch.dtype) -> float:
    """The largest |m| whose steered change stays representable in ``dtype``: ‖m·Δ‖ must keep its
    square finite (RMSNorm squares the activations), i.e. |m| ≤ √max(dtype) / ‖Δ‖, with ‖Δ‖ the
    update's norm at an input of unit-scale components (‖Δb‖ + ‖ΔW‖_F·√d_in). A ΔW form's real
    input may be larger: callers also check that the steered logits stay finite."""
    delta_w, delta_b = iv.dense_update()
    scale = 0.0 if delta_b is None else float(delta_b.double().norm())
    if delta_w is not None:
        scale += float(delta_w.double().norm()) * iv.info.d_in**0.5
    return float(torch.finfo(dtype).max) ** 0.5 / scale if scale > 0 else float(torch.finfo(torch.float32).max)


def representable(ms: Sequence[float], limits: Sequence[float]) -> bool:
    """Whether runs at ``ms`` with those ``multiplier_limit`` s compose to a representable change:
    Σ |mᵢ| / limitᵢ ≤ 1 (the norm of a sum is at most the sum of the norms)."""
    return sum(abs(m) / limit for m, limit in zip(ms, limits, strict=True)) <= 1.0


class RowInterventions:
    """Several interventions on one model; each batch row is steered by any of them, each at its own m.

    Every row carries a ``Steering`` (which interventions steer it, at which m). Each intervention
    gets the multiplier vector with its own rows' m and 0 elsewhere, so a row it does not steer
    gets an exact zero from it: one hook per intervention, per-row Δ of any forms and layers in one
    forward, and a row steered by two runs gets both Δ (two runs at one site add). An intervention
    none of whose rows is in the batch is detached for that forward (it would add zeros), so a run
    costs nothing while nobody asks for it; while it has rows, its Δ is computed over the whole batch.
    """

    def __init__(self, interventions: Sequence[DynamicAffine]) -> None:
        self.interventions = list(interventions)
        self._model: nn.Module | None = None

    def attach(self, model: nn.Module) -> RowInterventions:
        """Check every intervention fits ``model`` and move it to the model's device; hooks come with ``set_rows``."""
        for iv in self.interventions:
            iv.attach(model)
            iv.detach()
        self._model = model
        return self

    def detach(self) -> None:
        self.detach_hooks()
        self._model = None

    def set_rows(self, rows: Sequence[Steering]) -> None:
        """Row b is steered as ``rows[b]`` says until the next call. The hooks of the steering
        interventions run in index order, so two at one site always add in the same order."""
        if self._model is None:
            raise RuntimeError("RowInterventions.set_rows before attach(model)")
        per_row = [dict(row) for row in rows]
        active = [k for k in range(len(self.interventions)) if any(k in row for row in per_row)]
        if active != [k for k, iv in enumerate(self.interventions) if iv._handle is not None]:
            self.detach_hooks()
            for k in active:
                self.interventions[k].attach(self._model)
        for k in active:
            iv = self.interventions[k]
            m = [row.get(k, 0.0) for row in per_row]
            iv.set_multiplier(torch.tensor(m, dtype=torch.float32, device=next(iv.parameters()).device))

    def detach_hooks(self) -> None:
        for iv in self.interventions:
            iv.detach()
