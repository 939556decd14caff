"""seq-pixels: sequential (and permuted) pixel-by-pixel digit classification. The data are
fixed whatever the run seed; the splits are disjoint, complete, stratified and keep
identical images together; every sequence is its image, pixel by pixel, in one fixed order."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from tasks import get_task
from tasks.data import ChecksumError, MissingDataError, digest_of
from tasks.pixels import MNIST_FILES, PixelsParams

TASK = get_task("seq-pixels")
DIGITS = load_digits()


def make(seed: int = 0, data_dir: Path | None = None, **params: Any) -> Any:
    return TASK(TASK.make_params(**params), data_dir, seed)


def whole(split: Any) -> dict[str, torch.Tensor]:
    return split.__getitems__(list(range(len(split))))


@pytest.fixture(scope="module")
def plain() -> tuple[Any, Any]:
    task = make()
    return task, task.setup()


@pytest.fixture(scope="module")
def permuted() -> tuple[Any, Any]:
    task = make(**TASK.variants["permuted"])
    return task, task.setup()


def digit_rows(split: Any) -> np.ndarray:
    """The row of load_digits() each sample of a (row-by-row) split is: matched by pixels and label."""
    batch = whole(split)
    flat = (DIGITS.images.reshape(len(DIGITS.images), -1) / 16.0).astype(np.float32)
    index: dict[bytes, list[int]] = {}
    for i, pixels in enumerate(flat):
        index.setdefault(pixels.tobytes() + bytes([DIGITS.target[i]]), []).append(i)
    x, y = batch["x"][..., 0].numpy(), batch["y"].numpy()
    return np.array([index[x[i].tobytes() + bytes([y[i]])][0] for i in range(len(y))])


def test_same_params_give_identical_data_and_the_run_seed_changes_nothing(plain: tuple[Any, Any]) -> None:
    _, first = plain
    for seed in (0, 1, 12345):
        again = make(seed=seed).setup()
        for name in ("train", "val", "test"):
            a, b = whole(getattr(first, name)), whole(getattr(again, name))
            assert a.keys() == b.keys()
            assert all(torch.equal(a[k], b[k]) for k in a), (seed, name)
    assert not make(seed=3).data_seed("train")


def test_splits_are_disjoint_complete_and_in_file_order(plain: tuple[Any, Any]) -> None:
    _, splits = plain
    assert splits.sizes() == {"train": 1079, "val": 359, "test": 359}
    assert TASK.data_shape(TASK.make_params()).n_train == len(splits.train)
    rows = {name: digit_rows(getattr(splits, name)) for name in ("train", "val", "test")}
    assert all((np.diff(r) > 0).all() for r in rows.values()), "each split in file order, no row twice"
    every = np.concatenate(list(rows.values()))
    assert sorted(every) == list(range(len(DIGITS.images))), "every image in exactly one split"
    # no image (as pixels) in two splits
    pixels = {name: {DIGITS.images[i].tobytes() for i in r} for name, r in rows.items()}
    assert not pixels["train"] & pixels["val"] and not pixels["train"] & pixels["test"]
    assert not pixels["val"] & pixels["test"]


def test_identical_images_share_a_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """The digits set holds no two identical images; give it some, and they stay together."""
    import sklearn.datasets

    fake = load_digits()
    copies = {5: [700, 1500], 40: [41, 900, 1700]}  # image 5 copied over images 700 and 1500, ...
    for source, targets in copies.items():
        for t in targets:
            fake.images[t] = fake.images[source]
            fake.target[t] = fake.target[source]
    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: fake)
    task = make()
    raw = task.load_digits()
    for source in copies:
        holding = [name for name, (x, _) in raw.items()
                   if any(np.array_equal(img, fake.images[source] / 16.0) for img in x)]
        assert len(holding) == 1, holding


def test_each_class_keeps_its_share_in_every_split(plain: tuple[Any, Any]) -> None:
    _, splits = plain
    overall = np.bincount(DIGITS.target, minlength=10) / len(DIGITS.target)
    for name in ("train", "val", "test"):
        y = whole(getattr(splits, name))["y"].numpy()
        share = np.bincount(y, minlength=10) / len(y)
        assert np.abs(share - overall).max() < 0.02, name


def test_every_sequence_is_its_image_pixel_by_pixel(plain: tuple[Any, Any]) -> None:
    _, splits = plain
    assert splits.n_features == 1 and splits.seq_len == 64
    for name in ("train", "val", "test"):
        batch = whole(getattr(splits, name))
        x = batch["x"]
        assert x.shape == (len(getattr(splits, name)), 64, 1) and x.dtype == torch.float32
        assert batch["mask"].all()
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
        rows = digit_rows(getattr(splits, name))
        images = x[..., 0].view(-1, 8, 8).numpy() * 16.0  # un-flattened, back on the raw 0..16 scale
        np.testing.assert_allclose(images, DIGITS.images[rows], rtol=0, atol=1e-5)
        assert np.array_equal(batch["y"].numpy(), DIGITS.target[rows])


def test_permuted_variant_is_the_same_pixels_in_one_fixed_order(plain: tuple[Any, Any],
                                                                permuted: tuple[Any, Any]) -> None:
    task, splits = permuted
    order = task.permutation()
    assert sorted(order.tolist()) == list(range(64)), "a real permutation"
    assert not torch.equal(order, torch.arange(64)), "not the identity"
    assert torch.equal(order, make(seed=7, permute=True).permutation()), "the same order in every run"
    assert not torch.equal(order, make(permute=True, permutation_seed=1).permutation())
    _, rows = plain
    for name in ("train", "val", "test"):
        a, b = whole(getattr(rows, name)), whole(getattr(splits, name))
        assert torch.equal(b["x"], a["x"][:, order]), "every sample permuted by the same order"
        assert torch.equal(b["y"], a["y"])
    # and a fresh task with another run seed reads exactly the same sequences
    again = make(seed=5, permute=True).setup()
    assert torch.equal(whole(again.test)["x"], whole(splits.test)["x"])


def test_metrics_and_the_majority_reference(plain: tuple[Any, Any]) -> None:
    task, splits = plain
    batch = whole(splits.test)
    y = batch["y"]
    perfect = task.finalize(task.batch_stats(100.0 * torch.nn.functional.one_hot(y, 10).float(), batch))
    assert perfect == {"accuracy": 1.0, "macro_f1": 1.0}
    refs = task.references()
    train_y = whole(splits.train)["y"]
    majority = int(torch.bincount(train_y, minlength=10).argmax())
    acc = float((y == majority).float().mean())
    assert refs["accuracy"] == pytest.approx(acc)
    assert refs["macro_f1"] == pytest.approx(2 * acc / (1 + acc) / 10)
    assert 0.09 < refs["accuracy"] < 0.11  # ten nearly balanced classes


def test_declared_shape_and_outputs() -> None:
    assert TASK.primary_metric == "accuracy" and TASK.higher_is_better
    assert TASK.input_kind == "features" and not TASK.causal and not TASK.seeded_data
    assert TASK.published == ()  # the published figures are for MNIST, not for this image set
    task = make()
    assert task.output.kind == "class_per_sequence" and task.output.n_classes == 10
    assert task.files() == []
    digits = TASK.data_shape(TASK.make_params())
    assert (digits.n_features, digits.seq_len, digits.max_len) == (1, 64, 64)
    mnist = TASK.data_shape(TASK.make_params(images="mnist", permute=True))
    assert (mnist.n_features, mnist.seq_len, mnist.max_len, mnist.n_train) == (1, 784, 784, 55_000)
    assert set(TASK.variants) == {"permuted", "mnist", "mnist-permuted"}


@pytest.mark.parametrize(("params", "message"), [
    ({"images": "cifar"}, "images='cifar' is invalid: choose from digits, mnist"),
    ({"permute": "yes"}, "permute='yes' is invalid"),
    ({"permutation_seed": -1}, "permutation_seed=-1 is invalid"),
    ({"split_seed": 1.5}, "split_seed=1.5 is invalid"),
])
def test_invalid_params_are_refused(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PixelsParams(**params)


def test_missing_mnist_names_the_file(empty_data_dir: Path) -> None:
    task = make(data_dir=empty_data_dir, **TASK.variants["mnist"])
    assert [f.path for f in task.files()] == [f.path for f in MNIST_FILES.values()]
    with pytest.raises(MissingDataError) as err:
        task.setup()
    message = str(err.value)
    first = task.files()[0]
    assert first.path in message and first.url in message and str(empty_data_dir) in message
    assert list(empty_data_dir.iterdir()) == []


def _idx(path: Path, array: np.ndarray) -> None:
    magic = 2049 if array.ndim == 1 else 2051
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">II", magic, len(array)) + b"".join(struct.pack(">I", d) for d in array.shape[1:]))
        f.write(array.astype(np.uint8).tobytes())


def test_mnist_is_read_from_its_idx_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tiny fake MNIST (6 training images, 3 test), declared with its own checksums: the pixels,
    their scale, the last training images as validation and the test file as the test split."""
    import tasks.pixels

    monkeypatch.setattr(tasks.pixels, "MNIST_N_VAL", 2)
    rng = np.random.default_rng(0)
    images = {"train": rng.integers(0, 256, (6, 28, 28)), "test": rng.integers(0, 256, (3, 28, 28))}
    images["train"][0, 0, 0], images["train"][0, 0, 1] = 0, 255
    labels = {"train": np.array([3, 1, 4, 1, 5, 9]), "test": np.array([2, 6, 5])}
    for part in ("train", "test"):
        _idx(tmp_path / MNIST_FILES[f"{part}_images"].path, images[part])
        _idx(tmp_path / MNIST_FILES[f"{part}_labels"].path, labels[part])
    for key, file in MNIST_FILES.items():
        monkeypatch.setitem(MNIST_FILES, key, dataclasses.replace(file, sha256=digest_of(tmp_path / file.path)))
    task = make(data_dir=tmp_path, images="mnist")
    splits = task.setup()
    assert splits.sizes() == {"train": 4, "val": 2, "test": 3} and splits.seq_len == 784
    parts = {"train": (images["train"][:4], labels["train"][:4]), "val": (images["train"][4:], labels["train"][4:]),
             "test": (images["test"], labels["test"])}
    for name, (x, y) in parts.items():
        batch = whole(getattr(splits, name))
        assert batch["x"].shape == (len(y), 784, 1)
        np.testing.assert_allclose(batch["x"][..., 0].view(-1, 28, 28).numpy() * 255.0, x, rtol=0, atol=1e-3)
        assert batch["y"].tolist() == y.tolist()
    assert float(whole(splits.train)["x"].min()) == 0.0 and float(whole(splits.train)["x"].max()) == 1.0
    order = make(data_dir=tmp_path, images="mnist", permute=True).setup()
    permutation = make(images="mnist", permute=True).permutation()
    assert sorted(permutation.tolist()) == list(range(784))
    assert torch.equal(whole(order.test)["x"], whole(splits.test)["x"][:, permutation])


def test_a_corrupt_mnist_file_is_refused(empty_data_dir: Path) -> None:
    task = make(data_dir=empty_data_dir, images="mnist")
    for file in task.files():
        (empty_data_dir / file.path).parent.mkdir(parents=True, exist_ok=True)
        (empty_data_dir / file.path).write_bytes(b"not MNIST")
    with pytest.raises(ChecksumError, match=MNIST_FILES["train_images"].path):
        task.setup()
