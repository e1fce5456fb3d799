"""What a set of runs costs before it runs: forward tokens per stage, GPU-hours, judge calls, dollars.

Compute is estimated from FLOPs (a forward pass costs 2·params FLOPs per token, a training step 3×
that: forward + backward) at a stated dense-bf16 throughput and model-FLOPs utilisation; greedy
generation is bound by memory bandwidth instead (every decoding step reads all weights once per
batch), so its decode time is weight bytes / bandwidth per step. Judge cost is calls × tokens ×
the judge's price. Every assumption is a field of ``Hardware`` or ``JudgePrice`` and is printed
with the plan.

Memory per model (``memory``) is the weights plus the largest transient of each stage, from the
architecture's shapes (``steer.core.models.ModelSize``, counted from its config without a download):
the sweep's logits of one batch, training's saved activations of layers l..L, generation's KV cache.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from steer.core.models import ModelSize

STAGES = ("model load", "data (A_n generation)", "train", "sweep", "judge generation")


@dataclass(frozen=True)
class Hardware:
    """The accelerator the estimate assumes (default: one H100 SXM in bf16)."""

    name: str = "H100 SXM, bf16"
    peak_flops: float = 989e12  # dense bf16 tensor-core peak, FLOP/s
    mfu: float = 0.35  # model-FLOPs utilisation assumed for batched forward/backward passes
    bandwidth: float = 3.35e12  # HBM3 bytes/s, bounds greedy decoding
    bytes_per_param: int = 2  # bf16 weights
    load_bandwidth: float = 2e9  # bytes/s reading a checkpoint from local NVMe into the GPU, once per job
    memory: float = 80e9  # bytes of device memory

    def seconds_for_flops(self, flops: float) -> float:
        return flops / (self.peak_flops * self.mfu)


@dataclass(frozen=True)
class JudgePrice:
    """The judge model's price and the tokens one judge call is assumed to take."""

    model: str = "gpt-4.1-mini"
    usd_per_m_input: float = 0.40
    usd_per_m_output: float = 1.60
    template_tokens: int = 350  # rubric + instructions around the question and the answer
    output_tokens: int = 120  # a short explanation, then the rating


@dataclass(frozen=True)
class PairTokens:
    """Token counts of one pair: rendered prompt, A_p, A_n."""

    prompt: int
    positive: int
    negative: int

    @property
    def row(self) -> int:
        """One packed row [prompt | A_p | A_n]: what the sweep and training score per pair."""
        return self.prompt + self.positive + self.negative


@dataclass(frozen=True)
class JobSpec:
    """One run of the plan: its model size, data and the work each stage does."""

    name: str
    model: str
    params: float
    train: Sequence[PairTokens]
    test: Sequence[PairTokens]
    grid: int  # multipliers the sweep scores
    epochs: int  # 0 for closed-form objectives (DiffMean: one forward pass)
    trained: bool
    generate_negatives: bool = False  # the data stage generates A_n (AxBench)
    max_new_tokens: int = 128
    generation_batch: int = 16
    judge_calls_per_answer: int = 0  # 0: no judge for this data set
    judge_multipliers: int = 1  # steered generations per test prompt that the judge scores
    size: ModelSize | None = None  # the architecture's shapes: the plan then prints memory figures
    layer: int = 0
    sweep_batch: int = 16  # pairs per sweep forward
    train_batch: int = 16  # pairs per training micro-step (each scored at +m and -m: two rows)


# Bytes of saved activations per token per decoder layer for a backward pass, in units of the
# model's bytes per value (Korthikanti et al. 2022, "Reducing Activation Recomputation": 34·s·b·h
# bytes in 16-bit without recomputation; the 5·a·s²·b attention term is absent with fused attention).
ACTIVATION_VALUES_PER_HIDDEN = 17


@dataclass(frozen=True)
class Memory:
    """Peak device bytes of one job's stages (weights included)."""

    weights: float
    sweep: float
    train: float
    generation: float


