"""No task leaks evaluation data into training: each check below fails on a leak.

Text: leaks are judged on the tokens the model reads (``tokenize(task.clean(text))``, found
here, not taken from ``task.text_key``): no document's tokens are in two splits; SST-2
validation is whole sentences, none inside a training phrase and none of whose token runs
is a training phrase; official test sets stay whole; what was dropped is what
``task.dropped`` says. Forecasting: the targets of
train, validation and test lie in disjoint, ordered row ranges, and the scaler sees the
training rows only. Character LM: the three character ranges are disjoint and in order.
Synthetic: no held-out sequence is a training sequence.

Every real task is loaded once per module (lazily, so ``-k`` pays only for what it runs).
The checks read the files themselves and find windows and ranges in the data, rather than
trusting the task's own bookkeeping.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
from numpy.lib.stride_tricks import sliding_window_view

from tasks import get_task
from tasks.ett import COLUMNS
from tasks.language import UNK as CHAR_UNK
from tasks.synthetic import TEST_SEED, VAL_SEED
from tasks.text import tokenize

SPLITS = ("train", "val", "test")


def make(name: str, data_dir: Path, seed: int = 0, **params: Any) -> Any:
    cls = get_task(name)
    return cls(cls.make_params(**params), data_dir, seed)


def whole(split: Any) -> dict[str, torch.Tensor]:
    return split.__getitems__(list(range(len(split))))


def skip_unless_files(task: Any, data_dir: Path) -> None:
    missing = [f.path for f in task.files() if not (data_dir / f.path).is_file()]
    if missing:
        pytest.skip(f"{', '.join(missing)} absent from {data_dir}")


def word_runs(text: str, proper: bool = False) -> set[str]:
    """Every contiguous run of space-separated words of ``text`` (without ``text`` itself if proper)."""
    w = text.split()
    n = len(w)
    return {" ".join(w[i:j]) for i in range(n) for j in range(i + 1, n + 1) if not (proper and i == 0 and j == n)}


_SEEN: dict[tuple[str, str], str] = {}


def seen(task: Any, text: str) -> str:
    """The tokens the model reads of ``text``, space-joined: what a leak is judged on (two
    tweets that differ only in their link are one text to the model)."""
    key = _SEEN.get((task.name, text))
    if key is None:
        key = _SEEN[(task.name, text)] = " ".join(tokenize(task.clean(text)))
    return key


def cached(build: Callable[[str], Any]) -> Callable[[str], Any]:
    memo: dict[str, Any] = {}

    def get(name: str) -> Any:
        if name not in memo:
            memo[name] = build(name)
        return memo[name]

    return get


# --- text: IMDB, tweets, AG News ---------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(data_dir: Path) -> Callable[[str], tuple[Any, dict[str, tuple[list[str], np.ndarray]]]]:
    """name -> (task, task.load()), each real text task loaded once; skips a task whose files are absent."""

    def build(name: str) -> tuple[Any, dict[str, tuple[list[str], np.ndarray]]]:
        task = make(name, data_dir)
        skip_unless_files(task, data_dir)  # raises, so a skipped task is not cached
        return task, task.load()

    return cached(build)


def source_rows(task: Any, data_dir: Path) -> tuple[list[str], np.ndarray]:
    """Every labelled row the carved splits come from, read straight from the file: the
    training file (tweets: its one file, from which test is carved too)."""
    if task.name == "tweets":
        df = pd.read_csv(data_dir / task.file.path)
        return df["text"].astype(str).tolist(), df["target"].to_numpy(dtype=np.int64)
    return task.read(task.train_file)


def carved_splits(task: Any) -> tuple[str, ...]:
    return SPLITS if task.name == "tweets" else ("train", "val")


TEXT_TASKS = [pytest.param("imdb", marks=pytest.mark.slow), pytest.param("lra-text", marks=pytest.mark.slow),
              "tweets", "agnews"]


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_no_text_is_in_two_splits(name: str, loaded: Any) -> None:
    task, raw = loaded(name)
    keys = {s: {seen(task, t) for t in raw[s][0]} for s in SPLITS}
    assert all(keys.values()), {s: len(k) for s, k in keys.items()}
    # the task's notion of "the same text" is the model's tokens (what the splitting relies on)
    assert all(task.text_key(t) == seen(task, t) for s in SPLITS for t in raw[s][0][:500])
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = sorted(keys[a] & keys[b])
        assert len(shared) == 0, f"{len(shared)} texts in both {a} and {b}, e.g. {[t[:80] for t in shared[:2]]}"


@pytest.mark.parametrize("name", TEXT_TASKS)
def test_dropped_documents_are_counted_and_each_had_its_text_in_a_later_split(
    name: str, loaded: Any, data_dir: Path
) -> None:
    task, raw = loaded(name)
    texts, labels = source_rows(task, data_dir)
    carved = carved_splits(task)
    kept = Counter((t, int(y)) for s in carved for t, y in zip(*raw[s], strict=True))
    rows = Counter(zip(texts, labels.tolist(), strict=True))
    assert sum((kept - rows).values()) == 0, "a split holds a document that is no row of the file"
    gone = rows - kept
    assert set(task.dropped) == {"train", "val"}
    assert sum(len(raw[s][0]) for s in carved) + task.dropped["train"] + task.dropped["val"] == len(texts)
    assert sum(gone.values()) == task.dropped["train"] + task.dropped["val"]
    # a document is dropped only because its tokens are those of a validation or test document
    elsewhere = {seen(task, t) for s in ("val", "test") for t in raw[s][0]}
    assert all(seen(task, t) in elsewhere for t, _ in gone)


@pytest.mark.slow
def test_imdb_drops_exactly_the_training_reviews_whose_text_is_in_test(loaded: Any) -> None:
    task, raw = loaded("imdb")
    test_keys = {seen(task, t) for t in raw["test"][0]}
    in_test = sum(seen(task, t) in test_keys for t in task.read(task.train_file)[0])
    assert in_test > 0  # the files do share reviews, so this check can fail
    assert task.dropped["train"] + task.dropped["val"] == in_test


def test_tweets_split_by_distinct_text_needs_no_drops(loaded: Any, data_dir: Path) -> None:
    """Grouping by the model's tokens puts every copy of a tweet in one split, copies that
    differ only in their link or case included: nothing is left to drop."""
    task, raw = loaded("tweets")
    assert task.dropped == {"train": 0, "val": 0}
    texts, _ = source_rows(task, data_dir)
    assert sum(len(raw[s][0]) for s in SPLITS) == len(texts) == 7613
    # the file's copies are mostly the same tweet with another link: distinct to the eye, one
    # text to the model, so a check on the raw strings would miss them straddling two splits
    link = re.compile(r"https?://\S+")
    by_unlinked: dict[str, set[str]] = {}
    for t in texts:
        by_unlinked.setdefault(link.sub("<link>", t), set()).add(t)
    copies = [group for group in by_unlinked.values() if len(group) > 1]
    assert len(copies) > 100, "the file holds many tweets that differ only in their links"
    split_of = {t: s for s in SPLITS for t in raw[s][0]}
    for group in copies:
        assert len({split_of[t] for t in group}) == 1, f"one tweet, other links, in two splits: {sorted(group)[:2]}"


@pytest.mark.parametrize(("name", "rows"), [pytest.param("imdb", 25_000, marks=pytest.mark.slow), ("agnews", 7_600)])
def test_official_test_set_is_kept_whole_in_file_order(name: str, rows: int, loaded: Any, data_dir: Path) -> None:
    task, raw = loaded(name)
    if name == "imdb":
        df = pd.read_csv(data_dir / task.test_file.path, keep_default_na=False)
        texts, labels = df["text"].tolist(), df["label"].to_numpy()
    else:
        df = pd.read_csv(data_dir / task.test_file.path, header=None, keep_default_na=False)
        texts, labels = (df[1] + ". " + df[2]).tolist(), df[0].to_numpy() - 1
    assert len(texts) == rows
    assert raw["test"][0] == texts
    np.testing.assert_array_equal(raw["test"][1], labels)


def test_agnews_drops_training_copies_of_test_and_validation_texts_after_cleaning(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rules on small made-up AG News files (the real training file is not in the shared
    data): copies that differ only by the files' escapes, case or spacing, or by spacing
    around punctuation (the same tokens), are one text."""
    task = make("agnews", data_dir, val_fraction=0.25)
    train = [f"Story {i}. Body number {i}" for i in range(40)]
    train_labels = [i % 4 for i in range(40)]
    train += ["Stocks rally. It#39;s a quot;bigquot; day", "stocks RALLY.  It's a \"big\" day"]  # one text, twice
    train += ["Team wins. The\\final", "Team wins. The final"]  # one text, twice
    train += ["Gold climbs.Investors wary ( AP )"]  # the tokens of a test story, not its characters
    train_labels += [2, 2, 1, 1, 2]
    test = ["Stocks rally. It's a \"big\" day", "Other news. Nothing else", "Gold climbs. Investors wary (AP)"]
    files = {task.train_file.path: (train, np.array(train_labels)),
             task.test_file.path: (test, np.array([2, 0, 2]))}
    monkeypatch.setattr(task, "read", lambda file: files[file.path])
    raw = task.load()
    keys = {s: {seen(task, t) for t in raw[s][0]} for s in SPLITS}
    assert not keys["train"] & keys["val"] and not keys["train"] & keys["test"] and not keys["val"] & keys["test"]
    assert raw["test"][0] == test
    # both copies of the first test story and the token copy of the last are gone, from
    # whichever split they were carved into
    assert train[-1] not in test and seen(task, train[-1]) == seen(task, test[-1])
    assert task.dropped["train"] + task.dropped["val"] == 3
    assert len(raw["train"][0]) + len(raw["val"][0]) == len(train) - 3
    assert not any(t.startswith("Gold") for s in ("train", "val") for t in raw[s][0])
    # the two copies of the other story landed in the same split
    team = [s for s in ("train", "val") if any(t.startswith("Team wins") for t in raw[s][0])]
    assert len(team) == 1 and sum(t.startswith("Team wins") for t in raw[team[0]][0]) == 2


