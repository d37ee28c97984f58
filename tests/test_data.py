"""Data: loading and checking .npz files, the split and subset, the normaliser, and the
on-device augmentation against torchvision's reference transforms."""

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from conftest import write_npz
from resexp.config import DataConfig, DataName, Normalize
from resexp.data import DataError, build_data, source
from resexp.data.cifar import Normalizer, TensorTrainStream, crop_flip, load_arrays, synthetic_arrays


def coordinate_image() -> np.ndarray:
    """A 32x32 image whose pixels say where they came from: R = row+1, G = col+1, B = 255."""
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = np.arange(1, 33)[:, None]
    img[..., 1] = np.arange(1, 33)[None, :]
    img[..., 2] = 255
    return img


def crop_of(out: np.ndarray) -> tuple[int, int, bool]:
    """(dx, dy, flipped) of a 4-pixel-pad crop of coordinate_image()."""
    i = np.argwhere(out[..., 2] == 255)[0][0]  # a row holding image pixels (at least 28 of them)
    j, k = np.flatnonzero(out[i, :, 2] == 255)[:2]
    flipped = bool(out[i, k, 1] < out[i, j, 1])
    dy = int(out[i, j, 0]) - 1 - i + 4
    dx = int(out[i, j, 1]) - 1 - ((31 - j) if flipped else j) + 4
    return dx, dy, flipped


def test_crop_flip_identity_flip_and_padding():
    x = torch.from_numpy(coordinate_image())[None]
    four, zero = torch.tensor([4]), torch.tensor([0])
    assert torch.equal(crop_flip(x, four, four, torch.tensor([False]), 4), x)
    assert torch.equal(crop_flip(x, four, four, torch.tensor([True]), 4), x.flip(2))
    corner = crop_flip(x, zero, zero, torch.tensor([False]), 4)[0]
    assert corner[:4].sum() == 0 and corner[:, :4].sum() == 0  # the zero padding shows
    assert torch.equal(corner[4:, 4:], x[0, :28, :28])


def test_augmentation_matches_torchvision_reference_distribution():
    n = 4000
    img = coordinate_image()
    stream = TensorTrainStream(
        np.repeat(img[None], n, 0), np.zeros(n, np.int64), n, lambda x: x, True, 0, torch.device("cpu")
    )
    ours = [crop_of(o) for o in next(stream.batches(0))[0].numpy()]
    torch.manual_seed(0)
    reference = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()])
    pil = Image.fromarray(img)
    theirs = [crop_of(np.asarray(reference(pil))) for _ in range(n)]
    assert set(ours) == set(theirs) and len(set(ours)) == 9 * 9 * 2  # same support: 9x9 offsets x flip
    for k in range(3):  # dx, dy, flip marginals agree
        a, b = Counter(c[k] for c in ours), Counter(c[k] for c in theirs)
        for v in set(a) | set(b):
            assert abs(a[v] - b[v]) / n < 0.03, (k, v, a[v], b[v])


def test_resumed_epoch_gives_the_same_batches():
    x = np.random.default_rng(0).integers(0, 255, (100, 32, 32, 3), dtype=np.uint8)
    y = np.arange(100) % 10
    stream = TensorTrainStream(x, y, 16, lambda b: b, True, 5, torch.device("cpu"))
    full = list(stream.batches(3))
    resumed = list(stream.batches(3, start=2))
    assert len(full) == 6 and len(resumed) == 4
    for (xa, ya), (xb, yb) in zip(full[2:], resumed, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(full[0][1], next(stream.batches(4))[1])  # another epoch, another order


def test_pixel_mean_normaliser_centres_every_pixel_and_channel_one_standardises():
    x = np.random.default_rng(1).integers(0, 255, (64, 8, 8, 3), dtype=np.uint8)
    centred = Normalizer(x, "pixel_mean", torch.device("cpu"))(torch.from_numpy(x))
    assert centred.shape == (64, 3, 8, 8)
    assert centred.mean(0).abs().max() < 1e-5
    standard = Normalizer(x, "channel", torch.device("cpu"))(torch.from_numpy(x))
    assert standard.mean((0, 2, 3)).abs().max() < 1e-4 and (standard.std((0, 2, 3)) - 1).abs().max() < 1e-2


def test_npz_in_root_is_found_and_split(tmp_path):
    write_npz(tmp_path / "cifar10.npz")
    data = build_data(DataConfig(root=str(tmp_path), batch_size=8, val_split=10, subset=30), 0, torch.device("cpu"))
    assert data.train_size == 30 and data.num_classes == 10
    assert len(data.evals["val"]) == 10 and len(data.evals["test"]) == 32
    assert len(data.train) == 3  # 30 // 8, the partial batch dropped


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(x_train=np.zeros((64, 32, 32, 3), np.float32)), "expected uint8"),
        (dict(x_train=np.zeros((64, 32, 32), np.uint8)), "expected uint8 (N, H, W, 3)"),
        (dict(x_train=np.zeros((64, 64, 64, 3), np.uint8)), "x_train holds 64x64 images; expected 32x32"),
        (dict(x_test=np.zeros((0, 32, 32, 3), np.uint8), y_test=np.zeros(0, np.int64)), "x_test holds no images"),
        (dict(y_train=np.arange(64) % 11), "expected 0..9"),
        (dict(y_train=(np.arange(64) % 10).astype(np.float32)), "y_train has dtype float32; expected integer labels"),
        (dict(y_test=np.array([str(i % 10) for i in range(32)])), "y_test has dtype <U1; expected integer labels"),
        (dict(y_test=np.arange(31)), "one label per image"),
        (dict(y_train=np.arange(64) % 5, y_test=np.arange(32) % 5), "it holds 5 classes, not the 10"),
    ],
)
def test_malformed_npz_is_rejected_with_what_was_expected(tmp_path, overrides, message):
    write_npz(tmp_path / "cifar10.npz", **overrides)
    with pytest.raises(DataError) as e:
        load_arrays(DataConfig(root=str(tmp_path)))
    assert message in str(e.value)


