"""Byte-level IMDB sentiment: Long Range Arena's "Text" task (Tay et al. 2021).

The reviews of the ``imdb`` task, read as their UTF-8 bytes (one token each, no vocabulary to
learn, no tokenizer): a model has to compose characters into words and words into a verdict over
a thousand steps or more. Splits as for ``imdb``: the official 25k test set whole, validation
carved from the training file by distinct text, never from test.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from tasks.published import Published
from tasks.registry import DataShape, PaddedSplit, Splits, register_task
from tasks.text import IMDB

BYTE_VOCAB = 257  # id 0 pads; byte b is id b + 1


def encode_bytes(text: str, max_len: int) -> torch.Tensor:
    """The first ``max_len`` UTF-8 bytes of ``text`` as ids 1..256 (an empty text: one zero byte)."""
    data = text.encode("utf-8")[:max_len] or b"\0"
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long() + 1


@dataclass
class LRATextParams:
    max_len: int = 1024  # bytes kept per review (LRA: 4K, the `lra` variant); reviews average ~1,300
    split_seed: int = 0  # the fixed validation carve of the training file; not the run seed
    val_fraction: float = 0.1  # of the training file, held out for validation

    def __post_init__(self) -> None:
        if self.max_len < 1:
            raise ValueError(f"max_len={self.max_len} is invalid: it must be >= 1")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} is invalid: it must be in (0, 1)")


@register_task
class LRAText(IMDB):
    """IMDB reviews as bytes, the first ``max_len`` of each (LRA truncates the same way and keeps
    the text raw, HTML line breaks included, as here; duplicates are found by their words, as
    for ``imdb``). Batches are padded to their longest
    review, at most ``max_len``, and padding is masked: the same result as padding every
    review to ``max_len``, without computing on the padding."""

    name = "lra-text"
    version = 1
    description = "Byte-level IMDB (LRA Text): 25k/25k reviews as their first 1,024 UTF-8 bytes"
    Params = LRATextParams
    variants = {"lra": {"max_len": 4096}}
    published = (
        Published("Transformer", "accuracy", 0.643, "Tay et al. 2021 (LRA)", "4K bytes"),
        Published("S4", "accuracy", 0.868, "Gu et al. 2022", "LRA setting, 4K bytes"),
    )

    @classmethod
    def data_shape(cls, params: LRATextParams) -> DataShape:
        return DataShape(vocab_size=BYTE_VOCAB, max_len=params.max_len)

    @classmethod
    def recipe(cls, params: Any, budget: dict[str, Any]) -> dict[str, Any]:
        # Batches of 16: at 1,024 bytes a step then reads as many tokens as an `imdb` step (64
        # reviews of 256 words). A validation reads 2,500 reviews of up to max_len bytes: half as often.
        return {"train.batch_size": 16, "budget.val_every_steps": 2 * budget["val_every_steps"]}

    def setup(self) -> Splits:
        raw = self.load()
        self._keys = {}  # only needed while splitting
        counts = np.bincount(raw["train"][1], minlength=self.n_classes)
        self.majority = int(counts.argmax())
        self.test_labels = raw["test"][1]
        splits = {k: PaddedSplit([encode_bytes(t, self.params.max_len) for t in texts], torch.tensor(labels))
                  for k, (texts, labels) in raw.items()}
        return Splits(**splits, vocab_size=BYTE_VOCAB)
