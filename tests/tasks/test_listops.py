"""ListOps: the expressions, their values, the splits and the parameters."""

from __future__ import annotations

import random
import statistics
from typing import Any

import pytest
import torch

from tasks import get_task
from tasks.listops import VOCAB, ListOps, ListOpsParams, longest_expression

SMALL = {"min_length": 10, "max_length": 60, "n_train": 300, "n_val": 50, "n_test": 50}


def make(seed: int = 0, **overrides: Any) -> Any:
    return ListOps(ListOps.make_params(**{**SMALL, **overrides}), seed=seed)


def strings(split: Any) -> list[list[str]]:
    return [[VOCAB[int(i)] for i in seq] for seq in split.sequences]


def value(tokens: list[str]) -> int:
    """An evaluator of its own: a recursive descent over the written expression."""

    def parse(at: int) -> tuple[int, int]:  # (value, index after the node)
        tok = tokens[at]
        if tok.isdigit():
            return int(tok), at + 1
        args, at = [], at + 1
        while tokens[at] != "]":
            v, at = parse(at)
            args.append(v)
        op = {"[MAX": max, "[MIN": min, "[MED": lambda a: int(statistics.median(a)),
              "[SM": lambda a: sum(a) % 10}[tok]
        return op(args), at + 1

    v, end = parse(0)
    assert end == len(tokens)
    return v


@pytest.fixture(scope="module")
def small() -> tuple[Any, Any]:
    task = make()
    return task, task.setup()


def _same(a: Any, b: Any) -> bool:
    return (len(a) == len(b) and torch.equal(a.y, b.y)
            and all(torch.equal(x, y) for x, y in zip(a.sequences, b.sequences, strict=True)))


def test_registered_with_its_published_figures() -> None:
    cls = get_task("listops")
    assert cls is ListOps and cls.primary_metric == "accuracy" and cls.higher_is_better
    assert not cls.causal and not cls.seeded_data and cls.input_kind == "tokens"
    assert {(p.model, p.value) for p in cls.published} == {("Transformer", 0.364), ("S4", 0.596)}


def test_same_params_give_identical_data_whatever_the_run_seed(small: tuple[Any, Any]) -> None:
    _, first = small
    for seed in (0, 7):
        again = make(seed=seed).setup()
        for name in ("train", "val", "test"):
            assert _same(getattr(first, name), getattr(again, name)), (seed, name)


def test_the_generator_seed_changes_the_data(small: tuple[Any, Any]) -> None:
    _, first = small
    other = ListOps(ListOps.make_params(**SMALL, seed=1)).setup()
    assert not _same(first.train, other.train) and not _same(first.test, other.test)


def test_no_expression_is_in_two_splits(small: tuple[Any, Any]) -> None:
    _, splits = small
    sets = {name: {bytes(s.tolist()) for s in getattr(splits, name).sequences} for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in sets.items()} == splits.sizes()  # distinct within a split too
    assert not sets["train"] & sets["val"] and not sets["train"] & sets["test"] and not sets["val"] & sets["test"]


def test_lengths_lie_strictly_inside_the_window_and_spread_over_it(small: tuple[Any, Any]) -> None:
    _, splits = small
    lengths = torch.cat([getattr(splits, n).lengths for n in ("train", "val", "test")])
    assert 10 < int(lengths.min()) and int(lengths.max()) < 60  # LRA keeps min < length < max
    assert int(lengths.min()) <= 15 and int(lengths.max()) >= 50
    assert len(set(lengths.tolist())) >= 30


def test_brackets_are_tokens_and_balanced(small: tuple[Any, Any]) -> None:
    _, splits = small
    for tokens in strings(splits.train):
        depth = 0
        for i, tok in enumerate(tokens):
            depth += tok.startswith("[") - (tok == "]")
            assert depth > 0 or i == len(tokens) - 1, tokens
        assert depth == 0 and "]" in tokens and tokens[0].startswith("[")


def test_labels_are_the_values_of_the_expressions(small: tuple[Any, Any]) -> None:
    _, splits = small
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        assert [value(t) for t in strings(split)] == split.y.tolist(), name


def test_the_median_rounds_down_between_the_middle_two() -> None:
    assert value("[MED 3 4 ]".split()) == 3 and value("[MED 9 1 8 0 ]".split()) == 4
    assert value("[SM 9 [MAX 2 7 ] 5 ]".split()) == 1


