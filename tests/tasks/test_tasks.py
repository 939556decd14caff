"""Every registered task: splits, batch shapes, determinism, loss and exact metrics; then
what each task promises in particular (references, scaling, splits, vocabulary), and the
errors for missing or corrupt dataset files."""

from __future__ import annotations

import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from tasks import TASKS, get_task
from tasks.data import ChecksumError, MissingDataError
from tasks.text import UNK, TextParams, Vocabulary, grouped_split, tokenize
from tests.conftest import DEFAULT_DATA_DIR, SMALL_TASK_PARAMS

TASK_NAMES = list(TASKS)
FILE_TASKS = [n for n in TASK_NAMES if get_task(n)(get_task(n).make_params()).files()]
SHARED_DATA = Path(os.environ.get("SEQBENCH_DATA_DIR") or DEFAULT_DATA_DIR).expanduser().resolve()


def _files_present(name: str) -> bool:
    return all((SHARED_DATA / f.path).is_file() for f in get_task(name)(get_task(name).make_params()).files())


# Tasks whose files are all in the shared data directory (AG News lacks its training file
# there); the others are checked for their missing-file message below.
PRESENT_TASKS = [n for n in TASK_NAMES if _files_present(n)]
ABSENT_TASKS = [n for n in TASK_NAMES if n not in PRESENT_TASKS]


def make_task(name: str, data_dir: Path, seed: int = 0, **overrides: Any) -> Any:
    cls = get_task(name)
    params = {**SMALL_TASK_PARAMS.get(name, {}), **overrides}
    return cls(cls.make_params(**params), data_dir, seed)


def whole(split: Any) -> dict[str, torch.Tensor]:
    """A split as one batch (padded to its longest sequence)."""
    return split.__getitems__(list(range(len(split))))


def random_prediction(task: Any, batch: dict[str, torch.Tensor], seed: int = 0) -> torch.Tensor:
    out = task.output
    B, T = batch["mask"].shape
    shape = {"class_per_step": (B, T, out.n_classes), "class_per_sequence": (B, out.n_classes),
             "values": (B, *out.shape), "forecast": (B, *out.shape)}[out.kind]
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def setups(data_dir: Path) -> dict[str, tuple[Any, Any]]:
    """Each task set up once (seed 0) for the read-only checks."""
    out = {}
    for name in PRESENT_TASKS:
        task = make_task(name, data_dir)
        out[name] = (task, task.setup())
    return out


def test_every_expected_task_is_registered() -> None:
    assert {"copy", "adding", "airline", "tweets"} <= set(TASK_NAMES)
    for name in TASK_NAMES:
        cls = get_task(name)
        assert cls.name == name
        assert isinstance(cls.primary_metric, str) and cls.primary_metric
        assert isinstance(cls.higher_is_better, bool)


