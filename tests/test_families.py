"""Every model family steer supports, pinned on tiny random-weight models built from their config classes.

For each family (Llama 3, Gemma 2, Gemma 3, Qwen2.5, Qwen3, Mistral, Phi-3, OLMo 2, Qwen3-MoE, Mixtral)
and each form: the site resolves (or is refused from the config alone, with the reason); m = 0 is the
bare model bit for bit; the steered forward equals a hook written here by hand at the family's own
module path; training takes a step; the sweep and generation agree with the hand hook; every export
format either reloads in its library with steer's losses or is refused before any model loads.
docs/models.md is the table of these cells.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch
import yaml
from accelerate import Accelerator

from steer.core.forms import FORMS, get_form
from steer.core.generate import generate
from steer.core.interventions import DynamicAffine, InterventionInfo, new_intervention
from steer.core.metrics import EncodedPair
from steer.core.models import ARCHITECTURES, architecture, load_config, site_path
from steer.core.sweep import grid_losses, pair_losses
from steer.export import EXPORTS, ExportError, export, load_steering_vector
from steer.objectives import SFT
from steer.objectives.training import TrainSettings, train_intervention
from steer.stages import compose_config
from tests.conftest import REPO, assert_refused

LAYER = 1
VOCAB = 96
TOL = 2e-5


@dataclass(frozen=True)
class Family:
    """What this test knows about a family, written down independently of steer's site table."""

    model_type: str
    extra: dict
    moe: bool = False  # MLP is a mixture of experts: no single down_proj Linear
    norm_after_mlp: bool = False  # post_feedforward_layernorm between down_proj and the residual add
    mlp_bias_switch: bool = False  # config.mlp_bias can give down_proj a bias


FAMILIES = {
    "llama3": Family("llama", {}, mlp_bias_switch=True),
    "gemma2": Family("gemma2", {"final_logit_softcapping": 30.0, "sliding_window": 4}, norm_after_mlp=True),
    "gemma3": Family("gemma3_text", {"sliding_window": 4, "sliding_window_pattern": 2}, norm_after_mlp=True),
    "qwen2.5": Family("qwen2", {}),
    "qwen3": Family("qwen3", {}),
    "mistral": Family("mistral", {"sliding_window": None}),
    "phi3": Family("phi3", {"pad_token_id": 0}),
    "olmo2": Family("olmo2", {}, norm_after_mlp=True),
    "qwen3-moe": Family("qwen3_moe", {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 16}, True),
    "mixtral": Family("mixtral", {"num_local_experts": 4, "num_experts_per_tok": 2}, moe=True),
}
DENSE_SITE = {"vector": "", "lora": "mlp.down_proj", "local_weight": "mlp.down_proj"}


def supported(family: str, form: str) -> bool:
    return not (FAMILIES[family].moe and form != "vector")


CELLS = [(f, form) for f in FAMILIES for form in FORMS]
SUPPORTED = [c for c in CELLS if supported(*c)]
REFUSED = [c for c in CELLS if not supported(*c)]


def build_config(family: str):
    from transformers import AutoConfig

    spec = FAMILIES[family]
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=64,
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
    )
    return AutoConfig.for_model(spec.model_type, **{**common, **spec.extra})


