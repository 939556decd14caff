"""Sequential pixel-by-pixel image classification (Le et al. 2015): an image is read one
pixel at a time, one real-valued feature per step, and classified after its last pixel.

Two image sets: scikit-learn's 8x8 handwritten digits (1,797 images shipped inside the
scikit-learn package, so nothing to download; 64 steps) by default, and MNIST (28x28, 784
steps) where the data directory holds its four IDX files. The ``permute`` variant reads the
pixels in one fixed random order (drawn from ``permutation_seed``, the same for every image
and every run), which scatters neighbouring pixels far apart in time.

Neither the splits nor the permutation depend on the run seed.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tasks.data import DataFile, ensure
from tasks.registry import Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, confusion_metrics, register_task
from tasks.text import grouped_split

N_CLASSES = 10
IMAGES = {"digits": 8, "mnist": 28}  # image set -> side in pixels
DIGITS_FRACTIONS = (0.2, 0.2)  # validation, test: a stratified 60/20/20 split of the 1,797 digits
DIGITS_N_TRAIN = 1_079  # what that split leaves for training (per-class rounding; tested)
MNIST_N_VAL = 5_000  # the last 5,000 images of MNIST's 60,000 training images validate

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of LeCun's files


def _mnist_file(name: str, sha256: str, md5: str) -> DataFile:
    # md5: torchvision's MNIST.resources; sha256: the same files as published in many loaders
    return DataFile(f"mnist/{name}", sha256, _MNIST_URL + name, dataset="MNIST", md5=md5)


MNIST_FILES = {
    "train_images": _mnist_file("train-images-idx3-ubyte.gz",
                                "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
                                "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
    "train_labels": _mnist_file("train-labels-idx1-ubyte.gz",
                                "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
                                "d53e105ee54ea40749a09fcbcd1e9432"),
    "test_images": _mnist_file("t10k-images-idx3-ubyte.gz",
                               "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
                               "9fb629c4189551a2d022fa330f9573f3"),
    "test_labels": _mnist_file("t10k-labels-idx1-ubyte.gz",
                               "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
                               "ec29112dd5afa0611ce80d1b7f02629c"),
}


def read_idx(path: Path, magic: int) -> np.ndarray:
    """A gzipped IDX file of unsigned bytes (MNIST's format): (n,) labels or (n, rows, cols) images."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    got, n = struct.unpack(">II", data[:8])
    if got != magic:
        raise ValueError(f"{path} is not an IDX file of this kind: magic number {got}, expected {magic}")
    dims = (n,) if magic == 2049 else (n, *struct.unpack(">II", data[8:16]))
    offset = 8 if magic == 2049 else 16
    return np.frombuffer(data, dtype=np.uint8, count=int(np.prod(dims)), offset=offset).reshape(dims)


@dataclass
class PixelsParams:
    images: str = "digits"  # "digits" (scikit-learn's 8x8, shipped) or "mnist" (28x28, from the data directory)
    permute: bool = False  # read the pixels in one fixed random order instead of row by row
    permutation_seed: int = 0  # draws that order: fixed, so every run reads the same one
    split_seed: int = 0  # the fixed stratified digits split; not the run seed (MNIST's split is its own)

    def __post_init__(self) -> None:
        if self.images not in IMAGES:
            raise ValueError(f"images='{self.images}' is invalid: choose from {', '.join(IMAGES)}")
        if not isinstance(self.permute, bool):
            raise ValueError(f"permute={self.permute!r} is invalid: it must be true or false")
        for name in ("permutation_seed", "split_seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{name}={value!r} is invalid: it must be an integer >= 0")


@register_task
class SeqPixels(Task):
    """Pixel-by-pixel digit classification: a class per image from its pixels, one per step,
    each scaled to [0, 1]. Metrics are exact over a split: accuracy and macro-F1 from a
    summed confusion matrix.

    Digits: a fixed split stratified by class (60/20/20, from ``split_seed``), each split in
    file order; images with identical pixels are kept in one split (the set holds none today).
    MNIST: the standard 60k/10k split, the last 5,000 training images for validation.
    """

    name = "seq-pixels"
    description = "Sequential (or permuted) pixel-by-pixel digit classification: 8x8 digits, 64 steps (or MNIST)"
    Params = PixelsParams
    variants = {
        "permuted": {"permute": True},
        "mnist": {"images": "mnist"},
        "mnist-permuted": {"images": "mnist", "permute": True},
    }
    primary_metric = "accuracy"
    higher_is_better = True
    input_kind = "features"
    # One label per whole image, given after its last pixel: reading later pixels reveals no
    # answer. The usual protocol reads them in order with a unidirectional RNN, but a
    # bidirectional reader is a fair model of the image, so it is not refused.
    causal = False

    @classmethod
    def data_shape(cls, params: PixelsParams) -> DataShape:
        T = IMAGES[params.images] ** 2
        n_train = DIGITS_N_TRAIN if params.images == "digits" else 60_000 - MNIST_N_VAL
        return DataShape(n_features=1, seq_len=T, max_len=T, n_train=n_train)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_sequence", n_classes=N_CLASSES)

    def files(self) -> list[DataFile]:
        return list(MNIST_FILES.values()) if self.params.images == "mnist" else []

    def split_files(self, split: str) -> list[DataFile]:
        if self.params.images != "mnist":
            return []
        part = "test" if split == "test" else "train"
        return [MNIST_FILES[f"{part}_images"], MNIST_FILES[f"{part}_labels"]]

    def permutation(self) -> torch.Tensor:
        """The order the pixels are read in: row by row, or the fixed random order."""
        T = IMAGES[self.params.images] ** 2
        if not self.params.permute:
            return torch.arange(T)
        return torch.randperm(T, generator=torch.Generator().manual_seed(self.params.permutation_seed))

    def load_digits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from sklearn.datasets import load_digits  # heavy; only when this image set is used

        digits = load_digits()
        images, labels = digits.images.astype(np.float32) / 16.0, digits.target.astype(np.int64)  # raw 0..16
        keys = [image.tobytes().hex() for image in digits.images]  # identical pixels: one group
        idx = grouped_split(keys, labels, DIGITS_FRACTIONS, self.params.split_seed)
        return {k: (images[rows], labels[rows]) for k, rows in idx.items()}

    def load_mnist(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        read = {k: read_idx(ensure(f, self.data_dir), 2051 if k.endswith("images") else 2049)
                for k, f in MNIST_FILES.items()}
        train_x, train_y = read["train_images"], read["train_labels"]
        n_train = len(train_x) - MNIST_N_VAL
        raw = {"train": (train_x[:n_train], train_y[:n_train]), "val": (train_x[n_train:], train_y[n_train:]),
               "test": (read["test_images"], read["test_labels"])}
        return {k: (x.astype(np.float32) / 255.0, y.astype(np.int64)) for k, (x, y) in raw.items()}

    def setup(self) -> Splits:
        raw = self.load_mnist() if self.params.images == "mnist" else self.load_digits()
        order = self.permutation()
        splits = {}
        for k, (images, labels) in raw.items():
            x = torch.from_numpy(images).flatten(1)[:, order].unsqueeze(-1)  # (n, T, 1)
            splits[k] = TensorSplit(x=x.contiguous(), y=torch.from_numpy(labels))
        counts = np.bincount(raw["train"][1], minlength=N_CLASSES)
        self.majority = int(counts.argmax())
        self.test_labels = torch.from_numpy(raw["test"][1])
        return Splits(**splits, n_features=1, seq_len=len(order))

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["y"])  # pred (B, C)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        return {"confusion": confusion(batch["y"], pred.argmax(-1))}

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        return confusion_metrics(s["confusion"])

    def references(self) -> dict[str, float]:
        """Always predicting the training split's majority class, scored on test."""
        if not hasattr(self, "majority"):
            return {}
        guess = torch.full_like(self.test_labels, self.majority)
        return self.finalize({"confusion": confusion(self.test_labels, guess)})


def confusion(truth: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """(C, C) counts, rows the true class: additive over batches."""
    cells = truth * N_CLASSES + predicted
    return torch.bincount(cells, minlength=N_CLASSES * N_CLASSES).view(N_CLASSES, N_CLASSES)