@pytest.mark.parametrize("name", PRESENT_TASKS, ids=PRESENT_TASKS)
def test_splits_and_batch_shapes(name: str, setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups[name]
    sizes = splits.sizes()
    assert all(n > 0 for n in sizes.values()), sizes
    assert (splits.vocab_size is None) != (splits.n_features is None)
    out = task.output
    for split_name in ("train", "val", "test"):
        split = getattr(splits, split_name)
        k = min(5, len(split))
        batch = split.__getitems__(list(range(k)))
        assert {"x", "mask", "y"} <= set(batch)
        x, mask, y = batch["x"], batch["mask"], batch["y"]
        B, T = mask.shape
        assert B == k and T >= 1 and mask.dtype == torch.bool
        assert mask[:, 0].all(), "every sequence has at least one real step"
        # padding only at the end: once False, the mask stays False
        assert (mask.int().diff(dim=1) <= 0).all()
        if splits.vocab_size is not None:
            assert x.shape == (B, T) and x.dtype == torch.long
            assert int(x.min()) >= 0 and int(x.max()) < splits.vocab_size
            assert (x[~mask] == 0).all() and (x[mask] != 0).any()
        else:
            assert x.shape == (B, T, splits.n_features) and x.is_floating_point()
        if out.kind == "class_per_step":
            assert y.shape == (B, T) and y.dtype == torch.long
            assert int(y.min()) >= 0 and int(y.max()) < out.n_classes
        elif out.kind == "class_per_sequence":
            assert y.shape == (B,) and y.dtype == torch.long
            assert int(y.min()) >= 0 and int(y.max()) < out.n_classes
        else:
            assert y.shape == (B, *out.shape) and y.is_floating_point()
        assert len(split.collate(batch)["y"]) == B


def _assert_same_split(a: Any, b: Any) -> None:
    ta, tb = whole(a), whole(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        assert torch.equal(ta[key], tb[key]), f"'{key}' differs"


@pytest.mark.parametrize("name", PRESENT_TASKS, ids=PRESENT_TASKS)
def test_same_params_and_seed_give_identical_data(name: str, data_dir: Path,
                                                  setups: dict[str, tuple[Any, Any]]) -> None:
    _, first = setups[name]
    again = make_task(name, data_dir, seed=0).setup()
    assert again.vocab_size == first.vocab_size and again.n_features == first.n_features
    for split_name in ("train", "val", "test"):
        _assert_same_split(getattr(first, split_name), getattr(again, split_name))


@pytest.mark.parametrize("name", ["copy", "adding"])
def test_seed_changes_training_data_only(name: str, data_dir: Path) -> None:
    a = make_task(name, data_dir, seed=0).setup()
    b = make_task(name, data_dir, seed=1).setup()
    assert not torch.equal(whole(a.train)["x"], whole(b.train)["x"])
    _assert_same_split(a.val, b.val)
    _assert_same_split(a.test, b.test)
    # validation and test are different sets
    assert not torch.equal(whole(a.val)["x"], whole(a.test)["x"])


@pytest.mark.parametrize("name", PRESENT_TASKS, ids=PRESENT_TASKS)
def test_loss_is_a_finite_scalar_with_gradient(name: str, setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups[name]
    batch = splits.train.__getitems__(list(range(min(8, len(splits.train)))))
    pred = random_prediction(task, batch).requires_grad_()
    loss = task.loss(pred, batch)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert pred.grad is not None and torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0


@pytest.mark.parametrize("name", PRESENT_TASKS, ids=PRESENT_TASKS)
def test_metrics_are_exact_whatever_the_batching(name: str, setups: dict[str, tuple[Any, Any]]) -> None:
    """Statistics summed over two uneven parts of a split give the metrics of the whole."""
    task, splits = setups[name]
    batch = whole(splits.test) if len(splits.test) > 1 else whole(splits.train)
    n = len(batch["y"])
    assert n > 1
    pred = random_prediction(task, batch, seed=7)
    metrics = task.finalize(task.batch_stats(pred, batch))
    cut = max(1, n // 3)
    parts = [task.batch_stats(pred[s], {k: v[s] for k, v in batch.items()}) for s in (slice(0, cut), slice(cut, n))]
    summed = {k: parts[0][k] + parts[1][k] for k in parts[0]}
    assert summed.keys() == parts[1].keys()
    combined = task.finalize(summed)
    assert task.primary_metric in metrics
    assert combined.keys() == metrics.keys()
    for key, value in metrics.items():
        assert math.isfinite(value), key
        assert combined[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key  # float32 sums


# --- copy ------------------------------------------------------------------------------


@pytest.mark.parametrize("delay", [5, 100])
def test_copy_reference_is_the_memoryless_cross_entropy(delay: int, data_dir: Path) -> None:
    task = make_task("copy", data_dir, delay=delay)
    refs = task.references()
    assert refs["ce"] == pytest.approx(10 * math.log(8) / (delay + 20))
    assert refs["answer_ce"] == pytest.approx(math.log(8))
    assert refs["symbol_accuracy"] == pytest.approx(1 / 8)


def test_copy_layout(data_dir: Path) -> None:
    task = make_task("copy", data_dir, delay=5)
    batch = whole(task.setup().test)
    x, y = batch["x"], batch["y"]
    assert x.shape == (32, 5 + 20)
    assert ((x[:, :10] >= 1) & (x[:, :10] <= 8)).all()
    assert (x[:, 10 + 5 - 1] == 9).all()  # the cue
    assert torch.equal(y[:, -10:], x[:, :10])
    assert (y[:, :-10] == 0).all()


def test_copy_perfect_prediction(data_dir: Path) -> None:
    task = make_task("copy", data_dir)
    batch = whole(task.setup().test)
    logits = 100.0 * F.one_hot(batch["y"], task.output.n_classes).float()
    metrics = task.finalize(task.batch_stats(logits, batch))
    assert metrics["exact_copy_accuracy"] == 1.0
    assert metrics["symbol_accuracy"] == 1.0
    assert metrics["ce"] == pytest.approx(0.0, abs=1e-6)
    assert metrics["answer_ce"] == pytest.approx(0.0, abs=1e-6)
    # one wrong symbol in one sequence
    wrong = logits.clone()
    wrong[0, -1] = wrong[0, -1].roll(1)
    metrics = task.finalize(task.batch_stats(wrong, batch))
    assert metrics["exact_copy_accuracy"] == pytest.approx(1 - 1 / 32)
    assert metrics["symbol_accuracy"] == pytest.approx(1 - 1 / (32 * 10))


# --- adding ----------------------------------------------------------------------------


def test_adding_always_one_scores_about_one_sixth(data_dir: Path) -> None:
    task = make_task("adding", data_dir, length=50, n_train=8, n_val=8, n_test=1000)
    batch = whole(task.setup().test)
    metrics = task.finalize(task.batch_stats(torch.ones_like(batch["y"]), batch))
    assert metrics["mse"] == pytest.approx(1 / 6, abs=0.02)
    assert task.references()["mse"] == pytest.approx(1 / 6)


def test_adding_target_is_the_sum_of_the_marked_values(data_dir: Path) -> None:
    task = make_task("adding", data_dir)
    batch = whole(task.setup().train)
    values, markers = batch["x"][..., 0], batch["x"][..., 1]
    assert (markers.sum(1) == 2).all()
    half = task.params.length // 2
    assert (markers[:, :half].sum(1) == 1).all()
    torch.testing.assert_close(batch["y"][:, 0], (values * markers).sum(1))


# --- tweets ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tweets_csv(data_dir: Path) -> pd.DataFrame:
    return pd.read_csv(data_dir / "disaster_tweets" / "train.csv")


def test_tweets_split_indices_are_disjoint_complete_stratified_and_by_distinct_text(
    tweets_csv: pd.DataFrame,
) -> None:
    task = get_task("tweets")(get_task("tweets").make_params())
    p = task.params
    labels = tweets_csv["target"].to_numpy()
    texts = tweets_csv["text"].astype(str).tolist()
    # a tweet is the tokens the model reads: copies that differ only in their link are one
    keys = [" ".join(tokenize(t)) for t in texts]
    assert [task.text_key(t) for t in texts] == keys
    assert task.text_key("Fire near me http://t.co/abc") == task.text_key("fire near me  https://t.co/XYZ")
    distinct = len(set(keys))
    assert len(labels) == 7613 and distinct < len(set(texts)) < 7613  # the file repeats some tweets
    idx = grouped_split(keys, labels, (p.val_fraction, p.test_fraction), p.split_seed)
    everything = np.concatenate(list(idx.values()))
    assert len(everything) == len(set(everything.tolist())) == 7613
    assert set(everything.tolist()) == set(range(7613))
    overall = labels.mean()
    split_keys = {}
    for name, rows in idx.items():
        assert (np.diff(rows) > 0).all(), f"{name} rows are not in file order"
        assert abs(labels[rows].mean() - overall) < 0.02, name
        split_keys[name] = {keys[i] for i in rows}
    # every copy of a tweet lands in one split
    assert not split_keys["train"] & split_keys["val"] and not split_keys["train"] & split_keys["test"]
    assert not split_keys["val"] & split_keys["test"]
    # validation and test each hold ~10% of the distinct tweets (stratified per class, so within two)
    assert len(split_keys["val"]) == pytest.approx(0.1 * distinct, abs=2)
    assert len(split_keys["test"]) == pytest.approx(0.1 * distinct, abs=2)


def test_tweets_task_uses_every_row_once(data_dir: Path, tweets_csv: pd.DataFrame,
                                         setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups["tweets"]
    raw = task.load()
    assert sum(splits.sizes().values()) == 7613
    rows = Counter(zip(tweets_csv["text"].astype(str), tweets_csv["target"], strict=True))
    got = Counter((t, int(y)) for texts, labels in raw.values() for t, y in zip(texts, labels, strict=True))
    assert got == rows
    overall = tweets_csv["target"].mean()
    for name, (_, labels) in raw.items():
        assert abs(labels.mean() - overall) < 0.02, name
        assert len(getattr(splits, name)) == len(labels)


def test_tweets_vocabulary_comes_from_training_texts_only(setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups["tweets"]
    raw = task.load()
    train_words = Counter(tok for text in raw["train"][0] for tok in tokenize(text))
    test_tokens = [tokenize(text) for text in raw["test"][0]]
    test_only = {tok for toks in test_tokens for tok in toks} - set(train_words)
    assert test_only, "expected some words that only test tweets use"
    assert not test_only & set(task.vocab.ids)
    # frequent training words are in the vocabulary (so the check above can fail)
    frequent = [w for w, c in train_words.most_common(50)]
    assert all(w in task.vocab.ids for w in frequent)
    assert len(task.vocab) == splits.vocab_size <= task.params.vocab_size
    # in the encoded test split, each test-only word is UNK
    checked = 0
    for i, toks in enumerate(test_tokens):
        seq = splits.test.sequences[i]
        for pos, tok in enumerate(toks[: task.params.max_len]):
            if tok in test_only:
                assert int(seq[pos]) == UNK, (tok, i, pos)
                checked += 1
    assert checked > 0


def test_tweets_sequences_are_truncated_to_max_len(data_dir: Path) -> None:
    task = make_task("tweets", data_dir, max_len=5)
    splits = task.setup()
    lengths = [len(s) for s in splits.train.sequences]
    assert max(lengths) == 5 and min(lengths) >= 1


# --- airline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def passengers(data_dir: Path) -> np.ndarray:
    return pd.read_csv(data_dir / "airline" / "airline-passengers.csv")["Passengers"].to_numpy(dtype=np.float64)


def test_airline_scaler_is_fitted_on_the_training_rows_only(passengers: np.ndarray,
                                                            setups: dict[str, tuple[Any, Any]]) -> None:
    task, _ = setups["airline"]
    assert len(passengers) == 144
    assert task.mean == pytest.approx(np.mean(passengers[:120]), rel=1e-12)
    assert task.std == pytest.approx(np.std(passengers[:120]), rel=1e-12)
    assert task.mean != pytest.approx(np.mean(passengers), rel=1e-3)


def test_airline_targets_are_the_last_months(passengers: np.ndarray, setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups["airline"]
    assert splits.sizes() == {"train": 85, "val": 1, "test": 1}

    def original(split: Any) -> np.ndarray:
        return (whole(split)["y"].double() * task.std + task.mean).numpy()

    np.testing.assert_allclose(original(splits.test)[0, :, 0], passengers[-12:], rtol=0, atol=1e-4)
    np.testing.assert_allclose(original(splits.val)[0, :, 0], passengers[120:132], rtol=0, atol=1e-4)
    x_test = (whole(splits.test)["x"].double() * task.std + task.mean).numpy()
    np.testing.assert_allclose(x_test[0, :, 0], passengers[108:132], rtol=0, atol=1e-4)
    # no training target reaches into the validation months
    last_train_target = original(splits.train)[-1, -1, 0]
    assert last_train_target == pytest.approx(passengers[119], abs=1e-4)


def test_airline_metrics_are_in_passengers(setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups["airline"]
    batch = whole(splits.test)
    perfect = task.finalize(task.batch_stats(batch["y"].clone(), batch))
    assert perfect["mae"] == pytest.approx(0.0, abs=1e-9)
    assert perfect["mase"] == pytest.approx(0.0, abs=1e-9)
    off = task.finalize(task.batch_stats(batch["y"] + 10.0 / task.std, batch))  # 10 passengers too many
    assert off["mae"] == pytest.approx(10.0, rel=1e-5)
    assert off["rmse"] == pytest.approx(10.0, rel=1e-5)
    assert off["mase"] == pytest.approx(10.0 / task.mase_scale, rel=1e-5)
    refs = task.references()
    assert refs["mase"] > 0 and refs["mae"] > 0


# --- missing and corrupt data ----------------------------------------------------------


def test_shared_data_lacks_only_agnews_train() -> None:
    assert "agnews" in ABSENT_TASKS and {"tweets", "airline", "sst2", "imdb"} <= set(PRESENT_TASKS)


@pytest.mark.parametrize("name", ABSENT_TASKS, ids=ABSENT_TASKS)
def test_task_missing_from_shared_data_says_which_file(name: str, data_dir: Path) -> None:
    task = make_task(name, data_dir)
    missing = [f for f in task.files() if not (data_dir / f.path).is_file()]
    with pytest.raises(MissingDataError) as err:
        task.setup()
    assert missing[0].path in str(err.value) and missing[0].url in str(err.value)


@pytest.mark.parametrize("name", FILE_TASKS, ids=FILE_TASKS)
def test_missing_file_names_the_path_and_the_source(name: str, empty_data_dir: Path) -> None:
    task = make_task(name, empty_data_dir)
    file = task.files()[0]
    with pytest.raises(MissingDataError) as err:
        task.setup()
    message = str(err.value)
    assert file.path in message
    assert file.url in message
    assert str(empty_data_dir) in message
    assert list(empty_data_dir.iterdir()) == [], "nothing is written when downloads are off"


def test_missing_tweets_file_message(empty_data_dir: Path) -> None:
    task = make_task("tweets", empty_data_dir)
    with pytest.raises(MissingDataError, match="disaster_tweets/train.csv") as err:
        task.setup()
    assert "https://" in str(err.value)


@pytest.mark.parametrize("name", FILE_TASKS, ids=FILE_TASKS)
def test_corrupt_file_is_refused(name: str, empty_data_dir: Path) -> None:
    task = make_task(name, empty_data_dir)
    for file in task.files():
        path = empty_data_dir / file.path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("id,text,target\n1,not the real file,0\n")
    with pytest.raises(ChecksumError) as err:
        task.setup()
    assert any(file.path in str(err.value) for file in task.files())


# --- character language modelling -------------------------------------------------------


def test_timemachine_targets_are_the_next_characters(setups: dict[str, tuple[Any, Any]]) -> None:
    task, splits = setups["timemachine"]
    assert task.causal
    for split in (splits.train, splits.val, splits.test):
        batch = whole(split)
        assert torch.equal(batch["x"][:, 1:], batch["y"][:, :-1])  # y is x shifted by one step
        assert torch.equal(batch["x"][1:, 0], batch["y"][:-1, -1])  # subsequences follow each other


def test_timemachine_split_is_chronological_with_vocabulary_from_training_text(data_dir: Path) -> None:
    task = make_task("timemachine", data_dir)
    splits = task.setup()
    text = task.preprocess((data_dir / task.files()[0].path).read_text())
    n_train_chars = round(len(text) * 0.8)
    assert task.itos[2:] == sorted(set(text[:n_train_chars]))
    decoded = "".join(task.itos[i] for i in whole(splits.train)["x"][:3].flatten().tolist())
    assert text.startswith(decoded)  # training starts at the beginning of the book
    sizes = splits.sizes()
    assert sizes["train"] > 7 * sizes["val"] and sizes["val"] == pytest.approx(sizes["test"], abs=1)
    assert task.references()["perplexity"] == len(task.itos) - 2


def test_causal_task_refuses_bidirectional_models(capsys: pytest.CaptureFixture[str], data_dir: Path,
                                                  tmp_path: Path) -> None:
    from bench.cli import main

    code = main(["run", "--no-baselines",
                 "--models", "bilstm,bigru", "--tasks", "timemachine", "--data-dir", str(data_dir),
                 "--results", str(tmp_path / "results")])
    err = capsys.readouterr().err
    assert code == 2
    assert "bilstm is bidirectional" in err and "causal tasks refuse it" in err and "timemachine" in err
    assert not (tmp_path / "results").exists()


# --- ETT (long-horizon protocol) --------------------------------------------------------


@pytest.mark.parametrize(("name", "horizon", "sizes"), [
    ("etth1", 96, (8449, 2785, 2785)),
    ("etth2", 720, (7825, 2161, 2161)),
    ("ettm1", 96, (34369, 11425, 11425)),
])
def test_ett_window_counts_follow_the_standard_protocol(name: str, horizon: int, sizes: tuple[int, int, int],
                                                       data_dir: Path) -> None:
    splits = make_task(name, data_dir, horizon=horizon).setup()
    assert (len(splits.train), len(splits.val), len(splits.test)) == sizes


def test_ett_scaling_uses_training_rows_and_test_targets_cover_the_last_four_months(data_dir: Path) -> None:
    task = make_task("etth1", data_dir)
    splits = task.setup()
    frame = pd.read_csv(data_dir / "ett" / "ETTh1.csv")
    values = frame.drop(columns="date").to_numpy(dtype=np.float64)
    np.testing.assert_allclose(task.mean, values[:8640].mean(0), rtol=1e-12)
    np.testing.assert_allclose(task.std, values[:8640].std(0), rtol=1e-12)
    first, last = splits.test.__getitems__([0]), splits.test.__getitems__([len(splits.test) - 1])
    scaled = (values - task.mean) / task.std
    np.testing.assert_allclose(first["x"][0].numpy(), scaled[11520 - 96:11520], atol=1e-5)  # inputs reach back L rows
    np.testing.assert_allclose(first["y"][0].numpy(), scaled[11520:11520 + 96], atol=1e-5)
    np.testing.assert_allclose(last["y"][0].numpy(), scaled[14400 - 96:14400], atol=1e-5)


def test_ett_univariate_variant_reads_and_predicts_ot_only(data_dir: Path) -> None:
    task = make_task("etth1", data_dir, features="S", horizon=192)
    splits = task.setup()
    batch = splits.test.__getitems__([0, 1])
    assert batch["x"].shape == (2, 96, 1) and batch["y"].shape == (2, 192, 1)
    assert task.output.shape == (192, 1) and splits.n_features == 1


# --- SST-2, IMDB, AG News ---------------------------------------------------------------


def _word_runs(text: str, proper: bool = False) -> set[str]:
    """Every contiguous run of space-separated words of ``text`` (without ``text`` itself if proper)."""
    w = text.split()
    n = len(w)
    return {" ".join(w[i:j]) for i in range(n) for j in range(i + 1, n + 1) if not (proper and i == 0 and j == n)}


@pytest.mark.parametrize(("name", "train_rows", "test_rows"), [("sst2", 67349, 872), ("imdb", 25000, 25000)])
def test_validation_is_carved_from_train_and_test_is_the_official_test_set(
    name: str, train_rows: int, test_rows: int, setups: dict[str, tuple[Any, Any]]
) -> None:
    """Validation is ~10% of what the training file holds once (SST-2: its whole sentences;
    IMDB: its distinct reviews, as the tokens the model reads); every training row is in
    train or validation or counted as dropped; the official test set is kept whole."""
    task, splits = setups[name]
    texts, labels = task.read(task.train_file)
    assert len(texts) == train_rows
    keys = [" ".join(tokenize(task.clean(t))) for t in texts]  # what the model reads of each row
    key = dict(zip(texts, keys, strict=True))
    carved = task.carve_validation(texts, labels, test=task.read(task.test_file))
    raw = task.load()  # resets task.dropped, which the carve above added to
    test_keys = {" ".join(tokenize(task.clean(t))) for t in raw["test"][0]}
    val_keys = {key[t] for t in carved["val"][0]}
    if name == "sst2":
        # whole sentences: the phrases that are no proper word run of another phrase
        inner = set().union(*(_word_runs(p, proper=True) for p in set(texts)))
        units = len(set(texts) - inner)
        assert len(task.sentences(texts)) == units
        assert len(set(carved["val"][0])) == len(carved["val"][0]), "whole sentences, each once"
        assert not set(carved["val"][0]) & inner
        # the rows inside a validation sentence, as tokens, are left out of training (the
        # sentences themselves included): "free-fall" holds the phrase "free"
        inside = set().union(*(_word_runs(k) for k in val_keys))
        rows_inside = sum(k in inside for k in keys)
        assert rows_inside > len(val_keys)
        assert len(carved["train"][0]) + rows_inside == train_rows
        assert not {key[t] for t in carved["train"][0]} & inside
        # then dropped: every row inside a validation sentence or a test sentence, but the
        # validation sentences themselves
        n_dropped = sum(k in inside or k in test_keys for k in keys) - len(carved["val"][0])
    else:
        units = len(set(keys))
        assert units < train_rows  # the file repeats some reviews
        assert len(carved["train"][0]) + len(carved["val"][0]) == train_rows
        assert not {key[t] for t in carved["train"][0]} & val_keys, "copies of a review straddle train and val"
        n_dropped = sum(k in test_keys for k in keys)  # every training-file copy of a test review
    assert len(val_keys) == pytest.approx(0.1 * units, abs=2)
    # then the training and validation documents whose text is in a later split are dropped
    later = {"train": test_keys | val_keys, "val": test_keys}
    for s in ("train", "val"):
        assert raw[s][0] == [t for t in carved[s][0] if key[t] not in later[s]], s
    assert task.dropped["val"] == len(carved["val"][0]) - len(raw["val"][0])
    assert task.dropped["train"] + task.dropped["val"] == n_dropped > 0
    assert len(raw["train"][0]) + len(raw["val"][0]) + n_dropped == train_rows
    assert len(splits.train) == len(raw["train"][0]) and len(splits.val) == len(raw["val"][0])
    assert len(splits.test) == len(raw["test"][0]) == test_rows
    # every test sample is kept, in file order, with its label
    assert raw["test"][0] == task.read(task.test_file)[0]
    assert torch.equal(whole(splits.test)["y"], torch.tensor(raw["test"][1]))


def test_carved_validation_is_disjoint_from_train_and_vocabulary_ignores_it(
    setups: dict[str, tuple[Any, Any]]
) -> None:
    task, _ = setups["sst2"]
    raw = task.load()
    train, val = raw["train"][0], raw["val"][0]
    assert val and not {task.text_key(t) for t in train} & {task.text_key(t) for t in val}
    train_words = {w for t in train for w in tokenize(task.clean(t))}
    only_elsewhere = {w for t in val + raw["test"][0] for w in tokenize(task.clean(t))} - train_words
    assert only_elsewhere, "validation or test has words the training split lacks"
    assert not only_elsewhere & set(task.vocab.ids)  # those words are UNK, never in the vocabulary


def test_imdb_line_breaks_and_agnews_escapes_are_cleaned() -> None:
    imdb = get_task("imdb")(get_task("imdb").make_params())
    agnews = get_task("agnews")(get_task("agnews").make_params())
    assert "<br" not in imdb.clean("Great film.<br /><br />Loved it<br/>")
    raw = "Reuters - Short-sellers\\team, it#39;s quot;badquot; #36;5"
    assert agnews.clean(raw) == "Reuters - Short-sellers team, it's \"bad\" $5"


def test_a_long_document_keeps_its_head_or_its_tail() -> None:
    vocab = Vocabulary([["a", "b", "c", "d"]], max_size=10, min_freq=1)
    ids = {w: int(vocab.encode([w], 1)[0]) for w in "abcd"}
    doc = ["a", "b", "c", "d"]
    assert vocab.encode(doc, 2, "head").tolist() == [ids["a"], ids["b"]]
    assert vocab.encode(doc, 2, "tail").tolist() == [ids["c"], ids["d"]]
    assert vocab.encode(doc, 9, "tail").tolist() == [ids[w] for w in doc]  # short: kept whole
    assert get_task("imdb").Params().keep == "tail"
    with pytest.raises(ValueError, match="keep='middle'"):
        TextParams(keep="middle")


@pytest.mark.parametrize("name", PRESENT_TASKS, ids=PRESENT_TASKS)
def test_every_split_has_a_dataset_record(name: str, setups: dict[str, tuple[Any, Any]]) -> None:
    """What a run logs as its dataset inputs: one record per split, named after the task, with
    the split's digest and where it came from (the split's own file, or the generator)."""
    from tasks.registry import content_digest

    task, splits = setups[name]
    records = task.data_records(name, splits)
    assert [r.context for r in records] == ["train", "validation", "test"]
    assert {r.name for r in records} == {name}
    for record, split in zip(records, (splits.train, splits.val, splits.test), strict=True):
        assert record.digest == content_digest(split) and len(record.digest) == 16
        assert record.profile["num_rows"] == len(split)
        files = task.split_files({"validation": "val"}.get(record.context, record.context))
        if files:
            assert record.source_type == "http" and files[0].url in str(record.source)
            assert set(record.profile["files"]) == {f.path for f in files}
        else:
            assert record.source_type == "code" and record.source["generator"].endswith(type(task).__qualname__)
    assert len({r.digest for r in records}) == 3, "two splits with the same content"
