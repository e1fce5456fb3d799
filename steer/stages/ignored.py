"""Settings the chosen mode makes ineffective: refused before any work, never silently ignored.

``judge.m=3`` with the default ``judge.select=fit`` would run, and judge the m the fit chose: the
user believes m = 3 was judged. Every such case is one ``Rule`` in ``RULES``: the keys it covers
(a key covers everything under it, ``judge`` also the ``judge=...`` group choice), a function of
the composed config that says why they have no effect (None: they do), and the setting that would
give them one. ``check_ignored`` applies the rules to the keys the user set explicitly — the
command line's overrides (``HydraConfig.get().overrides.task``), never a value a preset
(``experiment=...``) or a config group brought in — and raises one ``ConfigError`` listing each
ignored key with its reason and its fix.

In a multirun every job shares the command line, so a setting may rightly apply to some jobs only
(``-m objective=diffmean,sft intervention.train.lr=0.05``): when the reason depends on a key the
job's overrides set (``Rule.depends``, possibly swept), the job logs a warning instead of failing.
Adding a case is one ``Rule`` line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from steer.core.forms import FORMS
from steer.judge.protocols import PROTOCOLS
from steer.judge.rubrics import AXBENCH
from steer.objectives import OBJECTIVES
from steer.stages.base import ConfigError

log = logging.getLogger("steer")


@dataclass(frozen=True)
class Setting:
    """One explicit override: the dotted key (or group) and its value as given."""

    key: str
    text: str


def explicit_settings(overrides: Sequence[str]) -> list[Setting]:
    """The keys ``overrides`` (Hydra override strings) set to a value: deletions, ``null`` (unset)
    and Hydra's own keys (``hydra.*``, ``hydra/launcher=...``) are not settings of the run."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for override in OverridesParser.create().parse_overrides(list(overrides)):
        key = override.key_or_group
        if override.is_delete() or key == "hydra" or key.startswith(("hydra.", "hydra/")):
            continue
        value = override.value()
        if value is None:
            continue
        out.append(Setting(key, override.input_line.split("=", 1)[1] if override.input_line else str(value)))
    return out


def covers(parent: str, key: str) -> bool:
    """Whether the dotted ``key`` is ``parent`` or lies under it."""
    return key == parent or key.startswith(parent + ".")


class View:
    """What the rules read: the composed config, the stages, and the explicitly set keys."""

    def __init__(self, cfg: DictConfig, settings: Sequence[Setting]) -> None:
        self.cfg = cfg
        self.settings = list(settings)
        self.order = [str(name) for name in cfg.stages or ()]
        self.stages = set(self.order)

    def get(self, key: str, default=None):
        return OmegaConf.select(self.cfg, key, default=default)

    def raw(self, key: str):
        """The value of ``key`` before interpolation (``${model.layer}`` for the default ``layer``)."""
        parent, _, leaf = key.rpartition(".")
        node = self.cfg if not parent else OmegaConf.select(self.cfg, parent)
        return OmegaConf.to_container(node, resolve=False).get(leaf) if node is not None else None

    @cached_property
    def rubrics(self) -> tuple[str, ...] | None:
        """The rubrics the judge stage would call (None: the data set has no judge protocol)."""
        rubrics = self.get("judge.rubrics")
        if rubrics is not None:
            return tuple(rubrics)
        protocol = PROTOCOLS.get(self.get("dataset.loader"))
        return None if protocol is None else protocol.rubrics

    @cached_property
    def samples(self) -> bool | None:
        """Whether judged answers are sampled (None: the data set has no judge protocol)."""
        do_sample = self.get("judge.generation.do_sample")
        if do_sample is not None:
            return bool(do_sample)
        protocol = PROTOCOLS.get(self.get("dataset.loader"))
        return None if protocol is None else protocol.do_sample


Reason = Callable[[View], "str | None"]


@dataclass(frozen=True)
class Rule:
    """Keys that have no effect when ``reason(view)`` says why (None: they take effect), and the
    setting that would give them one. ``depends``: the keys (or groups) the reason reads."""

    keys: tuple[str, ...]
    reason: Reason
    fix: str
    depends: tuple[str, ...]


