"""The paper's ImageNet recipe on a small folder of generated JPEGs: AlexNet's lighting noise,
10-crop and multi-scale testing (how many views each image gets, at which sizes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets import ImageFolder

from conftest import only_run, resexp, rows
from resexp.data.imagenet import EIGVAL, EIGVEC, FolderEvalSet, Lighting, transforms
from resexp.launch.jobs import compose
from resexp.run.evaluate import evaluate

SMALL = ["data.scale_min=40", "data.scale_max=48", "data.crop_size=32", "data.workers=0"]


def jpeg_tree(root: Path, per_class: dict[str, int]) -> Path:
    from PIL import Image

    rng = np.random.default_rng(0)
    for part, n in per_class.items():
        for cls in ("n01", "n02"):
            folder = root / part / cls
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(50, 90)), int(rng.integers(50, 90)))
                Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG")
    return root


def imagenet_cfg(root: Path, *overrides: str):
    return compose(["model=imagenet", "data=imagenet", f"data.root={root}", "device=cpu", *SMALL, *overrides]).data


def test_lighting_noise_follows_alexnets_principal_components():
    """The noise's covariance is V diag((0.1 lambda)^2) V^T: its eigenvalues are (0.1 lambda_i)^2
    and its eigenvectors AlexNet's."""
    lighting = Lighting(0.1)
    g = torch.Generator().manual_seed(0)
    noise = torch.stack([lighting.noise(g) for _ in range(20000)]).double()
    values, vectors = torch.linalg.eigh(torch.cov(noise.T))
    order = values.argsort(descending=True)
    stds = values[order].sqrt()
    assert stds.tolist() == pytest.approx([0.1 * v for v in EIGVAL], rel=0.03)
    expected = torch.tensor(EIGVEC, dtype=torch.float64)
    for i in range(3):
        assert abs(torch.dot(vectors[:, order[i]], expected[:, i])) > 0.999
    assert noise.mean(0).abs().max() < 6 * 0.1 * EIGVAL[0] / 20000**0.5  # zero-mean: 6 standard errors


def test_lighting_shifts_every_pixel_of_an_image_by_one_colour(tmp_path):
    image = torch.zeros(3, 5, 7)
    shifted = Lighting(0.1)(image)
    per_channel = shifted.flatten(1)
    assert (per_channel == per_channel[:, :1]).all() and per_channel[:, 0].abs().sum() > 0


def test_the_training_transform_has_lighting_between_scaling_and_normalising(tmp_path):
    names = [type(t).__name__ for t in transforms(imagenet_cfg(tmp_path), train=True).transforms]
    assert names.index("Lighting") == names.index("ToDtype") + 1 and names[-1] == "Normalize"
    off = [type(t).__name__ for t in transforms(imagenet_cfg(tmp_path, "data.lighting=0"), train=True).transforms]
    assert "Lighting" not in off