def word_tokenizer():
    """A real word-level fast tokenizer over the tiny vocabulary (w3 .. w95), so generation and
    model folders need no download."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, **{f"w{i}": i for i in range(3, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


# Tiny models run fastest on one thread (measured: 106 s of CPU for this file with 2 threads, 9 s with 1).
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tokenizer():
    return word_tokenizer()


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer):
    """family -> (model, folder): each tiny model built once (seeded) and saved with the tokenizer."""
    from transformers import AutoModelForCausalLM

    built = {}

    def get(family: str):
        if family not in built:
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(build_config(family)).eval()
            model.requires_grad_(False)
            folder = tmp_path_factory.mktemp(f"model-{family}")
            model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            built[family] = (model, str(folder))
        return built[family]

    return get


def pairs(n: int = 4, seed: int = 0) -> list[EncodedPair]:
    rng = random.Random(seed)
    tokens = lambda k: tuple(rng.randrange(3, VOCAB) for _ in range(k))  # noqa: E731
    return [
        EncodedPair(tokens(rng.randint(3, 6)), tokens(rng.randint(2, 4)), tokens(rng.randint(2, 4))) for _ in range(n)
    ]


def randomised(model, form: str, seed: int = 0) -> DynamicAffine:
    iv = new_intervention(model, form, LAYER, rank=2, seed=seed)
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for p in iv.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * (1.0 if form == "vector" else 0.3))
    return iv


def hand_module(model, form: str):
    """The site written out by hand: model.model.layers[l] or its mlp.down_proj."""
    layer = model.model.layers[LAYER]
    return layer if form == "vector" else layer.mlp.down_proj


def hand_hook(model, form: str, tensors: dict, m: float):
    """Δh of the paper's formula at the hand-written site, from the tensors alone (before Gemma's
    and OLMo 2's post-feed-forward norm: the hook is on down_proj itself)."""

    def add(module, args, output):
        x = args[0]
        if form == "vector":
            return output + m * tensors["delta_b"]
        if form == "lora":
            return output + m * ((x @ tensors["lora_A"].T) @ tensors["lora_B"].T)
        return output + m * (x @ tensors["delta_w"].T + tensors["delta_b"])

    return hand_module(model, form).register_forward_hook(add)


def logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(ids).logits


IDS = torch.tensor([[5, 17, 33, 8, 61, 40, 12], [9, 9, 70, 4, 22, 3, 88]])


# --- the site ---------------------------------------------------------------------------------------


def test_the_site_table_agrees_with_what_this_test_knows():
    for family, spec in FAMILIES.items():
        arch = architecture(build_config(family))
        assert spec.model_type in ARCHITECTURES, family
        assert ("mlp.down_proj" not in arch.sites) == spec.moe, family
        assert (arch.norm_after_mlp is not None) == spec.norm_after_mlp, family
        assert (arch.mlp_bias_switch is not None) == spec.mlp_bias_switch, family


@pytest.mark.parametrize(("family", "form"), SUPPORTED)
def test_site_resolves_to_the_hand_written_module(models, family, form):
    model, _ = models(family)
    get_form(form).check_config(model.config)
    assert get_form(form).site_module(model, LAYER) is hand_module(model, form)


@pytest.mark.parametrize(("family", "form"), REFUSED)
def test_moe_refuses_down_proj_forms_from_the_config_alone(models, family, form, tmp_path):
    """A MoE has no single down_proj: lora and local_weight are refused with the reason, from the
    config (before weights load) by the stage checks, and by the library if called directly."""
    config = build_config(family)
    with pytest.raises(ValueError, match="mixture of experts.*intervention=vector"):
        get_form(form).check_config(config)
    _, folder = models(family)
    cfg = compose_config([f"intervention={form}", "objective=sft", f"model.source={folder}", f"layer={LAYER}"])
    assert_refused(cfg, tmp_path / "run", rf"intervention={form} on model .*mixture of experts")
    model, _ = models(family)
    with pytest.raises(ValueError, match="mixture of experts"):
        new_intervention(model, form, LAYER, rank=2)


# --- the forward ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "form"), SUPPORTED)
def test_zero_is_bare_and_steered_equals_the_hand_hook(models, family, form):
    model, _ = models(family)
    bare = logits(model, IDS)
    iv = randomised(model, form)
    with iv.attached(model, multiplier=0.0):
        assert torch.equal(logits(model, IDS), bare)
    with iv.attached(model, multiplier=1.5):
        steered = logits(model, IDS)
    handle = hand_hook(model, form, iv.tensors(), 1.5)
    try:
        expected = logits(model, IDS)
    finally:
        handle.remove()
    torch.testing.assert_close(steered, expected, rtol=0, atol=TOL)
    assert (steered - bare).abs().max() > 1e-3, "the intervention changed nothing"


@pytest.mark.parametrize("family", [f for f, s in FAMILIES.items() if s.norm_after_mlp])
def test_the_site_is_before_the_post_feedforward_norm(models, family):
    """Gemma 2/3 and OLMo 2: the formula's ΔW acts inside down_proj, before post_feedforward_layernorm;
    the same Δh added after that norm is a different model, so the hand hook above tells them apart."""
    model, _ = models(family)
    iv = randomised(model, "local_weight")
    with iv.attached(model, multiplier=1.0):
        steered = logits(model, IDS)
    tensors = iv.tensors()

    def after_norm(module, args, output):  # the same Δh, at the wrong place
        x = after_norm.down_input
        return output + x @ tensors["delta_w"].T + tensors["delta_b"]

    layer = model.model.layers[LAYER]
    grab = layer.mlp.down_proj.register_forward_hook(lambda mod, args, out: setattr(after_norm, "down_input", args[0]))
    late = layer.post_feedforward_layernorm.register_forward_hook(after_norm)
    try:
        wrong = logits(model, IDS)
    finally:
        grab.remove()
        late.remove()
    assert (steered - wrong).abs().max() > 1e-3


