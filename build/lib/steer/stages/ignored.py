"""Settings that cannot take effect, refused before any work, naming the key and what would use it.
The schema (``steer.stages.schema``) refuses a key no chosen option has; the rest depend on values:
keys only stages outside ``stages`` read (their ``keys``), and ``RULES``. Only command-line keys count,
never a preset's; in a multirun job a reason that reads a key the overrides set is only a warning."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from steer.judge.protocols import PROTOCOLS
from steer.objectives import OBJECTIVES
from steer.stages.base import ConfigError
from steer.stages.data import load_dataset, needs_own_answers
from steer.stages.schema import homes, undeclared

TRAINED = "objective=" + "|".join(n for n, c in OBJECTIVES.items() if c.trains)


def explicit_settings(overrides: Sequence[str]) -> list[tuple[str, str]]:
    """(key, value text) of each override that sets a value: not a deletion, null, sweep or Hydra's own."""
    skip = lambda o: o.is_delete() or o.is_sweep_override() or re.match(r"hydra\b", o.key_or_group) or o.value() is None
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    return [(o.key_or_group, o.input_line.split("=", 1)[1]) for o in parsed if not skip(o)]


def covers(parent: str, key: str) -> bool:
    return key == parent or key.startswith((parent + ".", parent + "/"))


def unknown_key(key: str, text: str, choices: dict) -> str:
    """The line for ``key``, which the chosen options lack, naming the options (or the key) that have it."""
    parent, _, leaf = key.rpartition(".")
    group = parent.replace(".", "/")
    owner, fix = f"{group}={choices[group]}" if choices.get(group) else parent or "the config", homes(key, choices)
    why = f"{owner} has no key {leaf}"
    if group == "train" and choices.get("train") is None:  # an estimator drops the node
        why, fix = f"objective={choices.get('objective') or 'diffmean'} trains nothing (no train settings)", [TRAINED]
    if not fix:
        return f"{key}={text}: no such key ({why}; docs/configuration.md lists every key)"
    return f"{key}={text} has no effect: {why}. To use it: {' or '.join(fix)}"


def failing_key(err: Exception) -> str | None:
    """The key of the override Hydra's composition error names (None: it names none)."""
    match = re.search(r"override '([^']+)'|override (\S+?)=", str(err))
    return (match.group(1) or match.group(2)).lstrip("+~") if match else None


def composition_error(err: Exception, overrides: Sequence[str], choices: dict) -> str:
    """One line for Hydra's composition error: the key it names, and the options that have it or why."""
    key, given = failing_key(err), dict(explicit_settings(overrides))
    if key and "To append" in str(err):
        return unknown_key(key, given.get(key, "?"), choices)
    first, missing = str(err.__cause__ or err).strip().splitlines()[0], re.search(r"find '(.+)/([^/']+)'", str(err))
    if missing:  # an unknown option: Hydra lists the group's options one per line
        first = f"{missing[1]}={missing[2]} is not one of " + ", ".join(re.findall(r"^\t(\S+)$", str(err), re.M))
    return f"{key}={given.get(key, '?')}: {first}" if key else first


class Rule(NamedTuple):
    """``keys`` have no effect when ``test(cfg)`` (``why`` says why; it reads ``depends``); ``fix`` gives them one."""

    keys: str
    test: Callable[[DictConfig], bool]
    why: str
    fix: str
    depends: str = "stages"


def unset(cfg: DictConfig, key: str, attribute: str):  # the value, or when null the data set protocol's
    value, found = OmegaConf.select(cfg, key), PROTOCOLS.get(cfg.dataset.get("loader"))
    return value if value is not None else getattr(found, attribute, None)


