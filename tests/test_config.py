"""Config composition: every YAML composes against the schema and passes the checks, the defaults
are the paper's recipe, one override shortens a run, cross-field rules and ranges are refused
with messages that name the field and the valid choices."""

import importlib.resources
import itertools
import re
from pathlib import Path

import pytest

from resexp.config import ConfigError, ScheduleName
from resexp.identity import base_name
from resexp.launch.jobs import compose, plan
from resexp.run.schedule import Schedule

CONFIGS = importlib.resources.files("resexp.configs")
GROUPS = {
    g: sorted(p.name.removesuffix(".yaml") for p in (CONFIGS / g).iterdir() if p.name.endswith(".yaml"))
    for g in ("model", "data", "schedule")
}


@pytest.mark.parametrize("model,data,schedule", list(itertools.product(*GROUPS.values())))
def test_every_yaml_combination_composes_and_passes_the_checks(model, data, schedule):
    overrides = [f"model={model}", f"data={data}", f"schedule={schedule}", "device=cpu", "data.batch_size=8"]
    if model == "cifar":
        overrides.append("model.depth=20")
    cfg = compose(overrides)
    assert (cfg.model.family, cfg.data.name, cfg.schedule.name) == (model, data, schedule)  # enums equal strings


def test_defaults_are_the_paper_cifar_recipe():
    cfg = compose(["device=cpu"])
    assert (cfg.model.family, cfg.model.depth, cfg.model.mode, cfg.model.shortcut) == ("cifar", 20, "residual", "A")
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.data.batch_size) == (0.1, 0.9, 1e-4, 128)
    assert (cfg.schedule.iterations, cfg.schedule.milestones, cfg.schedule.gamma) == (64000, [32000, 48000], 0.1)
    assert cfg.data.name == "cifar10" and cfg.data.augment and cfg.data.normalize == "pixel_mean"
    imagenet = compose(["model=imagenet", "data=imagenet", "schedule=plateau", "device=cpu"])
    assert (imagenet.data.batch_size, imagenet.schedule.iterations, imagenet.model.depth) == (256, 600000, 34)


def test_one_override_shortens_a_run_and_explicit_milestones_stay_absolute():
    assert compose(["schedule.iterations=400", "device=cpu"]).schedule.milestones == [200, 300]
    assert compose(["schedule.iterations=400", "schedule.milestones=[100]", "device=cpu"]).schedule.milestones == [100]
    assert compose(["+experiment=cifar_fig6", "device=cpu", "schedule.iterations=4000"]).schedule.milestones == [
        2000,
        3000,
    ]  # a preset that gives none gets the fractions too; cifar_quick gives its own, absolute:
    with pytest.raises(ConfigError, match="must lie inside the schedule"):
        compose(["+experiment=cifar_quick", "device=cpu", "schedule.iterations=40"])


