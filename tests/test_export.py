"""Exports are correct when the library that loads them reproduces steer's own losses at m."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from steer.core.interventions import DynamicAffine, new_intervention
from steer.core.metrics import EncodedPair, encode_pair
from steer.core.models import EMBEDDED_SOURCE, load_model
from steer.core.sweep import grid_losses, pair_losses
from steer.export import EXPORTS, PROVENANCE, ExportError, export, load_steering_vector

TOL = 1e-4


def make_run(run_dir, model, source: str, form: str, layer: int, seed: int = 0) -> DynamicAffine:
    """A run directory with a non-zero intervention of ``form`` (set directly: the point is the
    export's numbers) and the config keys export reads."""
    iv = new_intervention(model, form, layer, rank=4, seed=seed, objective="split")
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in iv.tensors().items():
            getattr(iv, name).copy_(torch.randn(tensor.shape, generator=generator) * 0.05)
    iv.save(run_dir)
    config = {"model": {"name": "test", "source": source, "dtype": "float32"}, "layer": layer}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    return iv


def steer_losses(model, run_dir, pairs, m: float) -> np.ndarray:
    """The sweep engine's losses [pairs, 2] with the run's saved intervention at m."""
    return grid_losses(model, pairs, DynamicAffine.load(run_dir), [m], progress=False)[0]


def smol_pairs(tokenizer) -> list[EncodedPair]:
    chat = [{"role": "user", "content": "Write a one-sentence review of a cafe."}]
    prompt = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    answers = [("Lovely coffee and kind staff.", "Cold coffee and rude staff."), ("A gem.", "Never again, awful.")]
    return [encode_pair(tokenizer, prompt, pos, neg) for pos, neg in answers]


TINY_PAIRS = [EncodedPair((1, 5, 9, 2), (7, 3), (11, 4, 6)), EncodedPair((3, 8), (12, 13, 14, 2), (5,))]


@pytest.fixture(params=["tiny", pytest.param("smol", marks=pytest.mark.slow)])
def base(request, tiny_folder):
    """(model, source, pairs, layer): a tiny Llama (fast), and the embedded SmolLM2 (slow)."""
    if request.param == "tiny":
        model, source = tiny_folder("llama")
        return model, source, TINY_PAIRS, 2
    model, tokenizer = request.getfixturevalue("smol")
    return model, EMBEDDED_SOURCE, smol_pairs(tokenizer), 10


def test_peft_export_reproduces_steer_losses(base, tmp_path):
    from peft import PeftModel

    model, source, pairs, layer = base
    run_dir, m = tmp_path / "run", -1.5
    make_run(run_dir, model, source, "lora", layer=layer)
    expected = steer_losses(model, run_dir, pairs, m)
    export(run_dir, m, "peft", tmp_path / "peft")

    fresh, _ = load_model(source)
    peft_model = PeftModel.from_pretrained(fresh, tmp_path / "peft").eval()
    np.testing.assert_allclose(pair_losses(peft_model, pairs), expected, atol=TOL, rtol=0)
    assert np.abs(expected - pair_losses(model, pairs)).max() > 1e-3  # the adapter did something
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert config["target_modules"] == [f"model.layers.{layer}.mlp.down_proj"] and config["lora_alpha"] == m * 4
    assert json.loads((tmp_path / "peft" / PROVENANCE).read_text())["m"] == m


def test_steering_vectors_export_reproduces_steer_losses(base, tmp_path):
    model, source, pairs, layer = base
    run_dir, m = tmp_path / "run", 6.0
    iv = make_run(run_dir, model, source, "vector", layer=layer)
    with torch.no_grad():
        iv.delta_b.mul_(20.0)  # a vector big enough to move the losses visibly
    iv.save(run_dir)
    expected = steer_losses(model, run_dir, pairs, m)
    (path,) = [p for p in export(run_dir, m, "steering-vectors", tmp_path / "sv") if p.suffix == ".safetensors"]

    vector = load_steering_vector(path)
    assert type(vector).__module__.startswith("steering_vectors")
    assert set(vector.layer_activations) == {layer} and vector.layer_type == "decoder_block"
    with vector.apply(model, multiplier=1.0):
        got = pair_losses(model, pairs)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)
    assert np.abs(expected - pair_losses(model, pairs)).max() > 1e-2  # the vector did something


