"""Recall problems that need content-based selection: selective copying and associative recall.

Generated like copy and adding (``tasks.synthetic``): the training set from the run's seed,
validation and test from fixed seeds, so every model and seed is scored on the same sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tasks.registry import Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, register_task
from tasks.synthetic import TEST_SEED, VAL_SEED, check_positive, split_seed, training_seed


def _random_subsets(n: int, size: int, k: int, g: torch.Generator) -> torch.Tensor:
    """(n, k) distinct indices below ``size`` per row, a uniform random k-subset in random order.
    float64 keys: float32 ones tie often enough at these sizes to make the order hardware-dependent."""
    return torch.rand(n, size, generator=g, dtype=torch.float64).topk(k, dim=1).indices


@dataclass
class SelectiveCopyParams:
    length: int = 200  # steps holding the symbols among noise, before the answer steps
    n_symbols: int = 10  # symbols to remember, and answer steps
    alphabet: int = 8  # distinct symbols
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000

    def __post_init__(self) -> None:
        check_positive(length=self.length, n_symbols=self.n_symbols, alphabet=self.alphabet,
                        n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        if self.n_symbols > self.length:
            raise ValueError(f"n_symbols={self.n_symbols} is invalid: it must be <= length={self.length}")


@register_task
class SelectiveCopy(Task):
    """Selective copying (Gu & Dao 2023, "Mamba": figure 2; its setting in appendix E.1).

    Input: ``length`` steps of noise (0) holding n_symbols symbols from {1..alphabet} at random
    distinct positions, in order; then n_symbols cue steps (alphabet+1). Target: the symbols in
    order at the cue steps. Unlike copy, where the symbols sit at fixed steps, the positions
    change from sequence to sequence, so counting time steps solves nothing: a model must select
    the symbols by their content (what time-invariant convolutions and linear recurrences lack).

    Only the answer steps are scored, in the loss too, as in the S4/Mamba generator, whose
    target is the symbols alone: every other target is the noise token, trivially predicted,
    and would dilute the loss some length/n_symbols-fold (y holds 0 there; nothing reads it).
    Not causal in the forecasting sense: the targets never depend on later inputs.
    """

    name = "selective-copy"
    description = "Selective copying: recall 10 symbols scattered at random among `length` noise steps (default 200)"
    Params = SelectiveCopyParams
    # "mamba": Gu & Dao's appendix E.1 setting: sequences of length 4096, 16 tokens to memorise, a
    # vocabulary of 16 tokens counting the noise token. Here the 4096 steps include the 16 answer steps
    # (the paper does not say), and the 16 tokens are noise, 14 symbols and the cue, as in the
    # generator of the state-spaces/s4 repository (src/dataloaders/datasets/copying.py).
    variants = {"L1000": {"length": 1000}, "mamba": {"length": 4080, "n_symbols": 16, "alphabet": 14}}
    primary_metric = "symbol_accuracy"
    higher_is_better = True
    causal = False  # see the docstring: outputs at the cue steps need nothing after them
    input_kind = "tokens"
    seeded_data = True

    def data_seed(self, split: str) -> int:
        return split_seed(split, self.seed)

    @classmethod
    def data_shape(cls, params: SelectiveCopyParams) -> DataShape:
        T = params.length + params.n_symbols
        n = params.n_train + params.n_val + params.n_test
        # x and y, int64 each: 16 bytes a step; and the float64 keys that draw the training positions
        return DataShape(vocab_size=params.alphabet + 2, seq_len=T, max_len=T, n_train=params.n_train,
                         generated_bytes=16 * n * T + 8 * params.n_train * params.length)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_step", n_classes=self.params.alphabet + 1)  # noise and the symbols

    def generate(self, n: int, seed: int) -> TensorSplit:
        p = self.params
        g = torch.Generator().manual_seed(seed)
        symbols = torch.randint(1, p.alphabet + 1, (n, p.n_symbols), generator=g)
        positions = _random_subsets(n, p.length, p.n_symbols, g).sort(dim=1).values  # (n, k), increasing
        x = torch.zeros(n, p.length + p.n_symbols, dtype=torch.long)
        x.scatter_(1, positions, symbols)
        x[:, p.length :] = p.alphabet + 1  # the cue, at every answer step
        y = torch.zeros_like(x)
        y[:, p.length :] = symbols
        return TensorSplit(x=x, y=y)

    def setup(self) -> Splits:
        p = self.params
        return Splits(
            train=self.generate(p.n_train, training_seed(self.seed)),
            val=self.generate(p.n_val, VAL_SEED),
            test=self.generate(p.n_test, TEST_SEED),
            vocab_size=p.alphabet + 2,
            seq_len=p.length + p.n_symbols,
        )

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        k = self.params.n_symbols
        return F.cross_entropy(pred[:, -k:].flatten(0, 1), batch["y"][:, -k:].flatten())  # pred (B, T, C)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        k = self.params.n_symbols
        answers, y = pred[:, -k:], batch["y"][:, -k:]  # (B, k, C), (B, k)
        ce = F.cross_entropy(answers.transpose(1, 2), y, reduction="none")  # (B, k)
        right = answers.argmax(-1) == y  # (B, k)
        return {
            "answer_ce_sum": ce.sum(),
            "symbols_right": right.sum(),
            "sequences_right": right.all(1).sum(),
            "sequences": torch.tensor(len(y)),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["sequences"])
        answers = n * self.params.n_symbols
        return {
            "answer_ce": float(s["answer_ce_sum"]) / answers,
            "symbol_accuracy": float(s["symbols_right"]) / answers,
            "exact_copy_accuracy": float(s["sequences_right"]) / n,
        }

    def references(self) -> dict[str, float]:
        # Memoryless: a uniform guess over the alphabet at each answer step.
        a = self.params.alphabet
        return {"answer_ce": math.log(a), "symbol_accuracy": 1.0 / a}


@dataclass
class AssocRecallParams:
    n_pairs: int = 8  # keys, each bound to its own value in a sequence
    vocab: int = 16  # key tokens, and as many value tokens
    length: int = 64  # context tokens: length/2 key-value pairs, then the query key
    n_train: int = 10_000
    n_val: int = 1_000
    n_test: int = 1_000

    def __post_init__(self) -> None:
        check_positive(n_pairs=self.n_pairs, vocab=self.vocab, length=self.length,
                        n_train=self.n_train, n_val=self.n_val, n_test=self.n_test)
        if self.n_pairs > self.vocab:
            raise ValueError(f"n_pairs={self.n_pairs} is invalid: it must be <= vocab={self.vocab} (distinct keys)")
        if self.length % 2:
            raise ValueError(f"length={self.length} is invalid: it must be even (key-value pairs)")
        if self.length < 2 * self.n_pairs:
            raise ValueError(f"length={self.length} is invalid: it must be >= 2 * n_pairs = {2 * self.n_pairs} "
                             "(every key appears)")


@register_task
class AssocRecall(Task):
    """Associative recall (the induction-head task of H3, Fu et al. 2023; one query of Zoology's
    MQAR, Arora et al. 2023).

    Each sequence binds n_pairs distinct keys (tokens 1..vocab) to distinct values (tokens
    vocab+1..2*vocab; token 0 is never used). Its context is length/2 key-value pairs of that
    mapping, every key at least once, in random order; then one query key. Target: the index
    (0..vocab-1) of the query's value. Keys and values change with every sequence, so nothing
    can be memorised across sequences: the value must be looked up in the context.

    Values are distinct within a sequence, so a model that guesses among the values of its
    context, without the lookup, scores 1/n_pairs: the second reference. Not causal in the
    forecasting sense: the one output comes after every input it needs.
    """

    name = "assoc-recall"
    description = "Associative recall: the value bound to a query key, after `length` key-value tokens (default 64)"
    Params = AssocRecallParams
    variants = {"L256": {"length": 256}, "K32": {"n_pairs": 32, "vocab": 64, "length": 256}}
    primary_metric = "accuracy"
    higher_is_better = True
    causal = False  # the target is read after the whole context: no later input matters
    input_kind = "tokens"
    seeded_data = True

    def data_seed(self, split: str) -> int:
        return split_seed(split, self.seed)

    @classmethod
    def data_shape(cls, params: AssocRecallParams) -> DataShape:
        T = params.length + 1
        n = params.n_train + params.n_val + params.n_test
        # x, int64: 8 bytes a step; the float64 keys that shuffle the training pairs, 4 bytes a step
        return DataShape(vocab_size=2 * params.vocab + 1, seq_len=T, max_len=T, n_train=params.n_train,
                         generated_bytes=8 * n * (T + 1) + 4 * params.n_train * params.length)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_sequence", n_classes=self.params.vocab)

    def generate(self, n: int, seed: int) -> TensorSplit:
        p = self.params
        g = torch.Generator().manual_seed(seed)
        rows = torch.arange(n).unsqueeze(1)
        keys = _random_subsets(n, p.vocab, p.n_pairs, g) + 1  # (n, P) distinct key tokens
        values = _random_subsets(n, p.vocab, p.n_pairs, g)  # (n, P) distinct value indices
        slots = p.length // 2
        # which pair fills each slot: every pair once, the rest drawn at random; then shuffled
        pair = torch.cat([torch.arange(p.n_pairs).expand(n, -1),
                          torch.randint(0, p.n_pairs, (n, slots - p.n_pairs), generator=g)], dim=1)
        order = torch.rand(n, slots, generator=g, dtype=torch.float64).argsort(dim=1, stable=True)
        pair = pair[rows, order]  # (n, slots)
        context = torch.stack([keys[rows, pair], values[rows, pair] + p.vocab + 1], dim=-1).flatten(1)  # (n, length)
        query = torch.randint(0, p.n_pairs, (n, 1), generator=g)
        x = torch.cat([context, keys[rows, query]], dim=1)  # (n, length + 1)
        y = values[rows, query].squeeze(1)  # (n,)
        return TensorSplit(x=x, y=y)

    def setup(self) -> Splits:
        p = self.params
        return Splits(
            train=self.generate(p.n_train, training_seed(self.seed)),
            val=self.generate(p.n_val, VAL_SEED),
            test=self.generate(p.n_test, TEST_SEED),
            vocab_size=2 * p.vocab + 1,
            seq_len=p.length + 1,
        )

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["y"])  # pred (B, vocab)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        y = batch["y"]
        return {
            "ce_sum": F.cross_entropy(pred, y, reduction="sum"),
            "right": (pred.argmax(-1) == y).sum(),
            "n": torch.tensor(len(y)),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["n"])
        return {"accuracy": float(s["right"]) / n, "ce": float(s["ce_sum"]) / n}

    def references(self) -> dict[str, float]:
        p = self.params
        # Memoryless: a uniform guess over every value; and a guess among the context's values.
        return {"accuracy": 1.0 / p.vocab, "ce": math.log(p.vocab), "context_guess_accuracy": 1.0 / p.n_pairs}