# --- SST-2 -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sst2(data_dir: Path) -> dict[str, Any]:
    """The task loaded once and its two files read here: the training file's phrases (as
    ``SST2.read`` gives them) with their tokens, its whole sentences (the phrases that are no
    proper word run of another phrase, found on the raw phrases as the task does), and the
    tokens of the dev sentences."""
    task = make("sst2", data_dir)
    raw = task.load()
    df = pd.read_csv(data_dir / task.train_file.path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    phrases = df["sentence"].str.strip().tolist()
    inner: set[str] = set()
    for p in set(phrases):
        inner |= word_runs(p, proper=True)
    dev = pd.read_csv(data_dir / task.test_file.path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
    return {"task": task, "raw": raw, "phrases": phrases, "labels": df["label"].to_numpy(),
            "keys": [seen(task, p) for p in phrases], "whole": set(phrases) - inner, "dev": dev,
            "dev_keys": {seen(task, s) for s in dev["sentence"]}}


def test_sst2_no_training_phrase_occurs_inside_a_validation_sentence(sst2: dict[str, Any]) -> None:
    """In the tokens the model reads ("free-fall" is "free - fall", so holds the phrase
    "free"): no training phrase is a token run of a validation sentence, and training is
    exactly the file's phrases less those runs and the dev sentences, in file order."""
    task, raw, keys = sst2["task"], sst2["raw"], sst2["keys"]
    inside = set().union(*(word_runs(seen(task, s)) for s in raw["val"][0]))
    leaked = [t for t in raw["train"][0] if seen(task, t) in inside]
    assert len(leaked) == 0, f"{len(leaked)} training phrases occur inside validation sentences, e.g. {leaked[:3]}"
    # the rule drops exactly those phrases (and dev sentences) and nothing else
    kept = [i for i, k in enumerate(keys) if k not in inside and k not in sst2["dev_keys"]]
    assert raw["train"][0] == [sst2["phrases"][i] for i in kept]
    np.testing.assert_array_equal(raw["train"][1], sst2["labels"][kept])
    rows_inside = sum(k in inside for k in keys)
    assert rows_inside > len(raw["val"][0])  # validation sentences do share phrases with the file
    # phrases that are runs of a validation sentence only once tokenized: a check on the raw
    # words would miss them
    raw_inside = set().union(*(word_runs(s) for s in raw["val"][0]))
    assert sum(p in raw_inside for p in sst2["phrases"]) < rows_inside
    # every row of the file is a training phrase, a validation sentence or counted as dropped:
    # the dropped are the rows inside a validation sentence (or a dev sentence), less the
    # validation sentences themselves
    assert len(sst2["phrases"]) == 67_349
    n_dropped = task.dropped["train"] + task.dropped["val"]
    assert n_dropped == len(sst2["phrases"]) - len(raw["train"][0]) - len(raw["val"][0])
    assert n_dropped == sum(k in inside or k in sst2["dev_keys"] for k in keys) - len(raw["val"][0])


def test_sst2_validation_is_whole_sentences(sst2: dict[str, Any]) -> None:
    task, raw = sst2["task"], sst2["raw"]
    val = raw["val"][0]
    assert len(set(val)) == len(val), "a validation sentence is there twice"
    inside_longer = sorted(set(val) - sst2["whole"])
    assert not inside_longer, f"{len(inside_longer)} validation phrases are inside a longer phrase: {inside_longer[:3]}"
    # the task finds the same whole sentences, each once
    rows = task.sentences(sst2["phrases"])
    assert [sst2["phrases"][i] for i in rows] == [p for p in dict.fromkeys(sst2["phrases"]) if p in sst2["whole"]]
    # ~10% of the whole sentences (stratified per class, so within a row or two)
    assert len(val) == pytest.approx(0.1 * len(sst2["whole"]), abs=2)
    # and whole in the tokens the model reads: no training phrase holds a validation sentence
    # ("etc ." is a run of the tokens of "etc. .", though not of its words)
    val_keys = {seen(task, s) for s in val}
    assert len(val_keys) == len(val)
    holders = [t for t in raw["train"][0] if word_runs(seen(task, t)) & val_keys]
    assert len(holders) == 0, f"{len(holders)} training phrases hold a validation sentence, e.g. {holders[:2]}"


def test_sst2_test_is_the_whole_glue_dev_set_and_no_dev_sentence_is_trained_on(sst2: dict[str, Any]) -> None:
    task, raw, dev = sst2["task"], sst2["raw"], sst2["dev"]
    assert len(dev) == 872
    assert raw["test"][0] == dev["sentence"].str.strip().tolist()
    np.testing.assert_array_equal(raw["test"][1], dev["label"].to_numpy())
    for split in ("train", "val"):
        same = sorted(sst2["dev_keys"] & {seen(task, t) for t in raw[split][0]})
        assert len(same) == 0, f"{len(same)} dev sentences are {split} phrases, e.g. {same[:2]}"


# --- forecasting -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def set_up(data_dir: Path) -> Callable[[str], tuple[Any, Any]]:
    """name -> (task, task.setup()) with default parameters, each task set up once."""

    def build(name: str) -> tuple[Any, Any]:
        task = make(name, data_dir)
        return task, task.setup()

    return cached(build)


def read_series(task: Any, data_dir: Path) -> np.ndarray:
    return pd.read_csv(data_dir / task.file.path)[task.value_column].to_numpy(dtype=np.float64)


def series_origins(task: Any, split: Any, series: np.ndarray) -> np.ndarray:
    """The first target row of every window of a split, found in the series: the first
    window by searching its look-back and targets, the rest following it one row apart."""
    L, H = task.params.lookback, task.params.horizon
    batch = whole(split)
    xy = torch.cat([batch["x"], batch["y"]], 1)[..., 0].double().numpy() * task.std + task.mean  # (N, L + H)
    spans = sliding_window_view(series, L + H)  # spans[s] is rows [s, s + L + H), its first target row s + L
    tol = 1e-5 * (np.abs(series).max() + 1)  # float32 round-off, far below the data's resolution
    found = np.flatnonzero(np.abs(spans - xy[0]).max(1) < tol)
    assert len(found) == 1, f"the first window matches {len(found)} places in the series"
    origins = found[0] + L + np.arange(len(xy))
    np.testing.assert_allclose(spans[origins - L], xy, rtol=0, atol=tol)
    return origins


def assert_targets_disjoint_and_ordered(borders: dict[str, tuple[int, int]], origins: dict[str, np.ndarray],
                                        horizon: int, lookback: int, n: int) -> None:
    assert list(borders) == list(SPLITS)
    assert borders["train"][0] == 0 and borders["test"][1] <= n
    assert borders["train"][1] == borders["val"][0] and borders["val"][1] == borders["test"][0]
    targets = {}
    for s in SPLITS:
        o = origins[s]
        assert len(o) > 0 and (np.diff(o) == 1).all(), f"{s} windows are not one row apart"
        targets[s] = (int(o[0]), int(o[-1]) + horizon)  # rows [first, end) hold the split's targets
        start, end = borders[s]
        assert start <= targets[s][0] and targets[s][1] <= end, f"{s} targets {targets[s]} leave {borders[s]}"
        assert targets[s][1] == end, f"{s} targets stop short of its last row"
        assert o[0] - lookback >= 0
    assert targets["train"][1] <= targets["val"][0] and targets["val"][1] <= targets["test"][0], targets
    # validation and test forecast every row of their ranges; inputs may reach back (by the look-back) only
    for s in ("val", "test"):
        assert targets[s][0] == borders[s][0]


SERIES_TASKS = ["airline", "sunspots", "temperatures"]


@pytest.mark.parametrize("name", SERIES_TASKS)
def test_series_targets_lie_in_disjoint_ordered_row_ranges(name: str, set_up: Any, data_dir: Path) -> None:
    task, splits = set_up(name)
    series = read_series(task, data_dir)
    origins = {s: series_origins(task, getattr(splits, s), series) for s in SPLITS}
    assert_targets_disjoint_and_ordered(task.borders(len(series)), origins, task.params.horizon,
                                        task.params.lookback, len(series))
    assert task.borders(len(series))["test"][1] == len(series)  # the test targets are the last rows


@pytest.mark.parametrize("name", SERIES_TASKS)
def test_series_scaler_is_fitted_on_training_rows_only(name: str, set_up: Any, data_dir: Path) -> None:
    task, splits = set_up(name)
    series = read_series(task, data_dir)
    train_end = task.borders(len(series))["train"][1]
    train = series[:train_end]
    assert task.mean == pytest.approx(train.mean(), rel=1e-12)
    assert task.std == pytest.approx(train.std(), rel=1e-12)
    m = task.season
    assert task.mase_scale == pytest.approx(np.abs(train[m:] - train[:-m]).mean(), rel=1e-12)
    first_val_target = series_origins(task, splits.val, series)[0]
    assert train_end <= first_val_target  # the rows the scaler saw hold no validation or test target
    # and those differ from the statistics with validation rows in, so the checks can fail
    with_val = series[: task.borders(len(series))["val"][1]]
    assert not np.isclose(train.mean(), with_val.mean(), rtol=1e-9)
    assert not np.isclose(train.std(), with_val.std(), rtol=1e-9)


ETT_CASES = [("etth1", {}), ("etth2", {"horizon": 720}), ("ettm1", {}), ("ettm2", {"horizon": 336, "features": "S"})]


@pytest.fixture(scope="module")
def ett(data_dir: Path) -> Callable[[str], tuple[Any, Any, np.ndarray]]:
    """case id -> (task, task.setup(), the file's values of the task's columns), each set up once."""
    cases = {f"{name}-{params}": (name, params) for name, params in ETT_CASES}

    def build(case: str) -> tuple[Any, Any, np.ndarray]:
        name, params = cases[case]
        task = make(name, data_dir, **params)
        columns = COLUMNS if task.params.features == "M" else ["OT"]
        values = pd.read_csv(data_dir / task.file.path)[columns].to_numpy(dtype=np.float64)
        return task, task.setup(), values

    return cached(build)


@pytest.mark.parametrize(("name", "params"), ETT_CASES, ids=[n for n, _ in ETT_CASES])
def test_ett_targets_lie_in_disjoint_ordered_row_ranges(name: str, params: dict[str, Any], ett: Any) -> None:
    task, splits, values = ett(f"{name}-{params}")
    H, L = task.params.horizon, task.params.lookback
    origins = {s: getattr(splits, s).origins.numpy() for s in SPLITS}
    assert_targets_disjoint_and_ordered(task.borders(), origins, H, L, len(values))
    # the origins mean what they say: a window's targets are the rows from its origin on
    scaled = (values - task.mean) / task.std
    for s in SPLITS:
        split = getattr(splits, s)
        for i in (0, len(split) - 1):
            batch, t = split.__getitems__([i]), int(origins[s][i])
            np.testing.assert_allclose(batch["y"][0].numpy(), scaled[t : t + H], atol=1e-5)
            np.testing.assert_allclose(batch["x"][0].numpy(), scaled[t - L : t], atol=1e-5)


@pytest.mark.parametrize(("name", "params"), ETT_CASES, ids=[n for n, _ in ETT_CASES])
def test_ett_scaler_is_fitted_on_training_rows_only(name: str, params: dict[str, Any], ett: Any) -> None:
    task, splits, values = ett(f"{name}-{params}")
    train_end = task.borders()["train"][1]
    assert train_end == 12 * 30 * 24 * task.rows_per_hour  # 12 months, as the protocol has it
    assert train_end <= int(splits.val.origins.min())
    np.testing.assert_allclose(task.mean, values[:train_end].mean(0), rtol=1e-12)
    np.testing.assert_allclose(task.std, values[:train_end].std(0), rtol=1e-12)
    assert not np.allclose(values[:train_end].mean(0), values[: task.borders()["val"][1]].mean(0), rtol=1e-6)


# --- character language modelling --------------------------------------------------------


def test_timemachine_character_ranges_are_disjoint_and_contiguous_in_order(set_up: Any, data_dir: Path) -> None:
    task, splits = set_up("timemachine")
    text = task.preprocess((data_dir / task.file.path).read_text(encoding="utf-8"))
    T = task.params.seq_len
    ranges = {}
    for s in SPLITS:
        batch = whole(getattr(splits, s))
        ids = [*batch["x"].flatten().tolist(), int(batch["y"][-1, -1])]  # every character the split holds
        if CHAR_UNK in ids:  # a character training lacks: it matches any character
            pattern = "".join("." if i == CHAR_UNK else re.escape(task.itos[i]) for i in ids)
            spots = [m.start() for m in re.finditer(f"(?=({pattern}))", text)]
        else:
            part = "".join(task.itos[i] for i in ids)
            spots = [i for i in (text.find(part), text.find(part, text.find(part) + 1)) if i >= 0]
        assert len(spots) == 1, f"{s} is found {len(spots)} times in the text"
        ranges[s] = (spots[0], spots[0] + len(ids))
    assert ranges["train"][0] == 0
    bounds = [0, round(len(text) * 0.8), round(len(text) * 0.9), len(text)]
    for s, start, end in zip(SPLITS, bounds, bounds[1:], strict=False):
        first, last = ranges[s]
        assert first == start, f"{s} starts at character {first}, not {start}"
        # each split ends inside its own range, short of it by less than one subsequence
        assert last <= end and end - last < T, (s, ranges[s], end)
    assert ranges["train"][1] <= ranges["val"][0] and ranges["val"][1] <= ranges["test"][0]


# --- synthetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_copy_held_out_sequences_are_never_training_sequences(seed: int, data_dir: Path) -> None:
    splits = make("copy", data_dir, seed=seed, delay=5, n_train=2000).setup()
    rows = {s: [tuple(r) for r in whole(getattr(splits, s))["x"].tolist()] for s in SPLITS}
    train = set(rows["train"])
    assert len(rows["val"]) == len(rows["test"]) == 1000 and len(train) > 1990
    for s in ("val", "test"):
        shared = train & set(rows[s])
        assert len(shared) == 0, f"{len(shared)} {s} sequences are training sequences"
    assert not set(rows["val"]) & set(rows["test"])


def test_adding_held_out_sequences_are_never_training_sequences(data_dir: Path) -> None:
    splits = make("adding", data_dir, seed=0, length=10, n_train=2000).setup()
    rows = {s: {tuple(r) for r in whole(getattr(splits, s))["x"][..., 0].tolist()} for s in SPLITS}
    assert not rows["train"] & rows["val"] and not rows["train"] & rows["test"] and not rows["val"] & rows["test"]


@pytest.mark.parametrize("name", ["copy", "adding"])
@pytest.mark.parametrize("seed", [VAL_SEED, TEST_SEED])
def test_synthetic_run_seed_may_not_be_a_held_out_sets_seed(name: str, seed: int, data_dir: Path) -> None:
    """The training set is drawn from the run's seed and the held-out sets from fixed seeds:
    a run seed equal to one of those would train on the held-out sequences themselves."""
    sizes = {"n_train": 64, "n_val": 32, "n_test": 32}
    task = make(name, data_dir, seed=seed, **sizes)
    with pytest.raises(ValueError, match=str(seed)):
        task.setup()
    # the leak it prevents: sequences drawn from that seed are the held-out set's own
    held_out = getattr(make(name, data_dir, seed=0, **sizes).setup(), "val" if seed == VAL_SEED else "test")
    assert torch.equal(whole(task.generate(len(held_out), seed))["x"], whole(held_out)["x"])
    make(name, data_dir, seed=seed + 1, **sizes).setup()  # a neighbouring seed is fine