def _reference_tree(rng: random.Random, depth: int, max_depth: int, max_args: int) -> list[str]:
    """LRA's depth-first recursion, written from its rules: the distribution to match."""
    if depth < max_depth and rng.random() <= 0.25:
        args = [_reference_tree(rng, depth + 1, max_depth, max_args) for _ in range(rng.randint(2, max_args))]
        return [rng.choice(["[MAX", "[MIN", "[MED", "[SM"]), *(t for a in args for t in a), "]"]
    return [str(rng.randrange(10))]


def test_trees_follow_the_distribution_of_lras_recursion() -> None:
    n, depth = 2000, 5  # a shallow tree: quick to draw, and many digits forced at max_depth
    splits = make(n_train=n, n_val=1, n_test=1, max_depth=depth).setup()
    ours = strings(splits.train)
    rng, theirs = random.Random(1), []
    while len(theirs) < n:
        tree = _reference_tree(rng, 1, depth, 10)
        if 10 < len(tree) < 60:
            theirs.append(tree)

    def summary(trees: list[list[str]]) -> tuple[float, float]:
        return (statistics.mean(len(t) for t in trees),
                statistics.mean(t.count("]") for t in trees))

    (len_ours, ops_ours), (len_theirs, ops_theirs) = summary(ours), summary(theirs)
    # standard deviations ~13 tokens and ~2 operators: 2000 trees a side put these ~5 errors apart
    assert abs(len_ours - len_theirs) < 2.0 and abs(ops_ours - ops_theirs) < 0.35


def test_every_class_occurs_and_none_dominates() -> None:
    splits = make(n_train=3000).setup()
    share = torch.bincount(splits.train.y, minlength=10).double() / 3000
    assert (share > 0.03).all() and (share < 0.3).all(), share.tolist()


def test_metrics_and_majority_reference(small: tuple[Any, Any]) -> None:
    task, splits = small
    batch = splits.test.__getitems__(list(range(len(splits.test))))
    perfect = 10.0 * torch.nn.functional.one_hot(batch["y"], 10).float()
    assert task.finalize(task.batch_stats(perfect, batch)) == {"accuracy": 1.0, "macro_f1": pytest.approx(1.0)}
    majority = int(torch.bincount(splits.train.y, minlength=10).argmax())
    assert task.references()["accuracy"] == pytest.approx(float((splits.test.y == majority).double().mean()))


@pytest.mark.parametrize(("overrides", "message"), [
    ({"min_length": 0}, "min_length=0"),
    ({"n_val": 0}, "n_val=0"),
    ({"max_depth": 0}, "max_depth=0"),
    ({"max_args": 1}, "max_args=1"),
    ({"min_length": 100, "max_length": 101}, "max_length=101"),
    ({"max_depth": 2, "max_args": 3, "min_length": 5}, "min_length=5"),  # [OP d d d ] is the longest
])
def test_invalid_params_are_refused_in_one_line(overrides: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message) as err:
        ListOpsParams(**overrides)
    assert "\n" not in str(err.value)


def test_a_window_too_narrow_for_the_split_sizes_says_so() -> None:
    # depth 2, 2 arguments: only '[OP d d ]' (4 tokens) fits between 3 and 5: 400 expressions exist
    task = ListOps(ListOpsParams(min_length=3, max_length=5, max_depth=2, max_args=2, n_train=500, n_val=1, n_test=1))
    with pytest.raises(ValueError, match="only 400 of the 502"):
        task.setup()


def test_the_lra_variant() -> None:
    params = ListOps.make_params(**ListOps.variants["lra"])
    assert (params.min_length, params.max_length, params.max_depth, params.max_args) == (500, 2000, 10, 10)
    assert (params.n_train, params.n_val, params.n_test, params.seed) == (96_000, 2_000, 2_000, 0)
    shape = ListOps.data_shape(params)
    assert (shape.vocab_size, shape.max_len, shape.n_train) == (16, 2000, 96_000)
    assert ListOps.recipe(params, {}) == {"train.batch_size": 32}
    assert ListOps.recipe(ListOpsParams(), {}) == {}
    assert longest_expression(10, 10) > 2000
