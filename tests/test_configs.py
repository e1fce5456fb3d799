"""Every config of every group composes and resolves (as lightning-hydra-template's test_configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from steer.stages import CONF, ConfigError, compose_config, run
from steer.stages.schema import groups, mismatched_identity

# The YAML options (steer/conf/<group>/) and the schemas' (steer/stages/schema.py); the paper's
# presets (steer/conf/experiment/paper/**, generated) are composed by tests/test_paper_presets.py.
GROUP_OPTIONS = sorted(
    [
        (path.parent.relative_to(CONF).as_posix(), path.stem)
        for path in CONF.rglob("*.yaml")
        if path.parent != CONF
        and not path.parent.relative_to(CONF).as_posix().startswith(("hydra/", "experiment/paper"))
    ]
    + [(group, name) for group, options in groups().items() for name in options]
)


def test_every_group_is_covered():
    covered = {group for group, _ in GROUP_OPTIONS}
    assert covered == {"dataset", "experiment", "intervention", "judge", "judge/select", "model", "objective", "sweep",
                       "train"}  # fmt: skip


@pytest.mark.parametrize("group,option", GROUP_OPTIONS, ids=[f"{g}={o}" for g, o in GROUP_OPTIONS])
def test_config_composes_and_resolves(group: str, option: str):
    cfg = compose_config([f"{group}={option}"], return_hydra_config=True)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved["run_id"].count("/") == 3 and isinstance(resolved["layer"], int)
    assert Path(resolved["hydra"]["run"]["dir"]).parts[-4:] == tuple(resolved["run_id"].split("/"))
    names = {"intervention": ("form", option), "objective": ("name", option), "model": ("name", option)}
    names["dataset"] = ("loader", option)
    names["judge"] = ("backend", option)
    if group in names:
        key, value = names[group]
        assert resolved[group][key] == value
    # the registries know every form and objective the configs name
    from steer.core.forms import FORMS
    from steer.objectives import OBJECTIVES

    assert resolved["intervention"]["form"] in FORMS and resolved["objective"]["name"] in OBJECTIVES


def test_experiment_is_a_plain_group_choice():
    """``experiment=dynamics`` (no ``+``) overrides the primary config's keys."""
    plain = compose_config([])
    recipe = compose_config(["experiment=dynamics"], return_hydra_config=True)
    assert plain.output_root == "outputs" and recipe.output_root == "outputs/paper"
    assert recipe.dataset.limit == 16 and recipe.hydra.sweeper.params.objective == "sft,reps,split"


@pytest.mark.parametrize(
    ("key", "value", "group"),
    [
        ("intervention.form", "lora", "intervention"),
        ("objective.name", "split", "objective"),
        ("judge.backend", "openai", "judge"),
    ],
)
def test_the_key_that_names_an_option_follows_the_group_choice(tmp_path, key, value, group):
    """``intervention.form=lora`` under ``intervention=vector`` is refused before any work, naming
    the group choice to use; the same value beside its own choice is accepted."""
    overrides = [f"{key}={value}"]
    with pytest.raises(
        ConfigError, match=rf"{key}='{value}' disagrees with {group}=.*choose the option instead: {group}={value}"
    ):
        run(compose_config(overrides), tmp_path / "run", overrides=overrides)
    assert not (tmp_path / "run").exists()
    assert mismatched_identity(compose_config([f"{group}={value}", *overrides])) is None
