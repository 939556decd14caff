"""ListOps (Nangia & Bowman 2018) as Long Range Arena generates it (Tay et al. 2021).

A sequence is a nested prefix expression over the digits 0-9, such as
``[MAX 2 9 [MIN 4 7 ] 0 ]``; its label is the expression's value. The generator follows LRA's
``lra_benchmarks/data/listops.py`` (google-research/long-range-arena), its rules restated:
  - a node at depth < max_depth (the root is at depth 1) is an operator with probability 0.25
    and a digit otherwise; at max_depth it is always a digit;
  - an operator has 2..max_args arguments (uniform) and is one of MAX, MIN, MED (the median:
    for an even count the mean of the middle two, rounded down, as ``int(np.median(...))``) and
    SM (the sum modulo 10), uniform;
  - the length is counted in tokens: a digit, an operator and a closing ']' are one each (the
    reference's '(' ')' scaffolding is not part of the sequence); an expression is kept when
    min_length < length < max_length, both strict, as the reference's test is;
  - duplicates are dropped, and train/val/test are cut from one pool of distinct expressions.
The code is written afresh; it draws the same distribution of trees (see ``_Generator``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate

import torch
import torch.nn.functional as F

from tasks.published import Published
from tasks.registry import Batch, DataShape, OutputSpec, PaddedSplit, Splits, Task, confusion_metrics, register_task

OPERATORS = ("[MAX", "[MIN", "[MED", "[SM")
CLOSE = "]"
VOCAB = ("<pad>", *(str(d) for d in range(10)), *OPERATORS, CLOSE)  # token id -> token; 0 pads
DIGIT0, OP0, CLOSE_ID = 1, 11, 15  # ids of the digit 0, of '[MAX', and of ']'
N_CLASSES = 10
P_OPERATOR = 0.25  # LRA's VALUE_P: a node below max_depth is an operator with this probability
MAX_FRUITLESS_DRAWS = 1_000_000  # draws in a row without a new expression: the window is (nearly) empty


def longest_expression(max_depth: int, max_args: int) -> int:
    """Tokens in the largest tree the rules allow (every node an operator of max_args arguments)."""
    length = 1  # a digit at max_depth
    for _ in range(max_depth - 1):
        length = 2 + max_args * length
    return length


def evaluate(op: int, args: list[int]) -> int:
    """The value of operator ``OPERATORS[op]`` over its argument values."""
    if op == 0:
        return max(args)
    if op == 1:
        return min(args)
    if op == 2:
        s = sorted(args)
        mid = len(s) // 2
        return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) // 2  # int(np.median(...)): floor
    return sum(args) % 10


@dataclass
class ListOpsParams:
    min_length: int = 50  # kept: min_length < tokens < max_length (LRA: 500 and 2000)
    max_length: int = 200
    max_depth: int = 10  # LRA's; the root is at depth 1
    max_args: int = 10  # LRA's; at least 2
    n_train: int = 20_000
    n_val: int = 2_000
    n_test: int = 2_000
    seed: int = 0  # the fixed generator seed: every run, whatever its seed, sees the same data

    def __post_init__(self) -> None:
        for k in ("min_length", "max_depth", "n_train", "n_val", "n_test"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} is invalid: it must be >= 1")
        if self.max_args < 2:
            raise ValueError(f"max_args={self.max_args} is invalid: it must be >= 2")
        if self.max_length < self.min_length + 2:
            raise ValueError(f"max_length={self.max_length} is invalid: lengths are kept strictly between "
                             f"min_length and max_length, so it must be >= min_length + 2 = {self.min_length + 2}")
        longest = longest_expression(self.max_depth, self.max_args)
        if self.min_length >= longest:
            raise ValueError(f"min_length={self.min_length} is invalid: with max_depth={self.max_depth} and "
                             f"max_args={self.max_args} no expression is longer than {longest} tokens")


class _Generator:
    """LRA's trees, drawn level by level: the shape first (which nodes are operators, and how
    many arguments each has: that alone fixes the length), so a tree outside the length window
    is given up once its length is known to be too long, before any digit or operator is drawn.
    Every node is still an independent draw with LRA's probabilities, so the trees come from
    the same distribution as the reference's depth-first recursion."""

    def __init__(self, p: ListOpsParams) -> None:
        self.p = p
        self.rng = random.Random(p.seed)  # its own generator: no global state

    def shape(self) -> list[list[int]] | None:
        """Per level, each node's argument count (0: a digit), or None if out of the window."""
        p, rand, span = self.p, self.rng.random, self.p.max_args - 1
        if p.max_depth == 1 or rand() > P_OPERATOR:  # the root is a digit: 1 token, too short
            return None
        levels = [[2 + int(rand() * span)]]
        length, width = 2, levels[0][0]  # tokens so far (an operator and its ']'); nodes on the next level
        for depth in range(2, p.max_depth + 1):
            if depth < p.max_depth:
                level = [2 + int(rand() * span) if rand() <= P_OPERATOR else 0 for _ in range(width)]
            else:
                level = [0] * width
            levels.append(level)
            below = sum(level)
            length += width + (width - level.count(0))  # every node, and a ']' per operator
            if length + below >= p.max_length:  # each node below adds at least one token
                return None
            if below == 0:
                break
            width = below
        return levels if length > p.min_length else None

    def fill(self, levels: list[list[int]]) -> tuple[bytes, int]:
        """The token ids (depth first, as written) and the value of a tree of this shape."""
        rand = self.rng.random
        # per level, the index on the next level of each node's first argument
        first = [list(accumulate(level, initial=0)) for level in levels]
        out = bytearray()

        def operator(depth: int, i: int) -> int:  # node i of level depth, an operator; its value
            below, start = levels[depth + 1], first[depth][i]
            at = len(out)
            out.append(0)  # the operator, drawn after its arguments as in the reference
            args = []
            for j in range(start, start + levels[depth][i]):
                if below[j]:
                    args.append(operator(depth + 1, j))
                else:  # a digit, inline: most nodes are digits
                    digit = int(rand() * 10)
                    out.append(DIGIT0 + digit)
                    args.append(digit)
            op = int(rand() * len(OPERATORS))
            out[at] = OP0 + op
            out.append(CLOSE_ID)
            return evaluate(op, args)

        value = operator(0, 0)  # ``shape`` never gives a lone digit
        return bytes(out), value

    def pool(self, n: int) -> list[tuple[bytes, int]]:
        """``n`` distinct expressions with their values, in a random order."""
        found: dict[bytes, int] = {}
        fruitless = 0
        while len(found) < n:
            levels = self.shape()
            if levels is not None:
                tokens, value = self.fill(levels)
                if tokens not in found:
                    found[tokens] = value
                    fruitless = 0
                    continue
            fruitless += 1
            if fruitless >= MAX_FRUITLESS_DRAWS:
                p = self.p
                raise ValueError(f"listops: only {len(found)} of the {n} distinct expressions asked for exist between "
                                 f"{p.min_length} and {p.max_length} tokens (max_depth={p.max_depth}, "
                                 f"max_args={p.max_args}); widen the length range or ask for fewer")
        items = list(found.items())
        # Expressions drawn often come early; a shuffle makes each split a uniform draw of the pool.
        self.rng.shuffle(items)
        return items


