"""Long-dependency problems with known answers: copy memory and adding.

Training data is drawn from the run's seed; validation and test sets are drawn from
fixed seeds, so every model and every seed is scored on the same held-out sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks.registry import Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, register_task

VAL_SEED, TEST_SEED = 1_000_003, 2_000_003  # fixed: held-out sets never change with the run seed


def training_seed(seed: int) -> int:
    """The run's seed, which draws the training set: never one of the held-out sets' seeds."""
    if seed in (VAL_SEED, TEST_SEED):
        raise ValueError(f"seed {seed} draws this task's {'validation' if seed == VAL_SEED else 'test'} set; "
                         "choose another seed")
    return seed


def split_seed(split: str, seed: int) -> int:
    """The seed that draws a split: the run's for training, fixed ones for the held-out sets."""
    return {"train": training_seed(seed), "val": VAL_SEED, "test": TEST_SEED}[split]


def check_positive(**values: int) -> None:
    for k, v in values.items():
        if v < 1:
            raise ValueError(f"{k}={v} is invalid: it must be >= 1")


@dataclass
class CopyParams:
    delay: int = 100  # T: blanks between the symbols and the cue
    n_symbols: int = 10  # symbols to remember
    alphabet: int = 8  # distinct symbols
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000

    def __post_init__(self) -> None:
        check_positive(delay=self.delay, n_symbols=self.n_symbols, alphabet=self.alphabet,
                        n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)


@register_task
class Copy(Task):
    """Copy memory (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    Input: n_symbols symbols from {1..alphabet}, delay-1 blanks (0), the cue
    (alphabet+1), then n_symbols blanks. Target: blank everywhere but the last
    n_symbols steps, which repeat the symbols. Not causal in the forecasting sense:
    the targets never depend on later inputs, so reading the future gains nothing.
    """

    name = "copy"
    description = "Copy memory: reproduce 10 symbols after a delay of T blanks (T = delay, default 100)"
    Params = CopyParams
    variants = {"T200": {"delay": 200}, "T500": {"delay": 500}}
    primary_metric = "ce"
    higher_is_better = False
    seeded_data = True

    def data_seed(self, split: str) -> int:
        return split_seed(split, self.seed)
    input_kind = "tokens"

    @classmethod
    def data_shape(cls, params: CopyParams) -> DataShape:
        T = params.delay + 2 * params.n_symbols
        n = params.n_train + params.n_val + params.n_test
        # x and y, int64 each: 16 bytes a step
        return DataShape(vocab_size=params.alphabet + 2, max_len=T, n_train=params.n_train, generated_bytes=16 * n * T)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_step", n_classes=self.params.alphabet + 1)

    def generate(self, n: int, seed: int) -> TensorSplit:
        p = self.params
        g = torch.Generator().manual_seed(seed)
        T = p.delay + 2 * p.n_symbols
        symbols = torch.randint(1, p.alphabet + 1, (n, p.n_symbols), generator=g)
        x = torch.zeros(n, T, dtype=torch.long)
        x[:, : p.n_symbols] = symbols
        x[:, p.n_symbols + p.delay - 1] = p.alphabet + 1  # the cue
        y = torch.zeros(n, T, dtype=torch.long)
        y[:, -p.n_symbols :] = symbols
        return TensorSplit(x=x, y=y)

    def setup(self) -> Splits:
        p = self.params
        return Splits(
            train=self.generate(p.n_train, training_seed(self.seed)),
            val=self.generate(p.n_val, VAL_SEED),
            test=self.generate(p.n_test, TEST_SEED),
            vocab_size=p.alphabet + 2,
        )

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred.flatten(0, 1), batch["y"].flatten())  # pred (B, T, C)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        k = self.params.n_symbols
        y = batch["y"]
        ce = F.cross_entropy(pred.transpose(1, 2), y, reduction="none")  # (B, T)
        right = pred[:, -k:].argmax(-1) == y[:, -k:]  # (B, k)
        return {
            "ce_sum": ce.sum(),
            "answer_ce_sum": ce[:, -k:].sum(),
            "symbols_right": right.sum(),
            "sequences_right": right.all(1).sum(),
            "steps": torch.tensor(y.numel()),
            "sequences": torch.tensor(len(y)),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        k = self.params.n_symbols
        n = float(s["sequences"])
        return {
            "ce": float(s["ce_sum"]) / float(s["steps"]),
            "answer_ce": float(s["answer_ce_sum"]) / (n * k),
            "symbol_accuracy": float(s["symbols_right"]) / (n * k),
            "exact_copy_accuracy": float(s["sequences_right"]) / n,
        }

    def references(self) -> dict[str, float]:
        p = self.params
        # A memoryless strategy: blanks with certainty, then a uniform guess at each answer.
        return {
            "ce": p.n_symbols * math.log(p.alphabet) / (p.delay + 2 * p.n_symbols),
            "answer_ce": math.log(p.alphabet),
            "symbol_accuracy": 1.0 / p.alphabet,
        }


@dataclass
class AddingParams:
    length: int = 100  # T: sequence length
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000

    def __post_init__(self) -> None:
        check_positive(n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        if self.length < 2:
            raise ValueError(f"length={self.length} is invalid: it must be >= 2")


@register_task
class Adding(Task):
    """Adding problem (Hochreiter & Schmidhuber 1997; Le et al. 2015).

    Two channels per step: a value drawn from U(0, 1) and a marker; exactly two steps
    are marked, one in each half. The target is the sum of the two marked values.
    Always predicting 1 gives an MSE of 1/6 = 0.167, the bar to clear.
    """

    name = "adding"
    description = "Adding problem: sum the two marked values of a length-T sequence (T = length, default 100)"
    Params = AddingParams
    variants = {"T200": {"length": 200}, "T400": {"length": 400}}
    primary_metric = "mse"
    higher_is_better = False
    seeded_data = True

    def data_seed(self, split: str) -> int:
        return split_seed(split, self.seed)

    @classmethod
    def data_shape(cls, params: AddingParams) -> DataShape:
        n, T = params.n_train + params.n_val + params.n_test, params.length
        # float32 values and markers while generating, then x of two channels: 16 bytes a step
        return DataShape(n_features=2, max_len=T, n_train=params.n_train, generated_bytes=16 * n * T)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("values", shape=(1,))

    def generate(self, n: int, seed: int) -> TensorSplit:
        T = self.params.length
        g = torch.Generator().manual_seed(seed)
        values = torch.rand(n, T, generator=g)
        first = torch.randint(0, T // 2, (n,), generator=g)
        second = torch.randint(T // 2, T, (n,), generator=g)
        markers = torch.zeros(n, T)
        rows = torch.arange(n)
        markers[rows, first] = 1.0
        markers[rows, second] = 1.0
        x = torch.stack([values, markers], dim=-1)  # (n, T, 2)
        y = (values[rows, first] + values[rows, second]).unsqueeze(-1)  # (n, 1)
        return TensorSplit(x=x, y=y)

    def setup(self) -> Splits:
        p = self.params
        return Splits(
            train=self.generate(p.n_train, training_seed(self.seed)),
            val=self.generate(p.n_val, VAL_SEED),
            test=self.generate(p.n_test, TEST_SEED),
            n_features=2,
        )

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(pred, batch["y"])

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        err = pred - batch["y"]
        return {"sq_err": (err**2).sum(), "abs_err": err.abs().sum(), "n": torch.tensor(err.numel())}

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["n"])
        return {"mse": float(s["sq_err"]) / n, "mae": float(s["abs_err"]) / n}

    def references(self) -> dict[str, float]:
        return {"mse": 1.0 / 6.0}