def test_the_plateau_yaml_divides_the_rate_when_the_error_stops_improving():
    cfg = compose(["schedule=plateau", "schedule.patience=2", "device=cpu"])
    assert cfg.schedule.name == ScheduleName.plateau and cfg.schedule.milestones is None
    schedule = Schedule(cfg.optim.lr, cfg.schedule)
    lrs = []
    for error in (50, 40, 40, 40, 40, 40):
        schedule.observe({"train/error": error, "test/error": error})
        lrs.append(schedule.lr(0))
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01, 0.01, 0.001])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["model.depth=21"], "model.depth=21 is not a CIFAR depth: valid depths are 6n+2"),
        (["model=imagenet", "model.depth=20"], "valid depths are 18, 34, 50, 101, 152"),
        (["schedule.milestones=[32000,70000]"], "must lie inside the schedule"),
        (["schedule.milestones=[48000,32000]"], "strictly increasing"),
        (["data.batch_size=0"], "data.batch_size=0 must be at least 1"),
        (["optim.lr=0"], "optim.lr=0.0 must be a finite positive number"),
        (["optim.lr=inf"], "optim.lr=inf must be a finite positive number"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 must be a finite non-negative number"),
        (["optim.momentum=5"], "optim.momentum=5.0 must lie in [0, 1)"),
        (["schedule.iterations=-5"], "schedule.iterations=-5 must be at least 1"),
        (["data.subset=0"], "data.subset=0 must be at least 1"),
        (["seed=-1"], "seed=-1 must be at least 0"),
        (["seed=99999999999"], "seed=99999999999 is too large"),
        (["schedule=plateau", "schedule.monitor=val/error"], "needs a validation set"),
        (["schedule=plateau", "schedule.monitor=accuracy"], "valid choices are"),
        (["schedule=plateau", "schedule.patience=0"], "schedule.patience=0 must be at least 1"),
        (["schedule=plateau", "schedule.min_lr=-1"], "schedule.min_lr=-1.0 must be a finite non-negative"),
        (["schedule=plateau", "schedule.min_delta=nan"], "schedule.min_delta=nan must be a finite"),
        (["schedule.gamma=1"], "schedule.gamma=1.0 must lie in (0, 1)"),
        (["schedule.warmup_until_error=0"], "schedule.warmup_until_error=0.0 must lie in (0, 100]"),
        (["eval_every=0"], "eval_every=0 must be at least 1"),
        (["name=.."], "name='..' must be a folder name below runs/"),
        (["name=../../x"], "name='../../x' must be a folder name below runs/"),
        (["name=/abs"], "must be a folder name below runs/"),
        (["device=mps"], "device=mps asked for, but this machine has no Apple GPU that PyTorch can use (MPS)"),
        (["device=meta"], "device=meta is not supported: use auto, cpu, cuda, cuda:N or mps"),
        (["device=meta"], "device=meta is not supported"),
        (["device=gpu7"], "is not a device"),
        (["data=synthetic", "data.num_classes=1"], "data.num_classes=1 must be at least 2"),
        (["data=synthetic", "data.train_size=10"], "larger than the 10 synthetic training images"),
        (["model=imagenet", "data=imagenet", "data.crop_size=300"], "crop_size <= scale_min <= scale_max"),
        (["data.root=x.npz", "data.file=y.npz"], "both name a file"),
        (["resume=/no/such.pt"], "resume=/no/such.pt is not a file"),
        (["model.depth=1000000004"], "needs about"),
        (["data=synthetic", "data.image_size=100000"], "needs about"),
    ],
)
def test_ranges_and_cross_field_rules(overrides, message):
    with pytest.raises(ConfigError) as e:
        compose([*overrides, "device=cpu"] if not any(o.startswith("device=") for o in overrides) else overrides)
    assert message in str(e.value)