def test_a_cifar10_file_read_as_cifar100_is_refused(tmp_path):
    write_npz(tmp_path / "data.npz")
    with pytest.raises(DataError, match="it holds 10 classes, not the 100 of this dataset"):
        load_arrays(DataConfig(name=DataName.cifar100, root=str(tmp_path / "data.npz")))


def test_the_fingerprint_follows_the_content_not_the_path(tmp_path):
    a = write_npz(tmp_path / "a.npz")
    (tmp_path / "copy").mkdir()
    b = tmp_path / "copy" / "cifar10.npz"
    b.write_bytes(a.read_bytes())
    c = write_npz(tmp_path / "c.npz", n_train=80)
    fingerprint = [source(DataConfig(root=str(p))).fingerprint for p in (a, b, c)]
    assert fingerprint[0] == fingerprint[1] != fingerprint[2]
    assert source(DataConfig(root=str(tmp_path / "copy"))).source == "cifar10.npz"
    with pytest.raises(DataError, match="does not exist"):
        source(DataConfig(root=str(tmp_path), file="missing.npz"))


def test_truncated_npz_and_missing_dataset(tmp_path):
    path = write_npz(tmp_path / "cifar10.npz")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="truncated"):
        load_arrays(DataConfig(root=str(tmp_path)))
    with pytest.raises(DataError, match="needs internet"):
        load_arrays(DataConfig(root=str(tmp_path / "nothing")))
    with pytest.raises(DataError, match="x_train, y_train, x_test, y_test"):
        np.savez(tmp_path / "other.npz", images=np.zeros(3))
        load_arrays(DataConfig(root=str(tmp_path / "other.npz")))


def test_synthetic_set_is_deterministic_and_learnable_shaped():
    cfg = DataConfig(name=DataName.synthetic, train_size=64, test_size=16, num_classes=5, normalize=Normalize.channel)
    a, b = synthetic_arrays(cfg), synthetic_arrays(cfg)
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.shape == (64, 32, 32, 3) and a.x_train.dtype == np.uint8 and a.y_train.max() < 5


def test_real_cifar10_subset_loads(cifar_npz):
    a = load_arrays(DataConfig(root=str(cifar_npz.parent)))
    assert a.x_train.shape == (8380, 32, 32, 3) and a.x_test.shape == (1017, 32, 32, 3)
    assert np.bincount(a.y_train, minlength=10)[0] == 831
    mean = a.x_train.reshape(-1, 3).mean(0) / 255
    assert np.allclose(mean, (0.4931, 0.4833, 0.4468), atol=1e-3)


def test_a_failed_download_leaves_no_folder_it_made(tmp_path, monkeypatch):
    from resexp.data import cifar

    def offline(cfg, train):
        (tmp_path / "new" / "cifar-10-python.tar.gz").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "new" / "cifar-10-python.tar.gz").write_bytes(b"partial")
        raise DataError("could not load cifar10 with torchvision (URLError: no network)")

    monkeypatch.setattr(cifar, "torchvision_dataset", offline)
    with pytest.raises(DataError, match="URLError"):
        source(DataConfig(root=str(tmp_path / "new"), download=True))
    assert not (tmp_path / "new").exists()
    (tmp_path / "kept").mkdir()  # a folder the user made is left as it was
    monkeypatch.setattr(cifar, "torchvision_dataset", lambda cfg, train: (_ for _ in ()).throw(DataError("offline")))
    with pytest.raises(DataError):
        source(DataConfig(root=str(tmp_path / "kept"), download=True))
    assert (tmp_path / "kept").is_dir()
