"""Character language modelling: predict the next character at every step.

Causal by nature: the target at step t is the input at t+1, so a model that reads later
steps would see the answer; bidirectional models are refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks.data import DataFile, ensure
from tasks.registry import Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, register_task

PAD, UNK = 0, 1


@dataclass
class CharLMParams:
    seq_len: int = 32  # characters per subsequence
    val_fraction: float = 0.1  # of the text, taken after the training part
    test_fraction: float = 0.1  # the end of the text

    def __post_init__(self) -> None:
        if self.seq_len < 2:
            raise ValueError(f"seq_len={self.seq_len} is invalid: it must be >= 2")
        fractions = (self.val_fraction, self.test_fraction)
        if not (all(0 < f < 1 for f in fractions) and sum(fractions) < 1):
            raise ValueError("val_fraction and test_fraction must be in (0, 1) and sum below 1")


@register_task
class TimeMachine(Task):
    """H. G. Wells, *The Time Machine*, as a character stream (the d2l.ai preprocessing:
    every run of non-letters becomes one space, lower case). Chronological split: the
    first 80% of the characters train, the next 10% validate, the last 10% test. Each
    split is cut into non-overlapping subsequences, so every character after a
    subsequence's first is predicted exactly once."""

    name = "timemachine"
    description = "The Time Machine, next-character prediction on 32-character subsequences (perplexity)"
    Params = CharLMParams
    primary_metric = "perplexity"
    higher_is_better = False
    causal = True
    input_kind = "tokens"
    file = DataFile(
        "timemachine/timemachine.txt",
        "8424dbd9532ac81f7e5f0b6add90e6952baea29158309d7d1bf3884f4e12c516",
        "https://raw.githubusercontent.com/d2l-ai/d2l-zh/592fbef84a684e752393edbf267c07dbc53e082b/data/timemachine.txt",
        dataset="The Time Machine",
    )

    def files(self) -> list[DataFile]:
        return [self.file]

    @classmethod
    def data_shape(cls, params: CharLMParams) -> DataShape:
        # preprocess() keeps 26 letters and the space; with padding and unknown: at most 29 ids.
        # The text (~180k characters) is read from its file.
        return DataShape(vocab_size=29, max_len=params.seq_len)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_step", n_classes=len(getattr(self, "itos", ())))  # known after setup()

    @staticmethod
    def preprocess(text: str) -> str:
        return " ".join(re.sub("[^A-Za-z]+", " ", line).strip().lower() for line in text.splitlines() if line.strip())

    def chunks(self, ids: torch.Tensor) -> TensorSplit:
        T = self.params.seq_len
        n = (len(ids) - 1) // T
        x = ids[: n * T].view(n, T)
        y = ids[1 : n * T + 1].view(n, T)
        return TensorSplit(x=x, y=y)

    def setup(self) -> Splits:
        p = self.params
        text = self.preprocess(ensure(self.file, self.data_dir).read_text(encoding="utf-8"))
        n = len(text)
        val_start, test_start = round(n * (1 - p.val_fraction - p.test_fraction)), round(n * (1 - p.test_fraction))
        parts = {"train": text[:val_start], "val": text[val_start:test_start], "test": text[test_start:]}
        self.itos = ["<pad>", "<unk>", *sorted(set(parts["train"]))]  # fitted on training text only
        stoi = {c: i for i, c in enumerate(self.itos)}
        splits = {k: self.chunks(torch.tensor([stoi.get(c, UNK) for c in t])) for k, t in parts.items()}
        return Splits(**splits, vocab_size=len(self.itos))

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred.flatten(0, 1), batch["y"].flatten())  # pred (B, T, V)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch["y"]
        ce = F.cross_entropy(pred.transpose(1, 2), y, reduction="sum")
        return {"ce_sum": ce, "right": (pred.argmax(-1) == y).sum(), "n": torch.tensor(y.numel())}

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        ce = float(s["ce_sum"]) / float(s["n"])
        accuracy = float(s["right"]) / float(s["n"])
        return {"perplexity": math.exp(ce), "bits_per_char": ce / math.log(2), "accuracy": accuracy}

    def references(self) -> dict[str, float]:
        """A uniform guess over the characters seen in training."""
        return {"perplexity": float(len(self.itos) - 2)} if hasattr(self, "itos") else {}
