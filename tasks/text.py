"""Text classification: one label per document, read as a sequence of word ids.

The vocabulary is fitted on the training split only (capped, with an unknown token);
evaluation keeps every sample, in file order.
"""

from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.data import DataFile, ensure
from tasks.registry import Batch, OutputSpec, PaddedSplit, Splits, Task, register_task

PAD, UNK = 0, 1
_URL = re.compile(r"https?://\S+|www\.\S+")
_USER = re.compile(r"@\w+")
_TOKEN = re.compile(r"<url>|<user>|[a-z0-9]+(?:'[a-z]+)?|[^\s\w]")


def tokenize(text: str) -> list[str]:
    text = html.unescape(text).lower()
    text = _URL.sub(" <url> ", text)
    text = _USER.sub(" <user> ", text)
    return _TOKEN.findall(text)


class Vocabulary:
    """Word -> id, fitted on training texts: the most frequent words, the rest are UNK."""

    def __init__(self, texts: list[list[str]], max_size: int, min_freq: int) -> None:
        counts = Counter(tok for toks in texts for tok in toks)
        words = [w for w, c in counts.most_common(max_size - 2) if c >= min_freq]
        self.ids = {w: i + 2 for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, tokens: list[str], max_len: int) -> torch.Tensor:
        ids = [self.ids.get(t, UNK) for t in tokens[:max_len]] or [UNK]  # never empty
        return torch.tensor(ids, dtype=torch.long)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> dict[str, np.ndarray]:
    """Row indices of train/val/test, class proportions kept, each in file order."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


@dataclass
class TextParams:
    max_len: int = 64  # tokens kept per document (the rest is truncated)
    vocab_size: int = 20_000  # cap, including PAD and UNK
    min_freq: int = 2  # rarer training words become UNK
    split_seed: int = 0  # the fixed train/val/test split; not the run seed
    val_fraction: float = 0.1
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.vocab_size < 3 or self.min_freq < 1:
            raise ValueError("max_len >= 1, vocab_size >= 3 and min_freq >= 1 are required")
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1
                and self.val_fraction + self.test_fraction < 1):
            raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")


class TextClassificationTask(Task):
    n_classes: ClassVar[int]
    Params = TextParams
    primary_metric = "accuracy"
    higher_is_better = True

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_sequence", n_classes=self.n_classes)

    def load(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Raw (texts, labels) per split."""
        raise NotImplementedError

    def setup(self) -> Splits:
        raw = self.load()
        tokens = {k: [tokenize(t) for t in texts] for k, (texts, _) in raw.items()}
        p = self.params
        self.vocab = Vocabulary(tokens["train"], p.vocab_size, p.min_freq)
        counts = np.bincount(raw["train"][1], minlength=self.n_classes)
        self.majority = int(counts.argmax())
        self.test_labels = raw["test"][1]
        splits = {
            k: PaddedSplit([self.vocab.encode(t, p.max_len) for t in tokens[k]], torch.as_tensor(raw[k][1]))
            for k in raw
        }
        return Splits(**splits, vocab_size=len(self.vocab))

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["y"])

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        C = self.n_classes
        cells = batch["y"] * C + pred.argmax(-1)
        return {"confusion": torch.bincount(cells, minlength=C * C).view(C, C)}  # rows: truth

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        cm = s["confusion"].double()
        tp = cm.diag()
        precision = tp / cm.sum(0).clamp(min=1)
        recall = tp / cm.sum(1).clamp(min=1)
        f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
        return {"accuracy": float(tp.sum() / cm.sum()), "macro_f1": float(f1.mean())}

    def references(self) -> dict[str, float]:
        """Always predicting the training split's majority class, scored on test."""
        if not hasattr(self, "majority"):
            return {}
        acc = float((self.test_labels == self.majority).mean())
        return {"accuracy": acc, "macro_f1": 2 * acc / (1 + acc) / self.n_classes}


@register_task
class Tweets(TextClassificationTask):
    """Kaggle 'NLP with Disaster Tweets' (labelled train.csv only): is a tweet about a real disaster?

    Kaggle hides the test labels, so a fixed stratified 80/10/10 split is made from
    ``split_seed``.
    """

    name = "tweets"
    description = "Disaster tweets (7,613): real disaster or not; fixed stratified 80/10/10 split"
    n_classes = 2
    file = DataFile(
        "disaster_tweets/train.csv",
        "61111c6dc31eaffa34d1e1fa62e2395325c9bc3b38bba1941a5f1ed9b3fa60df",
        "https://raw.githubusercontent.com/FernandoLpz/Text-Classification-LSTMs-PyTorch/"
        "56347a2c3ac764f83869d24f5ebc7c15878241dc/data/tweets.csv",
        dataset="Disaster tweets",
    )

    def files(self) -> list[DataFile]:
        return [self.file]

    def load(self) -> dict[str, tuple[list[str], np.ndarray]]:
        df = pd.read_csv(ensure(self.file, self.data_dir))
        texts, labels = df["text"].astype(str).tolist(), df["target"].to_numpy(dtype=np.int64)
        p = self.params
        idx = stratified_split(labels, (p.val_fraction, p.test_fraction), p.split_seed)
        return {k: ([texts[i] for i in rows], labels[rows]) for k, rows in idx.items()}