def _split(items: list[tuple[bytes, int]]) -> PaddedSplit:
    # uint8 ids (the vocabulary has 16): an eighth of int64's memory; batches are int64
    seqs = [torch.frombuffer(bytearray(tokens), dtype=torch.uint8) for tokens, _ in items]
    return PaddedSplit(seqs, torch.tensor([v for _, v in items], dtype=torch.long))


@register_task
class ListOps(Task):
    """ListOps as in Long Range Arena: the value (0-9) of a nested MAX/MIN/MED/SM expression.

    Tokens: the ten digits, the four operators ('[MAX' is one token) and the closing bracket
    ']'. The brackets are kept: LRA's original input pipeline stripped ']' (its tokenizer
    dropped non-alphanumerics), which leaves the nesting ambiguous and the task nearly
    unsolvable; upstream later fixed it by renaming ']' to a kept token. The data comes from
    the fixed ``seed`` parameter, never the run's seed.
    """

    name = "listops"
    description = "ListOps (LRA): the value 0-9 of a nested MAX/MIN/MED/SM expression, 50-200 tokens (lra: 500-2000)"
    version = 1
    Params = ListOpsParams
    variants = {"lra": {"min_length": 500, "max_length": 2000, "n_train": 96_000, "n_val": 2_000, "n_test": 2_000}}
    primary_metric = "accuracy"
    higher_is_better = True
    causal = False  # one label per sequence, the value of the whole expression: nothing to predict step by step
    input_kind = "tokens"
    seeded_data = False
    published = (
        Published("Transformer", "accuracy", 0.364, "Tay et al. 2021 (LRA)",
                  "lengths 500-2000, 96k training sequences"),
        Published("S4", "accuracy", 0.596, "Gu et al. 2022", "LRA setting"),
    )

    @classmethod
    def data_shape(cls, params: ListOpsParams) -> DataShape:
        n = params.n_train + params.n_val + params.n_test
        # Below max_length uint8 ids a sequence, held twice while the splits are made (the pool's
        # bytes and the tensors), with ~256 bytes of Python and torch objects each.
        return DataShape(vocab_size=len(VOCAB), max_len=params.max_length, n_train=params.n_train,
                         generated_bytes=n * (2 * params.max_length + 256))

    @classmethod
    def recipe(cls, params: ListOpsParams, budget: dict[str, object]) -> dict[str, object]:
        # LRA trains ListOps (up to 2,000 tokens) in batches of 32; the default's 200 tokens fit 64.
        return {"train.batch_size": 32} if params.max_length > 500 else {}

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_sequence", n_classes=N_CLASSES)

    def setup(self) -> Splits:
        p = self.params
        items = _Generator(p).pool(p.n_train + p.n_val + p.n_test)
        train, val, test = items[: p.n_train], items[p.n_train : p.n_train + p.n_val], items[p.n_train + p.n_val :]
        counts = torch.bincount(torch.tensor([v for _, v in train]), minlength=N_CLASSES)
        self.majority = int(counts.argmax())
        self.test_labels = torch.tensor([v for _, v in test])
        return Splits(train=_split(train), val=_split(val), test=_split(test), vocab_size=len(VOCAB))

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["y"])  # pred (B, 10)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        cells = batch["y"] * N_CLASSES + pred.argmax(-1)
        return {"confusion": torch.bincount(cells, minlength=N_CLASSES**2).view(N_CLASSES, N_CLASSES)}  # rows: truth

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        return confusion_metrics(s["confusion"])

    def references(self) -> dict[str, float]:
        """Always predicting the training split's majority class, scored on test."""
        if not hasattr(self, "majority"):
            return {}
        acc = float((self.test_labels == self.majority).double().mean())
        return {"accuracy": acc, "macro_f1": 2 * acc / (1 + acc) / N_CLASSES}