def memory(job: JobSpec, hw: Hardware) -> Memory:
    """The weights plus each stage's largest transient, for the longest packed row of the job's data:
    sweep = a batch of logits (model dtype) and their fp32 log-softmax; train = the saved activations
    of layers layer..L for 2·train_batch rows plus logits, fp32 log-softmax and its gradient;
    generation = the KV cache of a batch of (longest prompt + max_new_tokens) plus one fp32 logits row each."""
    size, b = job.size, hw.bytes_per_param
    if size is None:
        raise ValueError(f"memory: job {job.name} on {job.model} has no model size")
    pairs = [*job.train, *job.test]
    width = max((p.row for p in pairs), default=0)
    prompt = max((p.prompt for p in pairs), default=0)
    weights = size.params * b
    sweep = weights + job.sweep_batch * width * size.vocab * (b + 4)
    rows = 2 * job.train_batch * width
    saved = rows * (size.layers - job.layer) * ACTIVATION_VALUES_PER_HIDDEN * size.hidden * b
    train = weights + saved + rows * size.vocab * (b + 8)
    kv = job.generation_batch * (prompt + job.max_new_tokens) * size.layers * 2 * size.kv_width * b
    generation = weights + kv + job.generation_batch * size.vocab * 4
    return Memory(weights, sweep, train, generation)


@dataclass
class StageCost:
    tokens: float = 0.0
    seconds: float = 0.0


@dataclass
class Plan:
    jobs: int
    stages: dict[str, StageCost] = field(default_factory=lambda: {s: StageCost() for s in STAGES})
    judge_calls: int = 0
    judge_input_tokens: float = 0.0
    judge_output_tokens: float = 0.0
    judge_usd: float = 0.0

    @property
    def gpu_hours(self) -> float:
        return sum(s.seconds for s in self.stages.values()) / 3600