JUDGE = "model base_url api_key_env device startup_timeout concurrency max_retries timeout cache_dir temperature "
DATA = "dataset.path={cfg.dataset.path} "
RULES: tuple[Rule, ...] = (
    Rule("train", lambda c: not OBJECTIVES[c.objective.name].trains, "objective={cfg.objective.name} trains nothing",
         TRAINED, "objective"),
    Rule("train.init_scale", lambda c: c.train.get("init", "random") != "random",
         "train.init={cfg.train.init} starts from that estimate", "train.init=random", "train.init objective"),
    Rule("judge.scoring judge.top_logprobs", lambda c: c.judge.backend == "local" and c.judge.scoring == "expected",
         "the local judge (transformers serve) returns no log-probs", "judge=openai", "judge judge.scoring"),
    Rule("judge.top_logprobs", lambda c: c.judge.scoring != "expected", "judge.scoring={cfg.judge.scoring} reads no "
         "log-probs", "judge.scoring=expected", "judge.scoring"),
    Rule(" ".join(f"judge.{k}" for k in (JUDGE + "max_tokens scoring top_logprobs generation").split()),
         lambda c: (r := unset(c, "judge.rubrics", "rubrics")) is not None and not r, "with no rubric (dataset.loader="
         "{cfg.dataset.loader}) no judge is called", "name rubrics, e.g. judge.rubrics=[concept]", "dataset judge"),
    Rule("judge.generation.temperature judge.generation.top_p judge.generation.seed",
         lambda c: unset(c, "judge.generation.do_sample", "do_sample") is False, "the judged answers are greedy",
         "judge.generation.do_sample=true", "dataset judge.generation.do_sample"),
    Rule("dataset.hub dataset.revision", lambda c: bool(c.dataset.get("path")), DATA + "is read instead of the hub",
         "dataset.path=null", "dataset.path"),
    Rule("dataset.file", lambda c: bool(c.dataset.get("path")) and not Path(c.dataset.path).expanduser().is_dir(),
         DATA + "names the file itself", "point dataset.path at the folder that holds the file", "dataset.path"),
    Rule("dataset.answer_format", lambda c: "answer_format" not in str(c.dataset._get_node("instruction")._value()),
         "a run appends dataset.instruction; steer.datacheck compares dataset.answer_format",
         "dataset.instruction='${dataset.answer_format}' to run with it", "dataset.instruction"),
    Rule("dataset.generation", lambda c: not needs_own_answers(load_dataset(c)),
         "every pair of dataset={cfg.dataset.name} has its A_n", "dataset=axbench (A_n is the model's own answer)",
         "dataset"),
    Rule("tracking.project tracking.entity tracking.group", lambda c: not c.tracking.wandb, "tracking.wandb=false",
         "tracking.wandb=true", "tracking.wandb"),
    Rule("node.devices", lambda c: c.device == "cpu" or c.node.jobs == 1, "each job runs alone on the run's device",
         "-m hydra/launcher=node node.jobs=N", "node.jobs device"),
)  # fmt: skip


def stage_rule(key: str, cfg: DictConfig, stages: Sequence) -> Rule | None:
    """No stage that reads ``key`` (the stages' declared keys) runs; ``run_id``'s keys choose the run."""
    names = re.findall(r"\$\{([\w.]+)\}", str(cfg._get_node("run_id")._value()))
    running = {str(n) for n in cfg.stages} | {s.name for s in stages if s.implicit}
    readers = [s.name for s in stages if any(covers(k, key) or covers(key, k) for k in s.keys)]
    if not readers or running & set(readers) or key in {*names, *(n.split(".")[0] for n in names)}:
        return None
    why = f"none of the stages that read it ({', '.join(readers)}) is in stages=[{','.join(map(str, cfg.stages))}]"
    also = f" (also read by {', '.join(readers[1:])})" if readers[1:] else ""
    return Rule(key, lambda _: True, why, f"add {readers[0]} to stages{also}")


def check_ignored(cfg: DictConfig, overrides: Sequence[str], multirun: bool = False, stages=(), choices=None) -> None:
    """Refuse (``ConfigError``) the explicit settings ``cfg`` cannot use; in a multirun job, warn
    where the reason reads a key the overrides set."""
    settings, refused = explicit_settings(overrides), []
    for key, text in settings:
        rules = [r for r in (stage_rule(key, cfg, stages), *RULES) if r and any(covers(k, key) for k in r.keys.split())]
        rule = next((r for r in rules if r.test(cfg)), None)
        line = rule and f"{key}={text} has no effect: {rule.why.format(cfg=cfg)}. To use it: {rule.fix}"
        if undeclared(cfg, key):  # added with +key=
            refused.append(unknown_key(key, text, choices or {}))
        elif rule and multirun and any(covers(d, k) or covers(k, d) for d in rule.depends.split() for k, _ in settings):
            logging.getLogger("steer").warning("%s (this job of the multirun; other jobs may use it)", line)
        elif rule:
            refused.append(line)
    if refused:
        raise ConfigError("\n  ".join([f"{len(refused)} settings have no effect:", *refused][not refused[1:] :]))