# --- the stages -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("family", "form"), SUPPORTED)
def test_training_takes_a_step(models, family, form):
    model, _ = models(family)
    iv = new_intervention(model, form, LAYER, rank=2, init_scale=0.01, seed=1)
    before = {k: v.clone() for k, v in iv.tensors().items()}
    settings = TrainSettings(lr=0.05, epochs=1, batch_size=4, train_factors=(1.0,), seed=0)
    report = train_intervention(model, pairs(), iv, SFT(), settings, Accelerator(cpu=True), progress=False)
    assert report.steps == 1 and np.isfinite(report.log[-1]["loss"])
    after = iv.tensors()
    assert any(not torch.equal(before[k], after[k]) for k in before), "no tensor moved"
    assert all(torch.isfinite(t).all() for t in after.values())


@pytest.mark.parametrize(("family", "form"), SUPPORTED)
def test_sweep_matches_the_hand_hook_and_zero_is_bare(models, family, form):
    model, _ = models(family)
    iv = randomised(model, form, seed=2)
    data, grid = pairs(5, seed=1), [0.0, 1.0, -0.5]
    got = grid_losses(model, data, iv, grid, batch_size=3, progress=False)
    assert np.array_equal(got[0], pair_losses(model, data, batch_size=3))
    for k, m in enumerate(grid[1:], start=1):
        handle = hand_hook(model, form, iv.tensors(), m)
        try:
            np.testing.assert_allclose(got[k], pair_losses(model, data, batch_size=3), rtol=0, atol=1e-4)
        finally:
            handle.remove()


@pytest.mark.parametrize(("family", "form"), SUPPORTED)
def test_generation_matches_the_hand_hook_and_zero_is_bare(models, tokenizer, family, form):
    model, _ = models(family)
    iv = randomised(model, form, seed=3)
    prompts = ["w5 w17 w33 w8", "w9 w70 w4"]
    found = generate(
        model, tokenizer, prompts, intervention=iv, multipliers=[0.0, 2.0], max_new_tokens=4, progress=False
    )
    bare = generate(model, tokenizer, prompts, max_new_tokens=4, progress=False)
    handle = hand_hook(model, form, iv.tensors(), 2.0)
    try:
        hooked = generate(model, tokenizer, prompts, max_new_tokens=4, progress=False)
    finally:
        handle.remove()
    assert [g.token_ids for g in found if g.m == 0.0] == [g.token_ids for g in bare]
    assert [g.token_ids for g in found if g.m == 2.0] == [g.token_ids for g in hooked]


# --- the exports ------------------------------------------------------------------------------------


def expected_export(family: str, form: str, fmt: str) -> str | None:
    """None when the export must work, else a regex of its refusal: this test's own rules."""
    spec = FAMILIES[family]
    if fmt in ("steering-vectors", "gguf"):
        return None if form == "vector" else "one residual-stream vector"
    if fmt == "peft":
        return None if form == "lora" else "needs a LoRA run"
    if spec.moe:
        return "mixture of experts"
    if form == "lora":
        return None
    if form == "vector" and spec.norm_after_mlp:
        return "post_feedforward_layernorm"
    return None if spec.mlp_bias_switch else "no mlp_bias switch"


EXPORT_CELLS = [(f, form, fmt) for f, form in SUPPORTED for fmt in EXPORTS]


def make_run(run_dir, iv: DynamicAffine, folder: str) -> None:
    iv.save(run_dir)
    config = {"model": {"name": "tiny", "source": folder, "dtype": "float32"}, "layer": LAYER}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))


@pytest.fixture
def no_model_loads(monkeypatch):
    """A tripwire: loading any model's weights fails the test (refusals must come before)."""
    from transformers import AutoModelForCausalLM

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the export refused")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)