def stage_off(name: str) -> Reason:
    return lambda v: None if name in v.stages else f"the {name} stage is not in stages=[{','.join(v.order)}]"


def none_of(*names: str) -> Reason:
    def reason(v: View) -> str | None:
        if v.stages & set(names):
            return None
        return f"none of the stages that read it ({', '.join(names)}) is in stages=[{','.join(v.order)}]"

    return reason


def grid_source(v: View) -> str:
    """Which key ``sweep.grid`` takes its multipliers from (its default is the objective's grid, else the form's)."""
    raw = v.raw("sweep.grid")
    if not isinstance(raw, str) or "intervention.grid" not in raw:
        return "sweep.grid"
    return "objective.grid" if "objective.grid" in raw and v.get("objective.grid") is not None else "intervention.grid"


def not_grid_source(key: str) -> Reason:
    def reason(v: View) -> str | None:
        source = grid_source(v)
        return None if source == key else f"the sweep's multipliers (sweep.grid) are taken from {source}"

    return reason


def no_training(v: View) -> str | None:
    objective = OBJECTIVES.get(v.get("objective.name"))
    if objective is None or objective.trains:
        return None
    return f"objective={objective.name} computes Δ in closed form, without training"


def not_random_init(v: View) -> str | None:
    init = v.get("intervention.train.init", "random")
    return None if init == "random" else f"intervention.train.init={init} starts from that estimate, not a random Δ"


def no_rank(v: View) -> str | None:
    form = FORMS.get(v.get("intervention.form"))
    if form is None or form.uses_rank:
        return None
    return f"intervention={form.name} has no rank (only intervention={RANKED} has one)"


def select_is_not(method: str, does: str) -> Reason:
    def reason(v: View) -> str | None:
        select = v.get("judge.select")
        return None if select == method else f"judge.select={select} {does}"

    return reason


SELECT_DOES = {
    "m": "chooses the judged m itself (fit: from the fitted curves; validation: among judge.candidates)",
    "candidates": "tries no candidates (only judge.select=validation does)",
    "max_util_drop": "does not read the utility budget (only judge.select=fit does)",
}


def not_expected(v: View) -> str | None:
    scoring = v.get("judge.scoring")
    return None if scoring == "expected" else f"judge.scoring={scoring} reads the reply's text, not its log-probs"


def local_logprobs(v: View) -> str | None:
    if v.get("judge.backend") != "local" or v.get("judge.scoring") != "expected":
        return None
    return "the local judge (transformers serve) returns no log-probs, so expected scores would stay empty"


def not_local(v: View) -> str | None:
    backend = v.get("judge.backend")
    return None if backend == "local" else f"judge.backend={backend} calls an endpoint and starts no local server"


def local(v: View) -> str | None:
    return "the local judge server (judge=local) takes no API key" if v.get("judge.backend") == "local" else None


def no_judge_calls(v: View) -> str | None:
    if v.rubrics is None or v.rubrics:
        return None
    return (
        f"with no rubric (dataset.loader={v.get('dataset.loader')}, judge.rubrics={v.get('judge.rubrics')}) the "
        "judge stage measures accuracy alone: nothing is generated and no judge is called"
    )


def greedy(v: View) -> str | None:
    if v.samples is None or v.samples:
        return None
    return (
        f"the judged answers are generated greedily (judge.generation.do_sample, default the protocol of "
        f"dataset.loader={v.get('dataset.loader')}), which draws nothing at random"
    )


def path_replaces_hub(v: View) -> str | None:
    path = v.get("dataset.path")
    return None if not path else f"dataset.path={path} is read instead of the hub"


def path_is_file(v: View) -> str | None:
    path = v.get("dataset.path")
    if not path or Path(str(path)).expanduser().is_dir():
        return None
    return f"dataset.path={path} names the data file itself (dataset.file is looked up inside a dataset.path folder)"


def answer_format_unused(v: View) -> str | None:
    if "answer_format" in str(v.raw("dataset.instruction") or ""):
        return None
    return "a run appends dataset.instruction to the prompts; dataset.answer_format is what steer.datacheck compares"


