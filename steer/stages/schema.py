"""Every config key's one home, type and default: dataclasses in Hydra's ConfigStore.

Plain dataclasses, not hydra-zen: steer's options are data, not objects to instantiate, so
``builds`` would add a dependency and nothing else; OmegaConf types a dataclass node and closes it,
which is all the schema needs. Each group option carries only its own keys, so a setting that
cannot take effect fails composition naming the key (``steer.stages.ignored.composition_error``):

* ``intervention=vector|lora|local_weight``: only lora has ``rank``;
* ``train``: chosen by the form (``train: ${intervention}`` in steer/conf/config.yaml), present only
  when the objective trains (an ``Estimator`` objective overrides it to null);
* ``sweep``: the form's grid, or the estimator's (DiffMean's -4..4);
* ``objective``: each objective's dataclass fields (``steer.objectives``), so a new option there
  is a key here;
* ``judge=local|openai`` and ``judge/select=fixed|validation|fit``.

``layer`` and ``precision`` are top-level keys set by the model's option (steer/conf/model/*.yaml,
``@package _global_``): the model's paper layer is the default and ``model`` has no ``layer``.
docs/configuration.md is generated from this module (``python -m steer.stages.reference``).
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass, field, fields, is_dataclass, make_dataclass
from typing import Any, ClassVar  # noqa: UP035 (OmegaConf reads typing's forms)

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf

from steer.objectives import OBJECTIVES, Estimator

# The multipliers each form is swept over (docs/training.md): the paper's -20..20 for vectors.
VECTOR_GRID = [-20.0, -16.0, -12.0, -8.0, -6.0, -4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0, 6.0, 8.0, 12.0, 16.0, 20.0]
WEIGHT_GRID = [-2.0, -1.6, -1.2, -0.8, -0.6, -0.4, -0.2, -0.1, 0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.2, 1.6, 2.0]
ESTIMATOR_GRID = [-4.0, -3.0, -2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0]


def grid(values: list[float]):
    return field(default_factory=lambda: list(values))


@dataclass
class Vector:
    """Δb added to the residual stream at the output of decoder layer ``layer``."""

    form: str = "vector"


@dataclass
class Lora:
    """ΔW = lora_B @ lora_A inside the MLP down_proj of layer ``layer``, no Δb."""

    form: str = "lora"
    rank: int = 4


@dataclass
class LocalWeight:
    """Dense ΔW and Δb inside the MLP down_proj of layer ``layer``."""

    form: str = "local_weight"


@dataclass
class Train:
    """The optimiser of a trained objective. batch_size counts pairs per process; each pair is
    scored under +m and -m with m drawn per pair and step from ``factors`` (a list, or one string
    'a/b/c', the form a tuning study's categorical choice can hold)."""

    lr: float = 0.01
    epochs: int = 4
    batch_size: int = 8
    grad_accum: int = 1
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    factors: Any = field(default_factory=lambda: [0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.6, 2.0])
    # Dropout on the steering term Δh while training (the paper's code: 0.1; per row for a vector).
    dropout: float = 0.0
    # both: +m prefers A_p and -m prefers A_n; positive: +m only (the paper's SPLIT local weights).
    directions: str = "both"


@dataclass
class TrainVector(Train):
    """A vector's optimiser; ``init``: random (Δb ~ N(0, init_scale²) per coordinate) or the name
    of an estimator (diffmean: start from the DiffMean vector, estimated in batches of batch_size)."""

    lr: float = 0.08
    factors: Any = field(default_factory=lambda: [2, 4, 6, 8, 12, 16, 20])
    init: str = "random"
    init_scale: float = 0.01


@dataclass
class TrainLora(Train):
    lr: float = 0.02


@dataclass
class Sweep:
    """The multipliers m scored (the form's default grid), pairs per forward pass, and whether each
    answer loss is divided by its token count (off in the paper)."""

    grid: list[float] = grid(VECTOR_GRID)
    batch_size: int = 16
    per_token: bool = False


@dataclass
class SweepWeight(Sweep):
    grid: list[float] = grid(WEIGHT_GRID)


@dataclass
class SweepEstimator(Sweep):
    grid: list[float] = grid(ESTIMATOR_GRID)


@dataclass
class Fit:
    """SLSQP restarts of each validity-decay fit (steer/analysis/fit.py), from a screen seeded by ``seed``."""

    restarts: int = 16
    seed: int = "${seed}"  # type: ignore[assignment]
    # Bootstrap replicates over examples for intervals on every parameter and region (0 = off; each
    # replicate refits the train and test curves from the point fit plus 2 screened restarts).
    bootstrap: int = 0


@dataclass
class Generation:
    """How the judged answers are generated; null: the protocol's (PowerSeeking: 200 tokens, greedy;
    AxBench: 128, sampled at 1.0)."""

    max_new_tokens: int | None = None
    do_sample: bool | None = None
    temperature: float | None = None
    top_p: float = 1.0
    seed: int = "${seed}"  # type: ignore[assignment]
    batch_size: int = 8


@dataclass
class Fixed:
    """judge/select=fixed: the judged multiplier is ``m``."""

    method: ClassVar[str] = "fixed"
    m: float | None = None


@dataclass
class Validation:
    """judge/select=validation: the best mean score over ``candidates`` (null: the positive
    multipliers of sweep.grid) on half of the test prompts, reported on the other half."""

    method: ClassVar[str] = "validation"
    candidates: list[float] | None = None


@dataclass
class FitSelect:
    """judge/select=fit: the m the fitted train curves predict to maximise PrefOdds while UtilOdds
    stays within ``max_util_drop`` of its value at m = 0 (no judge calls)."""

    method: ClassVar[str] = "fit"
    max_util_drop: float = 1.0


SELECTS = (Fixed, Validation, FitSelect)


@dataclass
class Judge:
    """What every judge reads: replies scored ``parsed`` or ``expected`` (the probability-weighted
    score from ``top_logprobs``), reply tokens (null: each rubric's own), rubrics (null: the data
    set's protocol), the answer cache (null: $STEER_CACHE/judge). Vanilla (m = 0) is always scored."""

    defaults: list[Any] = field(default_factory=lambda: [{"select": "fit"}, "_self_"])
    scoring: str = "parsed"
    top_logprobs: int = 10
    temperature: float = 0.0
    max_tokens: int | None = None
    rubrics: list[str] | None = None
    max_retries: int = 3
    cache_dir: str | None = None
    generation: Generation = field(default_factory=Generation)


@dataclass
class LocalJudge(Judge):
    """judge=local: `transformers serve` of ``model`` (a model source) on 127.0.0.1, started on a
    cache miss; a 135M judge exercises the pipeline, it is no judge of quality."""

    backend: str = "local"
    model: str = "embedded:smollm2-135m"
    device: str = "auto"
    # Seconds to wait for the server's /health and /v1/models.
    startup_timeout: float = 300.0
    concurrency: int = 2
    timeout: float = 600.0


@dataclass
class OpenAIJudge(Judge):
    """judge=openai: the paper's judge at an OpenAI-compatible endpoint; the key is read from the
    environment variable ``api_key_env`` (never from the config)."""

    backend: str = "openai"
    model: str = "gpt-4.1-mini"
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = 16
    timeout: float = 60.0


@dataclass
class Tracking:
    """Weights & Biases: online with WANDB_API_KEY, offline files in the run dir otherwise; group
    null: the multirun's directory and start time."""

    wandb: bool = True
    project: str = "steer"
    entity: str | None = None
    group: str | None = None


@dataclass
class Tune:
    """What a tuning trial returns (docs/tuning.md): the best PrefOdds on ``split`` while UtilOdds
    stays within ``delta`` of its value at m = 0, from the swept points or the fit; split null: a
    plain run. ``study``: the Optuna study's name (the tune_* presets set it)."""

    split: str | None = None
    delta: float = 1.0
    value: str = "swept"
    study: str | None = None


@dataclass
class Node:
    """``-m hydra/launcher=node node.jobs=4``: jobs side by side, each holding one device slot (GPU
    devices[k % len(devices)], null: every visible GPU) and cores // jobs CPU threads."""

    jobs: int = 1
    devices: list[int] | None = None


# The top-level keys (steer/conf/config.yaml adds the groups and Hydra's settings).
BASE = {
    "stages": ["train", "sweep", "fit"],  # run in the order train -> sweep -> fit -> judge
    "force": False,  # re-run stages even when their outputs exist for the same config
    "seed": 0,
    "device": "auto",  # auto = cuda when available, else cpu
    "progress": True,
    "output_root": "outputs",
    "run_id": "${dataset.name}/${model.name}/${intervention.form}-${objective.name}/layer${layer}",
    "fit": Fit,
    "tracking": Tracking,
    "tune": Tune,
    "node": Node,
}

# Top-level keys each model's option sets (steer/conf/model/*.yaml): its paper layer and precision.
MODEL_KEYS = ("layer", "precision")
INTERVENTIONS = {"vector": Vector, "lora": Lora, "local_weight": LocalWeight}
TRAINS = {"vector": TrainVector, "lora": TrainLora, "local_weight": Train}
SWEEPS = {"vector": Sweep, "lora": SweepWeight, "local_weight": SweepWeight, "estimator": SweepEstimator}
JUDGES = {"local": LocalJudge, "openai": OpenAIJudge}


@functools.cache  # one schema per class: a composed node's type names its option (``choices``)
def objective_schema(cls: type) -> type:
    """The ``objective=NAME`` node: ``name`` and the objective's own dataclass fields; an estimator
    has no ``train`` node and the estimator's sweep grid."""
    types = inspect.get_annotations(cls, eval_str=True)
    own = [(f.name, types[f.name], field(default=f.default)) for f in fields(cls)]
    defaults = ["_self_"]
    if issubclass(cls, Estimator):
        defaults = [{"override /train@_global_.train": None}, {"override /sweep@_global_.sweep": "estimator"}, "_self_"]
    return make_dataclass(
        f"{cls.__name__}Options",
        [("defaults", list[Any], field(default_factory=lambda: list(defaults))), ("name", str, cls.name), *own],
        namespace={"__doc__": cls.__doc__},
    )


def groups() -> dict[str, dict[str, Any]]:
    """Every config group (Hydra's path, e.g. judge/select) and its options' schemas."""
    return {
        "intervention": INTERVENTIONS,
        "train": TRAINS,
        "sweep": SWEEPS,
        "objective": {name: objective_schema(cls) for name, cls in OBJECTIVES.items()},
        "judge": JUDGES,
        "judge/select": {cls.method: cls for cls in SELECTS},
    }


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (steer/conf/config.yaml's defaults list picks them)."""
    store = ConfigStore.instance()
    store.store(name="steer", node=BASE)
    for group, options in groups().items():
        for name, node in options.items():
            store.store(group=group, name=name, node=node)


def keys_of(schema: type) -> list[str]:
    """The keys of a group option's schema (its fields, less Hydra's defaults list)."""
    return [f.name for f in fields(schema) if f.name != "defaults"]


def homes(key: str, chosen: dict[str, str | None]) -> list[str]:
    """Where the dotted ``key`` takes effect when the ``chosen`` options lack it: the other options
    of its group that have it (``intervention=lora``), else the key of that name elsewhere
    (``model.layer`` -> ``layer=``, ``intervention.grid`` -> ``sweep.grid=``)."""
    leaf, found = key.rpartition(".")[2], []
    if key.replace(".", "/") in groups():  # a group set as a value: judge.select=fixed
        return [f"{key.replace('.', '/')}={'|'.join(groups()[key.replace('.', '/')])}"]
    for group, options in groups().items():
        rest = key.removeprefix(group.replace("/", ".") + ".")
        having = [name for name, schema in options.items() if rest in keys_of(schema) and rest != key]
        found += [f"{group}={'|'.join(having)}"] if having and chosen.get(group) not in having else []
    if found:
        return found
    found = [f"{leaf}="] if leaf in MODEL_KEYS else []
    sections = {g.replace("/", "."): list(o.values()) for g, o in groups().items()} | {
        k: [v] for k, v in BASE.items() if isinstance(v, type)
    }
    return found + [f"{p}.{leaf}=" for p, schemas in sections.items() if any(leaf in keys_of(s) for s in schemas)]


def undeclared(cfg: DictConfig, key: str) -> bool:
    """Whether the dotted ``key`` lies in a schema's node that does not declare it (``+key=`` adds one)."""
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else None
    kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
    return is_dataclass(kind) and leaf not in keys_of(kind)


def choices(cfg: DictConfig) -> dict[str, str | None]:
    """The option of each schema group in a composed config, read from its node's type (None: no node)."""
    out = {}
    for group, options in groups().items():
        node = OmegaConf.select(cfg, group.replace("/", "."))
        kind = OmegaConf.get_type(node) if isinstance(node, DictConfig) else None
        out[group] = next((name for name, schema in options.items() if schema is kind), None)
    return out


# The key in a group's node that names its option: set by the group choice, never on its own.
IDENTITY = {"intervention": "form", "objective": "name", "judge": "backend"}


def mismatched_identity(cfg: DictConfig) -> str | None:
    """The error when ``intervention.form``, ``objective.name`` or ``judge.backend`` names another
    option of its group than the one chosen (``intervention.form=lora`` under ``intervention=vector``);
    else None. A value with no option of its own (a registered form, docs/extending.md) is the way
    to select it on top of an option's keys."""
    chosen, options = choices(cfg), groups()
    for group, key in IDENTITY.items():
        value = OmegaConf.select(cfg, f"{group}.{key}")
        if chosen.get(group) is not None and value != chosen[group] and value in options[group]:
            return (
                f"{group}.{key}={value!r} disagrees with {group}={chosen[group]}: {group}.{key} follows the "
                f"group; choose the option instead: {group}={value}"
            )
    return None