def test_run_directories_are_named_for_tensorboard(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert base_name({"data.name": "cifar10", "model.mode": "plain", "model.depth": 56, "seed": 0}) == (
        "cifar10/plain-56_s0"
    )
    values = {"data.name": "imagenet", "model.family": "imagenet", "model.mode": "residual", "model.depth": 50}
    assert base_name({**values, "model.shortcut": None, "seed": 0}) == "imagenet/residual-50B_s0"
    [job] = plan(["model.mode=plain", "model.depth=56", "seed=1", "data=synthetic", "device=cpu"], multirun=False)
    assert str(job.run_dir) == "runs/default/synthetic/plain-56_s1" and job.sweep_dir is None  # device: a setting


def folders(*overrides: str) -> list[str]:
    return [str(job.run_dir) for job in plan([*overrides, "device=cpu"], multirun=True)]


def test_every_field_that_changes_a_result_and_differs_from_the_preset_is_in_the_folder_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert folders("optim.lr=0.1,0.05", "optim.weight_decay=1e-4,5e-4") == [
        "runs/default/cifar10/residual-20A_s0",  # the default's values: the name of resexp 0.2
        "runs/default/cifar10/residual-20A_s0+weight_decay-0.0005",
        "runs/default/cifar10/residual-20A_s0+lr-0.05",
        "runs/default/cifar10/residual-20A_s0+lr-0.05+weight_decay-0.0005",
    ]
    assert folders("schedule.iterations=500", "schedule.milestones=[300,400]") == [
        "runs/default/cifar10/residual-20A_s0+iterations-500+milestones-300_400"
    ]
    assert folders("schedule=multistep,plateau", "model.mode=plain") == [
        "runs/default/cifar10/plain-20_s0",
        "runs/default/cifar10/plain-20_s0+schedule-plateau",  # a group choice other than the preset's
    ]
    # the preset's own values and the fields the first part shows are not repeated
    assert folders("+experiment=cifar_quick", "optim.lr=0.02,0.1", "model.mode=plain", "seed=0") == [
        "runs/cifar_quick/cifar10/plain-20_s0",
        "runs/cifar_quick/cifar10/plain-20_s0+lr-0.1",
        "runs/cifar_quick/cifar10/plain-56_s0",
        "runs/cifar_quick/cifar10/plain-56_s0+lr-0.1",
    ]
    # the 110-layer nets' warm-up comes with their depth in cifar_fig6: not a difference
    assert folders("+experiment=cifar_fig6", "model.depth=110", "model.mode=residual", "seed=0") == [
        "runs/cifar_fig6/cifar10/residual-110A_s0"
    ]
    # settings (where the data is, the device, speed) are not part of the name
    assert folders("data.root=elsewhere", "speed.precision=fp32", "log.grad_norms=true") == [
        "runs/default/cifar10/residual-20A_s0"
    ]


def test_a_name_too_long_for_a_folder_ends_in_a_hash_and_config_yaml_says_the_rest(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = [f"schedule.milestones=[{','.join(str(m) for m in range(1000, 60000, 1000))}]"]
    [folder] = folders(*overrides)
    name = Path(folder).name
    assert len(name) <= 200 and re.fullmatch(r"residual-20A_s0\+hash-[0-9a-f]{12}", name)


def test_two_jobs_that_would_share_a_folder_are_refused_before_anything_trains(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as e:
        plan(["data.root=a,b", "device=cpu"], multirun=True)
    assert str(e.value) == (
        "jobs 0 (data.root=a device=cpu) and 1 (data.root=b device=cpu) would train in one folder, "
        "runs/default/cifar10/residual-20A_s0: they differ only in data.root, which is not part of a run's identity; "
        "sweep them in separate commands, each with its own name=..."
    )
    with pytest.raises(ConfigError, match=r"jobs 0 \(seed=0 device=cpu\) and 1 \(seed=0 device=cpu\) are one run"):
        plan(["seed=0,0", "device=cpu"], multirun=True)


@pytest.mark.parametrize(
    ("overrides", "shortcut", "folder"),
    [
        (["model.depth=18"], "A", "residual-18A_s0"),
        (["model.depth=34"], "A", "residual-34A_s0"),
        (["model.depth=50"], "B", "residual-50B_s0"),
        (["model.depth=101"], "B", "residual-101B_s0"),
        (["model.depth=152"], "B", "residual-152B_s0"),
        (["model.depth=50", "model.shortcut=C"], "C", "residual-50C_s0"),  # the user's choice wins
        (["model.depth=152", "model.shortcut=A"], "A", "residual-152A_s0"),
        (["+experiment=imagenet_fig4", "model.depth=34"], "A", "residual-34A_s0"),
    ],
)
def test_imagenet_shortcut_defaults_are_the_papers(tmp_path, monkeypatch, overrides, shortcut, folder):
    """Option B for the bottleneck nets (Sec. 3.4) unless the user sets one; A for 18/34 and in imagenet_fig4."""
    monkeypatch.chdir(tmp_path)
    base = ["model=imagenet", "data=imagenet", "data.batch_size=8", "device=cpu"]
    [job] = plan([*base, *overrides], multirun=False)
    assert job.config.model.shortcut == shortcut
    assert job.run_dir.name.split("+")[0] == folder


def test_cifar_keeps_option_a_by_default(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert compose(["model.depth=56", "device=cpu"]).model.shortcut == "A"


def test_a_sweep_expands_as_hydras_basic_sweeper_does_and_the_command_line_wins(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    jobs = plan(["+experiment=cifar_quick", "data=synthetic", "seed=1", "device=cpu"], multirun=True)
    assert [str(j.run_dir) for j in jobs] == [
        "runs/cifar_quick/synthetic/plain-20_s1",
        "runs/cifar_quick/synthetic/plain-56_s1",
        "runs/cifar_quick/synthetic/residual-20A_s1",
        "runs/cifar_quick/synthetic/residual-56A_s1",
    ]  # the preset's seeds 0,1,2 replaced by the command line's 1
    assert {str(j.sweep_dir) for j in jobs} == {"runs/cifar_quick"}
    assert all(j.config.optim.lr == 0.02 and j.config.schedule.milestones == [300] for j in jobs)