@pytest.mark.parametrize(("family", "form", "fmt"), [c for c in EXPORT_CELLS if expected_export(*c)])
def test_export_refusals_come_before_any_model_loads(models, family, form, fmt, tmp_path, request):
    model, folder = models(family)
    make_run(tmp_path / "run", randomised(model, form), folder)
    request.getfixturevalue("no_model_loads")
    with pytest.raises(ExportError, match=expected_export(family, form, fmt)):
        export(tmp_path / "run", 1.0, fmt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("family", [f for f, s in FAMILIES.items() if s.moe])
@pytest.mark.parametrize("form", ["lora", "local_weight"])
@pytest.mark.parametrize("fmt", ["peft", "merged"])
def test_a_down_proj_run_cannot_be_exported_onto_a_moe(models, family, form, fmt, tmp_path, no_model_loads):
    """A lora/local_weight run whose config names a MoE (copied by hand: training refuses it) is
    refused by the export's check, from the config alone."""
    _, folder = models(family)
    info = InterventionInfo(form, LAYER, 64, 32, rank=2 if form == "lora" else None)
    make_run(tmp_path / "run", DynamicAffine(info), folder)
    match = "needs a LoRA run" if (fmt, form) == ("peft", "local_weight") else "mixture of experts"
    with pytest.raises(ExportError, match=match):
        export(tmp_path / "run", 1.0, fmt, tmp_path / "out")


@pytest.mark.parametrize(("family", "form", "fmt"), [c for c in EXPORT_CELLS if expected_export(*c) is None])
def test_export_reloads_in_its_library_with_steers_losses(models, family, form, fmt, tmp_path):
    model, folder = models(family)
    iv = randomised(model, form, seed=4)
    make_run(tmp_path / "run", iv, folder)
    data, m = pairs(3, seed=5), 1.5
    expected = grid_losses(model, data, DynamicAffine.load(tmp_path / "run"), [m], progress=False)[0]
    assert np.abs(expected - pair_losses(model, data)).max() > 1e-3, "the run changes nothing"
    written = export(tmp_path / "run", m, fmt, tmp_path / "out")
    if fmt == "gguf":
        import gguf

        (tensor,) = gguf.GGUFReader(next(p for p in written if p.suffix == ".gguf")).tensors
        assert tensor.name == f"direction.{LAYER}"
        np.testing.assert_allclose(np.asarray(tensor.data), m * iv.delta_b.detach().numpy(), rtol=1e-6)
        return  # llama.cpp itself is not installed: the file's tensor is what it adds after block LAYER
    if fmt == "steering-vectors":
        vector = load_steering_vector(next(p for p in written if p.suffix == ".safetensors"))
        with vector.apply(model, multiplier=1.0):
            got = pair_losses(model, data)
    elif fmt == "peft":
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        got = pair_losses(PeftModel.from_pretrained(fresh, tmp_path / "out").eval(), data)
    else:
        from transformers import AutoModelForCausalLM

        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
        got = pair_losses(merged, data)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


def test_every_cell_of_the_docs_table_is_tested():
    """docs/models.md's family × form × stage/export table has one cell per tested combination."""
    text = (REPO / "docs" / "models.md").read_text()
    rows = [
        line for line in text.splitlines() if re.match(r"\| (" + "|".join(map(re.escape, FAMILIES)) + r") \|", line)
    ]
    assert len(rows) == len(CELLS)
    for family, form in CELLS:
        (row,) = [r for r in rows if r.startswith(f"| {family} | {form} |")]
        cells = [c.strip() for c in row.strip("|").split("|")][2:]
        if not supported(family, form):
            assert all(c.startswith("refused") for c in cells), row
            continue
        stages, exports = cells[:4], dict(zip(EXPORTS, cells[4:], strict=True))
        assert all(c == "✓" for c in stages), row
        for fmt, cell in exports.items():
            assert (cell == "✓") == (expected_export(family, form, fmt) is None), (row, fmt)


def test_site_path_is_read_from_the_config_without_weights(models):
    _, folder = models("qwen3")
    assert site_path(load_config(folder), "mlp.down_proj") == "mlp.down_proj"
    _, folder = models("mixtral")
    with pytest.raises(ValueError, match="mixture of experts"):
        site_path(load_config(folder), "mlp.down_proj")