def no_own_answers(v: View) -> str | None:
    from steer.stages.data import load_dataset, needs_own_answers

    try:
        splits = load_dataset(v.cfg)
    except (ValueError, OSError):
        return None  # the data stage's check reports a data set that does not load
    return None if needs_own_answers(splits) else f"every pair of dataset={v.get('dataset.name')} has its A_n"


def interpolated_from(key: str, parent: str) -> Reason:
    def reason(v: View) -> str | None:
        raw = v.raw(parent)
        return None if isinstance(raw, str) and key in raw else f"{parent}={v.get(parent)} is set, so {key} is not read"

    return reason


def tracking_off(v: View) -> str | None:
    return None if v.get("tracking.wandb") else "tracking.wandb=false: nothing is sent to Weights & Biases"


def one_job(v: View) -> str | None:
    if v.get("device") == "cpu":
        return "device=cpu: jobs run on the CPU"
    return None if (v.get("node.jobs") or 1) > 1 else "node.jobs=1: each job runs alone on the run's device"


TRAINED = "|".join(name for name, cls in OBJECTIVES.items() if cls.trains)
RANKED = "|".join(name for name, form in FORMS.items() if form.uses_rank)
OBJECTIVE_OPTIONS = tuple(sorted({f"objective.{f.name}" for cls in OBJECTIVES.values() for f in fields(cls)}))
JUDGE_CALL_KEYS = tuple(
    f"judge.{k}"
    for k in (
        "model", "base_url", "api_key_env", "device", "startup_timeout", "concurrency", "max_retries", "timeout",
        "cache_dir", "temperature", "max_tokens", "scoring", "top_logprobs", "generation",
    )
)  # fmt: skip


def add_stage(name: str) -> str:
    return f"add {name} to stages (in the pipeline's order train, sweep, fit, judge)"


RULES: tuple[Rule, ...] = (
    # Keys read only by a stage that does not run.
    Rule(("judge",), stage_off("judge"), add_stage("judge"), ("stages",)),
    Rule(("fit",), stage_off("fit"), add_stage("fit"), ("stages",)),
    Rule(("sweep.per_token",), stage_off("sweep"), add_stage("sweep"), ("stages",)),
    Rule(("sweep.batch_size",), none_of("sweep", "judge", "train"), add_stage("sweep"), ("stages",)),
    Rule(
        ("sweep.grid", "intervention.grid", "objective.grid"),
        none_of("sweep", "fit", "judge"),
        add_stage("sweep"),
        ("stages",),
    ),
    Rule(
        ("intervention.train", "intervention.rank", *OBJECTIVE_OPTIONS),
        stage_off("train"),
        add_stage("train"),
        ("stages",),
    ),
    # Which multipliers the sweep uses: sweep.grid, else the objective's grid, else the form's.
    Rule(
        ("intervention.grid",),
        not_grid_source("intervention.grid"),
        "set sweep.grid=[...] (it wins over both grids)",
        ("sweep.grid", "objective.name"),
    ),
    Rule(("objective.grid",), not_grid_source("objective.grid"), "set sweep.grid=[...] alone", ("sweep.grid",)),
    # Training.
    Rule(("intervention.train",), no_training, f"a trained objective: objective={TRAINED}", ("objective.name",)),
    Rule(
        ("intervention.train.init_scale",),
        not_random_init,
        "intervention.train.init=random",
        ("intervention.train.init", "intervention.form", "objective.name"),
    ),
    Rule(("intervention.rank",), no_rank, f"intervention={RANKED}", ("intervention.form",)),
    # The judge: how m is chosen, how replies are scored, which backend, whether anything is judged.
    Rule(("judge.m",), select_is_not("fixed", SELECT_DOES["m"]), "judge.select=fixed", ("judge.select",)),
    Rule(
        ("judge.candidates",),
        select_is_not("validation", SELECT_DOES["candidates"]),
        "judge.select=validation",
        ("judge.select",),
    ),
    Rule(
        ("judge.max_util_drop",),
        select_is_not("fit", SELECT_DOES["max_util_drop"]),
        "judge.select=fit",
        ("judge.select",),
    ),
    Rule(
        ("judge.scoring", "judge.top_logprobs"),
        local_logprobs,
        "judge=openai (an endpoint that returns log-probs)",
        ("judge.backend", "judge.scoring"),
    ),
    Rule(("judge.top_logprobs",), not_expected, "judge.scoring=expected", ("judge.scoring",)),
    Rule(("judge.startup_timeout", "judge.device"), not_local, "judge=local", ("judge.backend",)),
    Rule(("judge.api_key_env",), local, "judge=openai", ("judge.backend",)),
    Rule(
        JUDGE_CALL_KEYS,
        no_judge_calls,
        f"name rubrics to judge generations too, e.g. judge.rubrics=[{','.join(AXBENCH)}]",
        ("dataset.loader", "judge.rubrics"),
    ),
    Rule(
        ("judge.generation.temperature", "judge.generation.top_p", "judge.generation.seed"),
        greedy,
        "judge.generation.do_sample=true",
        ("dataset.loader", "judge.generation.do_sample"),
    ),
    # The data set.
    Rule(("dataset.hub", "dataset.revision"), path_replaces_hub, "dataset.path=null", ("dataset.path",)),
    Rule(("dataset.file",), path_is_file, "point dataset.path at the folder that holds the file", ("dataset.path",)),
    Rule(
        ("dataset.answer_format",),
        answer_format_unused,
        "dataset.instruction='${dataset.answer_format}' to run with it",
        ("dataset.instruction",),
    ),
    Rule(
        ("dataset.generation",),
        no_own_answers,
        "dataset=axbench (A_n is the model's own answer)",
        ("dataset.loader", "dataset.path"),
    ),
    # Defaults that a top-level key replaces.
    Rule(("model.layer",), interpolated_from("model.layer", "layer"), "set layer= alone", ("layer",)),
    Rule(
        ("model.precision",),
        interpolated_from("model.precision", "precision"),
        "set precision= alone",
        ("precision",),
    ),
    # Where runs go.
    Rule(
        ("tracking.project", "tracking.entity", "tracking.group"),
        tracking_off,
        "tracking.wandb=true",
        ("tracking.wandb",),
    ),
    Rule(("node.devices",), one_job, "-m hydra/launcher=node node.jobs=N", ("node.jobs", "device")),
)