class Recording(torch.nn.Module):
    """A fully-convolutional stand-in that records the shape of every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 2)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> Path:
    return jpeg_tree(tmp_path_factory.mktemp("imagenet"), {"train": 3, "val": 3})


@pytest.mark.parametrize(
    ("overrides", "views"),
    [([], 1), (["data.ten_crop=true"], 10), (["data.test_scales=[32,40,64]"], 6), (["data.test_scales=[48]"], 2)],
)
def test_each_test_image_gets_its_views(tree, overrides, views):
    cfg = imagenet_cfg(tree, "data.eval_batch_size=4", *overrides)
    val = ImageFolder(str(tree / "val"), transform=transforms(cfg, train=False))
    net = Recording()
    out = evaluate(net, FolderEvalSet(val, cfg, torch.device("cpu")), "test")
    assert sum(s[0] for s in net.shapes) == views * len(val) == views * 6
    assert 0 <= out["test/error"] <= 100
    if cfg.test_scales:  # whole images, shorter side at each scale, each with its mirror image
        sides = sorted({min(s[2:]) for s in net.shapes})
        assert sides == sorted(cfg.test_scales) and all(s[0] == 2 for s in net.shapes)
        assert any(s[2] != s[3] for s in net.shapes)  # not cropped square
    else:
        assert {s[2:] for s in net.shapes} == {(32, 32)}


def test_multi_scale_views_of_an_image_are_it_and_its_mirror(tree):
    cfg = imagenet_cfg(tree, "data.test_scales=[40]")
    val = ImageFolder(str(tree / "val"), transform=transforms(cfg, train=False))
    [pair] = val[0][0]
    torch.testing.assert_close(pair[1], pair[0].flip(-1))


def test_a_run_with_the_multi_scale_test(tmp_path, tree):
    out = resexp(
        "train",
        "model=imagenet",
        "model.depth=18",
        "data=imagenet",
        f"data.root={tree}",
        *SMALL,
        "data.batch_size=2",
        "data.test_scales=[32,48]",
        "schedule=plateau",
        "schedule.iterations=2",
        "eval_every=2",
        "device=cpu",
        cwd=tmp_path,
    )
    assert out.code == 0, out.stderr
    [row] = rows(only_run(tmp_path / "runs/default/imagenet"))
    assert row["test/error"] in [100 * k / 6 for k in range(7)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.test_scales=[]"], "data.test_scales=[] must list shorter sides >= 1"),
        (["data.test_scales=[224,0]"], "must list shorter sides >= 1"),
        (["data.test_scales=[224]", "data.ten_crop=true"], "two test methods: choose one"),
        (["data.lighting=-0.1"], "data.lighting=-0.1 must be a finite non-negative number"),
        (["data.lighting=nan"], "data.lighting=nan must be a finite non-negative number"),
        (["data.normalize=pixel_mean"], "data.normalize=pixel_mean is not available for ImageNet"),
        (["data.workers=100000"], "data.workers=100000 must be at most"),  # a process each
    ],
)
def test_recipe_options_are_checked(tmp_path, overrides, message):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        imagenet_cfg(tmp_path, *overrides)


def test_the_multi_scale_test_is_imagenets(tmp_path):
    from resexp.errors import ConfigError

    with pytest.raises(ConfigError, match="needs data=imagenet"):
        compose(["data=synthetic", "data.test_scales=[32]", "device=cpu"])


def test_the_input_pipeline_benchmark_prints_images_per_second(capsys):
    """benchmarks/input_pipeline.py at a tiny size: it generates JPEGs and times the real pipeline."""
    import runpy

    from conftest import REPO

    main = runpy.run_path(str(REPO / "benchmarks" / "input_pipeline.py"))["main"]
    threads = torch.get_num_threads()
    [result] = main(["--workers", "0", "--images", "8", "--batch-size", "4"])
    assert torch.get_num_threads() == threads  # the rest of the session trains as before
    assert result["workers"] == 0 and result["images_per_s"] > 0
    assert "images/s" in capsys.readouterr().out


def test_the_fingerprint_sees_other_images_under_the_same_names(tmp_path):
    """A tree with the same class folders, file names and counts but other images is other data
    (before: only the class names and file counts were hashed); resexp 0.2's fingerprint is kept
    as the legacy one, so that the runs it made still match the data they were trained on."""
    import shutil

    from resexp.data.imagenet import source

    a = jpeg_tree(tmp_path / "a", {"train": 3, "val": 3})
    b = tmp_path / "b"
    shutil.copytree(a, b)
    cfg_a, cfg_b = imagenet_cfg(a), imagenet_cfg(b)
    assert source(cfg_a).fingerprint == source(cfg_b).fingerprint  # a copy is the same data
    first = sorted((b / "train").iterdir())[0]
    image = sorted(first.iterdir())[0]
    image.write_bytes(sorted(sorted((b / "val").iterdir())[1].iterdir())[0].read_bytes())  # another image, same name
    assert source(cfg_a).fingerprint != source(cfg_b).fingerprint
    assert source(cfg_a).legacy == source(cfg_b).legacy  # what resexp 0.2 could not tell apart
