"""Selective copying and associative recall: layout, seeds, balance, references and metrics."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from tasks import get_task
from tasks.synthetic import VAL_SEED

SPLITS = ("train", "val", "test")
SIZES = {"n_train": 256, "n_val": 128, "n_test": 128}
COPY = {"length": 24, "n_symbols": 5, "alphabet": 6, **SIZES}  # C(24, 5) * 6^5 = 3.3e8 sequences
RECALL = {"n_pairs": 4, "vocab": 8, "length": 16, **SIZES}


def make(name: str, seed: int = 0, **params: Any) -> Any:
    cls = get_task(name)
    return cls(cls.make_params(**params), None, seed)


def whole(split: Any) -> dict[str, torch.Tensor]:
    return split.__getitems__(list(range(len(split))))


def rows(split: Any) -> set[tuple[int, ...]]:
    return {tuple(r) for r in whole(split)["x"].tolist()}


@pytest.fixture(scope="module")
def copy_splits() -> tuple[Any, Any]:
    task = make("selective-copy", **COPY)
    return task, task.setup()


@pytest.fixture(scope="module")
def recall_splits() -> tuple[Any, Any]:
    task = make("assoc-recall", **RECALL)
    return task, task.setup()


# --- both --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), [("selective-copy", COPY), ("assoc-recall", RECALL)])
def test_same_seed_same_data_and_the_run_seed_draws_training_only(name: str, params: dict[str, Any]) -> None:
    a, again, b = (make(name, seed, **params).setup() for seed in (0, 0, 1))
    for s in SPLITS:
        for key in ("x", "y", "mask"):
            assert torch.equal(whole(getattr(a, s))[key], whole(getattr(again, s))[key]), (s, key)
    assert not torch.equal(whole(a.train)["x"], whole(b.train)["x"])
    for s in ("val", "test"):
        assert torch.equal(whole(getattr(a, s))["x"], whole(getattr(b, s))["x"])
        assert torch.equal(whole(getattr(a, s))["y"], whole(getattr(b, s))["y"])
    with pytest.raises(ValueError, match=str(VAL_SEED)):
        make(name, VAL_SEED, **params).setup()


@pytest.mark.parametrize(("name", "params"), [("selective-copy", COPY), ("assoc-recall", RECALL)])
def test_no_sequence_is_in_two_splits(name: str, params: dict[str, Any]) -> None:
    splits = make(name, **params).setup()
    seen = {s: rows(getattr(splits, s)) for s in SPLITS}
    assert len(seen["train"]) > 0.95 * params["n_train"]
    assert not seen["val"] & seen["test"]
    if name == "selective-copy":  # 3.3e8 possible sequences; assoc-recall's small setting repeats some
        assert not seen["train"] & seen["val"] and not seen["train"] & seen["test"]


@pytest.mark.parametrize(("name", "params", "T"), [("selective-copy", COPY, 24 + 5), ("assoc-recall", RECALL, 17)])
def test_every_sequence_has_the_declared_length(name: str, params: dict[str, Any], T: int) -> None:
    task = make(name, **params)
    splits = task.setup()
    shape = type(task).data_shape(task.params)
    assert shape.max_len == shape.seq_len == splits.seq_len == T
    assert shape.vocab_size == splits.vocab_size and shape.n_train == params["n_train"]
    for s in SPLITS:
        batch = whole(getattr(splits, s))
        assert batch["x"].shape == (params[f"n_{s}"], T) and batch["mask"].all()
        assert int(batch["x"].max()) < splits.vocab_size


@pytest.mark.parametrize(("name", "bad", "words"), [
    ("selective-copy", {"n_symbols": 11, "length": 10}, "n_symbols=11"),
    ("selective-copy", {"alphabet": 0}, "alphabet=0"),
    ("selective-copy", {"n_train": 0}, "n_train=0"),
    ("assoc-recall", {"length": 63}, "length=63"),
    ("assoc-recall", {"n_pairs": 8, "length": 14}, "length=14"),
    ("assoc-recall", {"n_pairs": 17, "vocab": 16, "length": 64}, "n_pairs=17"),
    ("assoc-recall", {"vocab": 0}, "vocab=0"),
])
def test_bad_params_are_refused_in_one_line(name: str, bad: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words) as err:
        get_task(name).make_params(**bad)
    assert "\n" not in str(err.value)


def test_variants_make_valid_params() -> None:
    for name in ("selective-copy", "assoc-recall"):
        cls = get_task(name)
        for overrides in cls.variants.values():
            cls.make_params(**overrides)
    mamba = get_task("selective-copy").make_params(**get_task("selective-copy").variants["mamba"])
    assert mamba.length + mamba.n_symbols == 4096 and mamba.n_symbols == 16 and mamba.alphabet + 2 == 16


# --- selective copying -------------------------------------------------------------------


def test_selective_copy_layout(copy_splits: tuple[Any, Any]) -> None:
    task, splits = copy_splits
    L, k, a = 24, 5, 6
    batch = whole(splits.train)
    x, y = batch["x"], batch["y"]
    region = x[:, :L]
    placed = region != 0
    assert (placed.sum(1) == k).all(), "exactly n_symbols symbols among the noise"
    assert ((region[placed] >= 1) & (region[placed] <= a)).all()
    assert (x[:, L:] == a + 1).all(), "the cue at every answer step"
    assert (y[:, :L] == 0).all()
    # the answers are the symbols in the order they appear
    assert torch.equal(y[:, L:], region[placed].view(-1, k))
    # positions vary: the symbols are not at fixed steps, so counting steps cannot find them
    positions = placed.nonzero()[:, 1].view(-1, k)
    assert len({tuple(p) for p in positions.tolist()}) > 0.9 * len(x)
    first = positions[:, 0].bincount(minlength=L)
    assert (first > 0).sum() > L // 2  # the first symbol starts at many different steps
    assert placed.float().mean(0).min() > 0  # every step of the region holds a symbol somewhere


def test_selective_copy_answers_are_balanced() -> None:
    task = make("selective-copy", **{**COPY, "n_train": 4000})
    y = whole(task.setup().train)["y"][:, -5:]
    freq = y.flatten().bincount(minlength=7)[1:].float() / y.numel()
    assert freq.min() > 0.8 / 6 and freq.max() < 1.2 / 6
    # every step of the region is about as likely to hold a symbol (5 of 24)
    x = whole(task.setup().train)["x"][:, :24]
    share = (x != 0).float().mean(0)
    assert share.min() > 0.8 * 5 / 24 and share.max() < 1.2 * 5 / 24


def test_selective_copy_references_are_a_uniform_guess(copy_splits: tuple[Any, Any]) -> None:
    task, splits = copy_splits
    batch = whole(splits.test)
    refs = task.references()
    assert refs == {"answer_ce": pytest.approx(math.log(6)), "symbol_accuracy": pytest.approx(1 / 6)}
    uniform = torch.zeros(*batch["y"].shape, task.output.n_classes)
    uniform[..., 0] = -math.inf  # uniform over the symbols: the answer is never noise
    assert task.finalize(task.batch_stats(uniform, batch))["answer_ce"] == pytest.approx(refs["answer_ce"])
    # guessing each symbol in turn, everywhere: their accuracies average exactly 1/alphabet
    accuracies = []
    for s in range(1, 7):
        always = 10.0 * F.one_hot(torch.full_like(batch["y"], s), task.output.n_classes).float()
        accuracies.append(task.finalize(task.batch_stats(always, batch))["symbol_accuracy"])
    assert sum(accuracies) / 6 == pytest.approx(refs["symbol_accuracy"])
    assert task.loss(uniform, batch).item() == pytest.approx(math.log(6))


def test_selective_copy_perfect_and_one_wrong(copy_splits: tuple[Any, Any]) -> None:
    task, splits = copy_splits
    batch = whole(splits.test)
    logits = 100.0 * F.one_hot(batch["y"], task.output.n_classes).float()
    logits[:, :24] = 0.0  # the noise steps are not scored: anything goes there
    m = task.finalize(task.batch_stats(logits, batch))
    assert m["symbol_accuracy"] == m["exact_copy_accuracy"] == 1.0
    assert m["answer_ce"] == pytest.approx(0.0, abs=1e-6)
    assert task.loss(logits, batch).item() == pytest.approx(0.0, abs=1e-6)
    wrong = logits.clone()
    wrong[0, -1] = wrong[0, -1].roll(1)
    m = task.finalize(task.batch_stats(wrong, batch))
    assert m["exact_copy_accuracy"] == pytest.approx(1 - 1 / 128)
    assert m["symbol_accuracy"] == pytest.approx(1 - 1 / (128 * 5))


# --- associative recall ------------------------------------------------------------------


def test_assoc_recall_layout(recall_splits: tuple[Any, Any]) -> None:
    task, splits = recall_splits
    P, V = 4, 8
    batch = whole(splits.train)
    x, y = batch["x"], batch["y"]
    keys, values, query = x[:, 0:-1:2], x[:, 1:-1:2], x[:, -1]
    assert ((keys >= 1) & (keys <= V)).all() and ((values > V) & (values <= 2 * V)).all()
    assert ((query >= 1) & (query <= V)).all()
    for i in range(len(x)):
        pairs = set(zip(keys[i].tolist(), values[i].tolist(), strict=True))
        mapping = dict(pairs)
        assert len(mapping) == len(pairs) == P, "each of the n_pairs keys appears, always with one value"
        assert len(set(mapping.values())) == P, "values are distinct across keys"
        assert mapping[int(query[i])] == int(y[i]) + V + 1, "the target is the query's value"
    # the mapping changes between sequences: the same key has many values across the split
    key_one = values[keys == keys[0, 0]]
    assert len(key_one.unique()) > V // 2


def test_assoc_recall_targets_and_queries_are_balanced() -> None:
    task = make("assoc-recall", **{**RECALL, "n_train": 4000})
    batch = whole(task.setup().train)
    freq = batch["y"].bincount(minlength=8).float() / 4000
    assert freq.min() > 0.8 / 8 and freq.max() < 1.2 / 8
    # the query's pair sits anywhere in the context: its first occurrence is spread over the slots
    keys = batch["x"][:, 0:-1:2]
    first = (keys == batch["x"][:, -1:]).float().argmax(1)
    assert len(first.unique()) == 8  # every one of the 8 slots


def test_assoc_recall_references(recall_splits: tuple[Any, Any]) -> None:
    task, splits = recall_splits
    batch = whole(splits.test)
    refs = task.references()
    assert refs == {"accuracy": pytest.approx(1 / 8), "ce": pytest.approx(math.log(8)),
                    "context_guess_accuracy": pytest.approx(1 / 4)}
    uniform = torch.zeros(len(batch["y"]), 8)
    assert task.finalize(task.batch_stats(uniform, batch))["ce"] == pytest.approx(refs["ce"])
    accuracies = [task.finalize(task.batch_stats(10.0 * F.one_hot(torch.full_like(batch["y"], v), 8).float(),
                                                 batch))["accuracy"] for v in range(8)]
    assert sum(accuracies) / 8 == pytest.approx(refs["accuracy"])
    # guessing each value of the context in turn averages exactly 1/n_pairs
    values = batch["x"][:, 1:-1:2] - 9  # value indices of the context
    context_values = [sorted(set(r)) for r in values.tolist()]
    hits = sum(int(y) in vs for y, vs in zip(batch["y"].tolist(), context_values, strict=True))
    assert all(len(vs) == 4 for vs in context_values) and hits == len(batch["y"])
    assert 1 / len(context_values[0]) == refs["context_guess_accuracy"]


def test_assoc_recall_perfect_prediction(recall_splits: tuple[Any, Any]) -> None:
    task, splits = recall_splits
    batch = whole(splits.test)
    perfect = 100.0 * F.one_hot(batch["y"], 8).float()
    m = task.finalize(task.batch_stats(perfect, batch))
    assert m["accuracy"] == 1.0 and m["ce"] == pytest.approx(0.0, abs=1e-6)
    wrong = perfect.clone()
    wrong[0] = wrong[0].roll(1)
    assert task.finalize(task.batch_stats(wrong, batch))["accuracy"] == pytest.approx(1 - 1 / 128)