def generation_seconds(params: float, prompts: Sequence[int], new_tokens: int, batch: int, hw: Hardware) -> float:
    """Greedy generation of ``new_tokens`` per prompt in batches: prefill by FLOPs, decoding by
    bandwidth (one read of the weights per step and batch)."""
    prefill = hw.seconds_for_flops(2 * params * sum(prompts))
    batches = -(-len(prompts) // batch)
    decode = batches * new_tokens * params * hw.bytes_per_param / hw.bandwidth
    return prefill + decode


def estimate(jobs: Sequence[JobSpec], hw: Hardware, judge: JudgePrice) -> Plan:
    """The plan of ``jobs``. A_n generation is counted once per (model, data set): it is cached."""
    plan = Plan(jobs=len(jobs))
    generated: set[tuple[str, str]] = set()
    for job in jobs:
        pairs = [*job.train, *job.test]
        plan.stages["model load"].seconds += job.params * hw.bytes_per_param / hw.load_bandwidth
        if job.generate_negatives and (job.model, job.name) not in generated:
            generated.add((job.model, job.name))
            stage = plan.stages["data (A_n generation)"]
            stage.tokens += sum(p.prompt + job.max_new_tokens for p in pairs)
            prompts = [p.prompt for p in pairs]
            stage.seconds += generation_seconds(job.params, prompts, job.max_new_tokens, job.generation_batch, hw)
        rows = sum(p.row for p in job.train)
        stage = plan.stages["train"]
        if job.trained:
            # One forward pass caches the layer input; each epoch scores every pair at +m and -m.
            stage.tokens += rows * (1 + 2 * job.epochs)
            stage.seconds += hw.seconds_for_flops(2 * job.params * rows * (1 + 3 * 2 * job.epochs))
        else:
            stage.tokens += rows
            stage.seconds += hw.seconds_for_flops(2 * job.params * rows)
        sweep_tokens = sum(p.row for p in pairs) * job.grid
        plan.stages["sweep"].tokens += sweep_tokens
        plan.stages["sweep"].seconds += hw.seconds_for_flops(2 * job.params * sweep_tokens)
        if job.judge_calls_per_answer:
            prompts = [p.prompt for p in job.test] * job.judge_multipliers
            stage = plan.stages["judge generation"]
            stage.tokens += sum(prompts) + len(prompts) * job.max_new_tokens
            stage.seconds += generation_seconds(job.params, prompts, job.max_new_tokens, job.generation_batch, hw)
            calls = len(prompts) * job.judge_calls_per_answer
            plan.judge_calls += calls
            # Each call shows the rubric, the question and the steered answer.
            plan.judge_input_tokens += calls * judge.template_tokens + job.judge_calls_per_answer * (
                sum(prompts) + len(prompts) * job.max_new_tokens
            )
            plan.judge_output_tokens += calls * judge.output_tokens
    plan.judge_usd = (
        plan.judge_input_tokens * judge.usd_per_m_input + plan.judge_output_tokens * judge.usd_per_m_output
    ) / 1e6
    return plan


def format_plan(plan: Plan, hw: Hardware, judge: JudgePrice, notes: Sequence[str] = ()) -> str:
    """The plan as text: per stage tokens and GPU-hours, totals, judge calls and cost, assumptions."""
    lines = [f"jobs: {plan.jobs}", "", f"{'stage':<24}{'forward tokens':>18}{'GPU-hours':>12}"]
    for name, cost in plan.stages.items():
        lines.append(f"{name:<24}{cost.tokens:>18,.0f}{cost.seconds / 3600:>12.2f}")
    total_tokens = sum(c.tokens for c in plan.stages.values())
    lines.append(f"{'total':<24}{total_tokens:>18,.0f}{plan.gpu_hours:>12.2f}")
    lines += [
        "",
        f"judge ({judge.model}): {plan.judge_calls:,} calls, {plan.judge_input_tokens:,.0f} input + "
        f"{plan.judge_output_tokens:,.0f} output tokens = ${plan.judge_usd:,.2f}",
        "",
        "assumptions:",
        f"- GPU: {hw.name}, {hw.peak_flops / 1e12:.0f} TFLOP/s peak at {hw.mfu:.0%} MFU for forward/backward "
        f"(2·params FLOPs per token forward, ×3 for a training step); greedy decoding memory-bound at "
        f"{hw.bandwidth / 1e12:.2f} TB/s ({hw.bytes_per_param} bytes per weight per step and batch); every job "
        f"loads its model once at {hw.load_bandwidth / 1e9:.0f} GB/s",
        f"- judge: ${judge.usd_per_m_input:.2f} / ${judge.usd_per_m_output:.2f} per 1M input/output tokens; "
        f"{judge.template_tokens} rubric tokens + question + answer in, {judge.output_tokens} tokens out per call",
        *(f"- {note}" for note in notes),
    ]
    return "\n".join(lines)


def peak_of(mem: Memory) -> float:
    return max(mem.sweep, mem.train, mem.generation)


def format_memory(jobs: Sequence[JobSpec], hw: Hardware) -> str:
    """Per model: parameters (active per token), and the peak memory of each stage over its jobs, in
    GiB, with whether it fits the assumed device."""
    gib = 2**30
    peaks: dict[str, tuple[JobSpec, Memory]] = {}
    for job in jobs:
        if job.size is None:
            continue
        mem = memory(job, hw)
        worst = peaks.get(job.model)
        if worst is None or peak_of(mem) > peak_of(worst[1]):
            peaks[job.model] = (job, mem)
    head = f"{'model':<28}{'params (active)':>20}{'weights':>9}{'sweep':>8}{'train':>8}{'generate':>10}"
    head += f"  fits {hw.memory / 1e9:.0f} GB"
    lines = [f"memory (GiB, {hw.bytes_per_param} bytes per weight):", head]
    for model, (job, mem) in peaks.items():
        size = job.size
        params = f"{size.params / 1e9:.2f}B ({size.active_params / 1e9:.2f}B)"
        peak = peak_of(mem)
        fits = "yes" if peak <= hw.memory else f"no ({peak / 1e9:.0f} GB)"
        lines.append(
            f"{model:<28}{params:>20}{mem.weights / gib:>9.1f}{mem.sweep / gib:>8.1f}{mem.train / gib:>8.1f}"
            f"{mem.generation / gib:>10.1f}  {fits}"
        )
    lines.append(
        "  sweep: + one batch of logits and fp32 log-softmax; train: + saved activations of layers l..L "
        f"({ACTIVATION_VALUES_PER_HIDDEN}·hidden values per token and layer) and logits with gradient, "
        "2 rows per pair; "
        "generate: + KV cache of a batch at the longest prompt + max_new_tokens"
    )
    return "\n".join(lines)


@dataclass(frozen=True)
class ForwardShape:
    """What a forward pass of one token costs in a model, from its shapes (``forward_shape``)."""

    layers: int
    layer_weights: int  # weights of one decoder layer's Linears a token passes through (a MoE: its routed experts)
    attention_width: int  # query heads × head dim: QKᵀ and attention·V cost 2·this FLOPs per context token each
    hidden: int
    vocab: int


def context_sum(pair: PairTokens) -> int:
    """Σ over the packed row's tokens of the positions each attends to: [prompt | A_p] causally, then
    A_n after the prompt only (``steer.core.metrics.packed_inputs``)."""
    first = pair.prompt + pair.positive
    return first * (first + 1) // 2 + pair.negative * pair.prompt + pair.negative * (pair.negative + 1) // 2


def forward_flops(shape: ForwardShape, pair: PairTokens, first_layer: int = 0) -> float:
    """Matmul FLOPs of one packed row through layers first_layer..L plus the answer-only logits:
    2·weights per token per layer, 4·attention_width per attended position per layer, and
    2·hidden·vocab per answer token. Norms, activations and softmax (elementwise) are not counted."""
    per_layer = 2 * shape.layer_weights * pair.row + 4 * shape.attention_width * context_sum(pair)
    logits = 2 * shape.hidden * shape.vocab * (pair.positive + pair.negative)
    return (shape.layers - first_layer) * per_layer + logits


def sweep_flops(shape: ForwardShape, pairs: Sequence[PairTokens], grid: int, layer: int) -> float:
    """The sweep engine's work: each pair once through the whole model, then grid - 1 more times
    through layers layer..L (prefix reuse)."""
    return sum(forward_flops(shape, p) + (grid - 1) * forward_flops(shape, p, layer) for p in pairs)


def train_step_flops(shape: ForwardShape, pairs: Sequence[PairTokens], layer: int) -> float:
    """One training step over ``pairs`` (two rows each, at +m and -m, from the cached layer input):
    the forward through layers layer..L, and the backward of the activations only (the base is
    frozen: no weight gradients) through the logits and layers layer+1..L: one matmul per forward
    matmul (dX = dY·Wᵀ) and two per attention matmul (dQ, dK from dS; dP, dV from dO). Δ's own
    gradient (a vector, or a rank-r or d×d update of one layer) is not counted."""
    total = 0.0
    for p in pairs:
        forward = forward_flops(shape, p, layer)
        backward = (shape.layers - layer - 1) * (
            2 * shape.layer_weights * p.row + 8 * shape.attention_width * context_sum(p)
        ) + 2 * shape.hidden * shape.vocab * (p.positive + p.negative)
        total += 2 * (forward + backward)
    return total


def matmul_rate(
    rows: int, inner: int, cols: int, dtype: str = "float32", device: str = "cpu", seconds: float = 1.0
) -> float:
    """This machine's measured FLOP/s of torch.matmul at [rows × inner] @ [inner × cols] (the model's
    [tokens × hidden] × [hidden × intermediate]): the best of repeated timings over ~``seconds``,
    after ``seconds / 2`` untimed (a 1 s timing from cold read 111–137 GFLOP/s where 3 s read 150–165)."""
    import time

    import torch

    a = torch.randn(rows, inner, dtype=getattr(torch, dtype), device=device)
    b = torch.randn(inner, cols, dtype=getattr(torch, dtype), device=device)
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    warm = time.perf_counter() + seconds / 2  # untimed: the first calls run below the steady rate
    while time.perf_counter() < warm:
        torch.matmul(a, b)
    sync()
    best, spent = float("inf"), 0.0
    while spent < seconds or best == float("inf"):
        start = time.perf_counter()
        torch.matmul(a, b)
        sync()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
    return 2 * rows * inner * cols / best


def forward_shape(model) -> ForwardShape:
    """The ``ForwardShape`` of a loaded (or meta-device) causal LM, counted from its first decoder layer."""
    from torch import nn

    from steer.core.models import architecture, decoder_layers, text_config

    layer = decoder_layers(model)[0]
    weights = sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear))
    arch, config = architecture(model.config), text_config(model.config)
    if arch.experts is not None:
        count, per_token = (int(getattr(config, key)) for key in arch.experts)
        experts = sum(p.numel() for p in layer.get_submodule(arch.experts_path).parameters())
        weights += experts * per_token // count
    heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ForwardShape(
        len(decoder_layers(model)), weights, heads * head_dim, int(config.hidden_size), int(config.vocab_size)
    )