@pytest.mark.parametrize("form", ["vector", "lora", "local_weight"])
def test_merged_export_of_each_form_reproduces_steer_losses(form, tiny_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    model, source = tiny_folder("llama")
    run_dir, m = tmp_path / "run", 1.7
    iv = make_run(run_dir, model, source, form, layer=2)
    if form == "vector":
        with torch.no_grad():
            iv.delta_b.mul_(20.0)
        iv.save(run_dir)
    expected = steer_losses(model, run_dir, TINY_PAIRS, m)
    export(run_dir, m, "merged", tmp_path / "merged")

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    np.testing.assert_allclose(pair_losses(merged, TINY_PAIRS), expected, atol=TOL, rtol=0)
    assert np.abs(expected - pair_losses(model, TINY_PAIRS)).max() > 1e-3
    assert merged.config.steer_export["m"] == m and merged.config.steer_export["form"] == form


def test_merged_refuses_bias_where_the_architecture_has_none(tiny_folder, tmp_path):
    model, source = tiny_folder("gemma2")
    make_run(tmp_path / "vec", model, source, "vector", layer=1)
    with pytest.raises(ExportError, match="post_feedforward_layernorm"):
        export(tmp_path / "vec", 1.0, "merged", tmp_path / "out")
    model, source = tiny_folder("qwen2")
    make_run(tmp_path / "lw", model, source, "local_weight", layer=1)
    with pytest.raises(ExportError, match="no mlp_bias switch"):
        export(tmp_path / "lw", 1.0, "merged", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_lora_merges_into_gemma2(tiny_folder, tmp_path):
    """ΔW needs no bias: it merges into any architecture (here Gemma-2, soft-capping and all)."""
    from transformers import AutoModelForCausalLM

    model, source = tiny_folder("gemma2")
    make_run(tmp_path / "run", model, source, "lora", layer=1)
    expected = steer_losses(model, tmp_path / "run", TINY_PAIRS, -2.0)
    export(tmp_path / "run", -2.0, "merged", tmp_path / "merged")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    np.testing.assert_allclose(pair_losses(merged, TINY_PAIRS), expected, atol=TOL, rtol=0)


def test_gguf_control_vector_reads_back(tiny_folder, tmp_path):
    import gguf

    model, source = tiny_folder("llama")
    iv = make_run(tmp_path / "run", model, source, "vector", layer=3)
    (path,) = [p for p in export(tmp_path / "run", 2.5, "gguf", tmp_path / "cv") if p.suffix == ".gguf"]
    reader = gguf.GGUFReader(path)
    (tensor,) = reader.tensors
    assert tensor.name == "direction.3" and tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensor.shape) == [32]
    np.testing.assert_allclose(np.asarray(tensor.data), 2.5 * iv.delta_b.detach().numpy(), rtol=1e-6)

    def field(key):
        return reader.fields[key].contents()

    assert field("general.architecture") == "controlvector"
    assert field("controlvector.model_hint") == "llama" and field("controlvector.layer_count") == 1
    assert field("steer.m") == "2.5" and field("steer.source_run") == str((tmp_path / "run").resolve())
    assert field("steer.steer_version") and field("steer.multiplier") == pytest.approx(2.5)


def test_refusals_name_the_problem(tiny_folder, tmp_path):
    model, source = tiny_folder("llama")
    make_run(tmp_path / "lw", model, source, "local_weight", layer=1)
    make_run(tmp_path / "v0", model, source, "vector", layer=0)
    cases = [
        ("lw", 1.0, "peft", "needs a LoRA run"),
        ("lw", 1.0, "steering-vectors", "one residual-stream vector"),
        ("lw", 1.0, "gguf", "one residual-stream vector"),
        ("v0", 1.0, "gguf", "rejects direction.0"),
        ("lw", float("nan"), "merged", "finite"),
        ("lw", 1.0, "onnx", "not a known format"),
        ("missing", 1.0, "merged", "config.yaml is missing"),
    ]
    for run, m, to, match in cases:
        with pytest.raises(ExportError, match=match):
            export(tmp_path / run, m, to, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert set(EXPORTS) == {"peft", "merged", "steering-vectors", "gguf"}


# --- the --out folder: refused when it holds files, and with --overwrite only steer's files replaced ---

FORM_OF = {"peft": "lora", "merged": "local_weight", "steering-vectors": "vector", "gguf": "vector"}
STALE = {  # files of each format's known set that an earlier, different artifact left behind
    "peft": ["adapter_model.bin"],
    "merged": ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"],
    "steering-vectors": [],
    "gguf": [],
}


def cli(run_dir, m: float, fmt: str, out, *extra: str) -> int:
    from steer.export.__main__ import main

    return main([str(run_dir), "--m", str(m), "--to", fmt, "--out", str(out), *extra])


def contents(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def reexport_losses(fmt: str, out, model, source: str, run_dir, m: float) -> None:
    """The artifact in ``out`` loads in its library and reproduces steer's losses at m (the gguf
    file's tensor is m·Δb: llama.cpp is not installed)."""
    from transformers import AutoModelForCausalLM

    expected = steer_losses(model, run_dir, TINY_PAIRS, m)
    if fmt == "gguf":
        import gguf

        (tensor,) = gguf.GGUFReader(out / "control_vector.gguf").tensors
        iv = DynamicAffine.load(run_dir)
        np.testing.assert_allclose(np.asarray(tensor.data), m * iv.delta_b.detach().numpy(), rtol=1e-6)
        return
    if fmt == "steering-vectors":
        with load_steering_vector(out / "steering_vector.safetensors").apply(model, multiplier=1.0):
            got = pair_losses(model, TINY_PAIRS)
    elif fmt == "peft":
        from peft import PeftModel

        fresh = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        got = pair_losses(PeftModel.from_pretrained(fresh, out).eval(), TINY_PAIRS)
    else:
        got = pair_losses(AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval(), TINY_PAIRS)
    np.testing.assert_allclose(got, expected, atol=TOL, rtol=0)


@pytest.mark.parametrize("fmt", list(FORM_OF))
def test_a_reexport_needs_overwrite_and_then_replaces_only_steers_files(fmt, tiny_folder, tmp_path, capsys):
    model, source = tiny_folder("llama")
    run_dir, out = tmp_path / "run", tmp_path / "out"
    make_run(run_dir, model, source, FORM_OF[fmt], layer=2)
    assert cli(run_dir, 1.0, fmt, out) == 0
    capsys.readouterr()
    (out / "notes.txt").write_text("the user's own file")
    for name in STALE[fmt]:
        (out / name).write_bytes(b"an earlier artifact's file")
    before = contents(out)

    assert cli(run_dir, 2.0, fmt, out) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--out {out} already holds files" in err and "--overwrite" in err
    assert contents(out) == before  # refused: nothing changed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]

    assert cli(run_dir, 2.0, fmt, out, "--overwrite") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("wrote ")
    wrote = {Path(p) for p in line.removeprefix("wrote ").split(", ")}
    assert wrote == {p for p in out.iterdir() if p.name != "notes.txt"}  # exactly what is there, the user's file aside
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert not any((out / name).exists() for name in STALE[fmt])
    manifest = json.loads((out / PROVENANCE).read_text())
    assert manifest["m"] == 2.0 and sorted(manifest["files"]) == sorted(p.name for p in wrote if p.name != PROVENANCE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]  # no staging folder left
    reexport_losses(fmt, out, model, source, run_dir, 2.0)


def test_overwrite_removes_the_earlier_export_of_another_format_and_keeps_the_users_files(tiny_folder, tmp_path):
    """The manifest lists what the merged export wrote; a gguf export over it removes exactly those."""
    model, source = tiny_folder("llama")
    make_run(tmp_path / "run", model, source, "vector", layer=2)
    out = tmp_path / "out"
    merged = export(tmp_path / "run", 1.0, "merged", out)
    assert {p.name for p in merged} >= {"config.json", "model.safetensors", "tokenizer.json", PROVENANCE}
    (out / "README.md").write_text("my notes on this model")
    written = export(tmp_path / "run", 3.0, "gguf", out, overwrite=True)
    assert sorted(p.name for p in written) == ["control_vector.gguf", PROVENANCE]
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "control_vector.gguf", PROVENANCE]
    reexport_losses("gguf", out, model, source, tmp_path / "run", 3.0)


def test_a_refused_export_with_overwrite_changes_nothing(tiny_folder, tmp_path):
    model, source = tiny_folder("llama")
    make_run(tmp_path / "lw", model, source, "local_weight", layer=1)
    out = tmp_path / "out"
    export(tmp_path / "lw", 1.0, "merged", out)
    before = contents(out)
    with pytest.raises(ExportError, match="needs a LoRA run"):
        export(tmp_path / "lw", 1.0, "peft", out, overwrite=True)
    assert contents(out) == before
    with pytest.raises(ExportError, match="already holds files.*--overwrite"):
        export(tmp_path / "lw", 1.0, "merged", out)
    assert contents(out) == before
