"""lra-text: IMDB's reviews as their first max_len UTF-8 bytes, with IMDB's leak-free splits."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

from tasks import get_task
from tasks.lra_text import BYTE_VOCAB, encode_bytes
from tests.tasks.test_leaks import skip_unless_files


@pytest.fixture(scope="module")
def task_and_splits(data_dir: Path) -> tuple[Any, Any]:
    cls = get_task("lra-text")
    task = cls(cls.make_params(max_len=100), data_dir, seed=0)
    skip_unless_files(task, data_dir)
    return task, task.setup()


def test_bytes_are_ids_one_to_256_and_truncated_to_max_len() -> None:
    text = "Très bon film! " * 10
    ids = encode_bytes(text, 20)
    assert ids.dtype == torch.long and len(ids) == 20
    assert bytes((ids - 1).tolist()) == text.encode("utf-8")[:20]
    assert encode_bytes("", 5).tolist() == [1]  # never empty
    assert int(encode_bytes("\xff" * 3, 10).max()) <= BYTE_VOCAB - 1


def test_each_sample_is_its_reviews_first_bytes_and_test_is_imdbs_whole_test_set(
    task_and_splits: tuple[Any, Any], data_dir: Path
) -> None:
    task, splits = task_and_splits
    assert splits.vocab_size == BYTE_VOCAB
    test = pd.read_csv(data_dir / task.test_file.path, keep_default_na=False)
    assert len(splits.test) == len(test) == 25_000
    batch = splits.test.__getitems__(list(range(0, 25_000, 997)))
    for row, i in enumerate(range(0, 25_000, 997)):
        raw = test["text"][i].encode("utf-8")[:100]  # raw bytes: HTML line breaks kept, as LRA does
        n = int(batch["mask"][row].sum())
        assert bytes((batch["x"][row, :n] - 1).tolist()) == raw
        assert not batch["x"][row, n:].any()  # padding is id 0, masked out
        assert int(batch["y"][row]) == test["label"][i]
    assert int(splits.train.lengths.max()) == 100  # most reviews are longer than 100 bytes


def test_validation_comes_from_the_training_file_only(task_and_splits: tuple[Any, Any]) -> None:
    task, splits = task_and_splits
    raw = task.load()
    assert len(raw["val"][0]) == len(splits.val) and len(raw["train"][0]) == len(splits.train)
    train_file = set(task.read(task.train_file)[0])
    assert set(raw["val"][0]) <= train_file and set(raw["train"][0]) <= train_file
    assert 0.09 < len(splits.val) / (len(splits.train) + len(splits.val)) < 0.11
    # same bytes of two splits would be a leak: no validation review's bytes are a training review's
    train_bytes = {t.encode() for t in raw["train"][0]}
    assert not any(t.encode() in train_bytes for t in raw["val"][0])


def test_lra_variant_and_recipe() -> None:
    cls = get_task("lra-text")
    assert cls.variants["lra"] == {"max_len": 4096}
    assert cls.make_params().max_len == 1024
    assert cls.recipe(cls.make_params(), {"val_every_steps": 100}) == {"train.batch_size": 16,
                                                                        "budget.val_every_steps": 200}
    assert {(p.model, p.value) for p in cls.published} == {("Transformer", 0.643), ("S4", 0.868)}
    with pytest.raises(ValueError, match="max_len=0"):
        cls.make_params(max_len=0)
