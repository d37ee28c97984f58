"""Config composition: every YAML composes against the schema, bad overrides fail at composition,
cross-field rules are checked with messages that name the field and the valid choices."""

import itertools

import pytest
from conftest import compose_config
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException

from resexp.config import CONFIG_DIR, ConfigError, run_path, to_object, validate

GROUPS = {g: sorted(p.stem for p in (CONFIG_DIR / g).glob("*.yaml")) for g in ("model", "data", "schedule")}


def test_groups_have_the_public_options():
    assert GROUPS == {"model": ["cifar", "imagenet"], "data": ["cifar10", "cifar100", "imagenet", "synthetic"],
                      "schedule": ["multistep", "plateau"]}


@pytest.mark.parametrize("model,data,schedule", list(itertools.product(*GROUPS.values())))
def test_every_yaml_combination_composes_and_validates(model, data, schedule):
    overrides = [f"model={model}", f"data={data}", f"schedule={schedule}"]
    if model == "cifar":
        overrides.append("model.depth=20")
    cfg = to_object(compose_config(overrides))
    validate(cfg)
    assert cfg.model.family.value == model and cfg.data.name.value == data and cfg.schedule.name.value == schedule


def test_defaults_are_the_paper_cifar_recipe():
    cfg = to_object(compose_config())
    assert (cfg.model.family.value, cfg.model.depth, cfg.model.mode.value, cfg.model.shortcut.value) == \
        ("cifar", 20, "residual", "A")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.data.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (cfg.schedule.iterations, list(cfg.schedule.milestones), cfg.schedule.gamma) == (64000, [32000, 48000], 0.1)
    assert cfg.data.name.value == "cifar10" and cfg.data.augment and cfg.data.normalize.value == "pixel_mean"


def test_imagenet_data_uses_batch_256_and_plateau_schedule_divides_on_plateau():
    cfg = to_object(compose_config(["model=imagenet", "data=imagenet", "schedule=plateau"]))
    assert cfg.data.batch_size == 256 and cfg.schedule.iterations == 600000 and cfg.model.depth == 34


def test_public_overrides_reach_the_config():
    cfg = to_object(compose_config([
        "model.depth=56", "model.mode=plain", "model.shortcut=B", "data=cifar100", "data.root=/x",
        "data.batch_size=64", "data.subset=1000", "optim.lr=0.05", "optim.momentum=0.8", "optim.weight_decay=5e-4",
        "schedule.iterations=2000", "schedule.milestones=[1000,1500]", "eval_every=100", "seed=3", "device=cpu"]))
    assert (cfg.model.depth, cfg.model.mode.value, cfg.model.shortcut.value) == (56, "plain", "B")
    assert (cfg.data.name.value, cfg.data.root, cfg.data.batch_size, cfg.data.subset) == ("cifar100", "/x", 64, 1000)
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (0.05, 0.8, 5e-4)
    assert (cfg.schedule.iterations, list(cfg.schedule.milestones), cfg.eval_every, cfg.seed, cfg.device) == \
        (2000, [1000, 1500], 100, 3, "cpu")


@pytest.mark.parametrize("override,shown", [
    ("model.mode=highway", "plain, residual"), ("model.shortcut=D", "A, B, C"), ("model.depth=deep", "deep"),
    ("model.bogus=1", "bogus"), ("optim.lr=fast", "fast"), ("data.normalize=zca", "pixel_mean, channel"),
    ("schedule.name=cosine", "multistep, plateau")])
def test_bad_overrides_fail_at_composition(override, shown):
    with pytest.raises(ConfigCompositionException) as e:
        compose_config([override])
    assert shown in str(e.value) + str(e.value.__cause__)


def test_unknown_group_option_fails():
    with pytest.raises(MissingConfigException, match="data/imagenet21k"):
        compose_config(["data=imagenet21k"])


@pytest.mark.parametrize("overrides,message", [
    (["model.depth=21"], "model.depth=21 is not a CIFAR depth: valid depths are 6n+2"),
    (["model=imagenet", "model.depth=20"], "valid depths are 18, 34, 50, 101, 152"),
    (["schedule.milestones=[32000,70000]"], "must lie inside the schedule"),
    (["schedule.milestones=[48000,32000]"], "strictly increasing"),
    (["data.batch_size=0"], "data.batch_size=0 must be positive"),
    (["optim.lr=0"], "optim.lr=0.0 must be positive"),
    (["optim.weight_decay=-1"], "must not be negative"),
    (["schedule.iterations=-5", "schedule.milestones=[]"], "schedule.iterations=-5 must be positive"),
    (["data.subset=0"], "data.subset=0 must be positive"),
    (["schedule=plateau", "schedule.monitor=val/error"], "needs a validation set"),
    (["schedule=plateau", "schedule.monitor=accuracy"], "valid choices are"),
    (["eval_every=0"], "eval_every=0 must be positive")])
def test_cross_field_rules(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("+", r"\+")):
        validate(to_object(compose_config(overrides)))


def test_run_directories_are_named_for_tensorboard():
    assert run_path("cifar10", "plain", 56, "A", 0) == "cifar10/plain-56_s0"
    assert run_path("cifar10", "residual", 20, "B", 2) == "cifar10/residual-20B_s2"
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model.mode=plain", "model.depth=56", "seed=1"], return_hydra_config=True)
        assert cfg.hydra.run.dir == "runs/default/cifar10/plain-56_s1"
        assert cfg.hydra.sweep.dir == "runs/default" and cfg.hydra.sweep.subdir == "cifar10/plain-56_s1"