def ignored(
    cfg: DictConfig, settings: Sequence[Setting], rules: Sequence[Rule] = RULES
) -> list[tuple[Setting, Rule, str]]:
    """(setting, rule, reason) for every explicit setting that ``cfg`` makes ineffective (the first
    rule that applies to each)."""
    view = View(cfg, settings)
    found = []
    for setting in settings:
        for rule in rules:
            if any(covers(key, setting.key) for key in rule.keys):
                reason = rule.reason(view)
                if reason is not None:
                    found.append((setting, rule, reason))
                    break
    return found


def message(setting: Setting, rule: Rule, reason: str) -> str:
    return f"{setting.key}={setting.text} has no effect: {reason}. To use it: {rule.fix}"


def check_ignored(cfg: DictConfig, overrides: Sequence[str], multirun: bool = False) -> None:
    """Refuse (``ConfigError``) the explicitly set keys that ``cfg`` ignores; in a multirun job,
    warn instead where the reason depends on a key the job's overrides set (it may be swept)."""
    settings = explicit_settings(overrides)
    refused = []
    for setting, rule, reason in ignored(cfg, settings):
        swept = multirun and any(covers(d, s.key) or covers(s.key, d) for d in rule.depends for s in settings)
        if swept:
            log.warning("%s (this job of the multirun; other jobs may use it)", message(setting, rule, reason))
        else:
            refused.append(message(setting, rule, reason))
    if len(refused) == 1:
        raise ConfigError(refused[0])
    if refused:
        raise ConfigError("\n  ".join([f"{len(refused)} settings have no effect:", *refused]))


def hydra_overrides() -> tuple[list[str], bool]:
    """(the command line's overrides, whether this is a multirun job) when Hydra runs the job, else ([], False)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return [], False
    hydra = HydraConfig.get()
    return list(hydra.overrides.task), hydra.mode == RunMode.MULTIRUN
