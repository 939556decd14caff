"""Text classification: one label per document, read as a sequence of word ids.

Splits are leak-free: a split carved from a file is carved by distinct text, so copies of
one document never straddle two splits; a training document whose text is also in the
validation or test split is dropped from training, and a validation document that is also
in the test split is dropped from validation (an official test set is always kept whole).
SST-2 adds its own rule for its phrases (see ``SST2``). The vocabulary is fitted on the
training split only (capped, with an unknown token); evaluation keeps every sample, in
file order.
"""

from __future__ import annotations

import csv
import html
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.data import DataFile, ensure
from tasks.plots import confusion_figure
from tasks.registry import Batch, DataShape, OutputSpec, PaddedSplit, Splits, Task, confusion_metrics, register_task

PAD, UNK = 0, 1
_URL = re.compile(r"https?://\S+|www\.\S+")
_USER = re.compile(r"@\w+")
_TOKEN = re.compile(r"<url>|<user>|[a-z0-9]+(?:'[a-z]+)?|[^\s\w]")


def tokenize(text: str) -> list[str]:
    """Lower-cased words, numbers and punctuation; links and @users become one token each."""
    text = html.unescape(text).lower()
    text = _URL.sub(" <url> ", text)
    text = _USER.sub(" <user> ", text)
    return _TOKEN.findall(text)


class Vocabulary:
    """Word -> id, fitted on training texts: the most frequent words, the rest are UNK."""

    def __init__(self, texts: list[list[str]], max_size: int, min_freq: int) -> None:
        counts = Counter(tok for toks in texts for tok in toks)
        words = [w for w, c in counts.most_common(max_size - 2) if c >= min_freq]
        self.ids = {w: i + 2 for i, w in enumerate(words)}

    def __len__(self) -> int:
        return len(self.ids) + 2

    def encode(self, tokens: list[str], max_len: int, keep: str = "head") -> torch.Tensor:
        kept = tokens[:max_len] if keep == "head" else tokens[-max_len:]
        ids = [self.ids.get(t, UNK) for t in kept] or [UNK]  # never empty
        return torch.tensor(ids, dtype=torch.long)


def stratified_split(labels: np.ndarray, fractions: tuple[float, float], seed: int) -> dict[str, np.ndarray]:
    """Row indices of train/val/test, class proportions kept, each in file order."""
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_val, n_test = round(len(idx) * fractions[0]), round(len(idx) * fractions[1])
        parts["val"].append(idx[:n_val])
        parts["test"].append(idx[n_val : n_val + n_test])
        parts["train"].append(idx[n_val + n_test :])
    return {k: np.sort(np.concatenate(v)) for k, v in parts.items()}


def grouped_split(keys: list[str], labels: np.ndarray, fractions: tuple[float, float],
                  seed: int) -> dict[str, np.ndarray]:
    """``stratified_split`` over distinct keys: every row with the same key (the same text)
    lands in the same split, with the label of the key's first row for stratification."""
    first: dict[str, int] = {}
    group = np.empty(len(keys), dtype=np.int64)
    group_labels = []
    for i, k in enumerate(keys):
        if k not in first:
            first[k] = len(group_labels)
            group_labels.append(labels[i])
        group[i] = first[k]
    parts = stratified_split(np.asarray(group_labels), fractions, seed)
    return {name: np.flatnonzero(np.isin(group, ids)) for name, ids in parts.items()}


@dataclass
class TextParams:
    max_len: int = 64  # tokens kept per document (the rest is truncated)
    keep: str = "head"  # which max_len tokens a longer document keeps: its head or its tail
    vocab_size: int = 20_000  # cap, including PAD and UNK
    min_freq: int = 2  # rarer training words become UNK
    split_seed: int = 0  # the fixed split carved from the training file; not the run seed
    val_fraction: float = 0.1  # of the training file, held out for validation

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.vocab_size < 3 or self.min_freq < 1:
            raise ValueError("max_len >= 1, vocab_size >= 3 and min_freq >= 1 are required")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction} is invalid: it must be in (0, 1)")
        if self.keep not in ("head", "tail"):
            raise ValueError(f"keep='{self.keep}' is invalid: choose from head, tail")


@dataclass
class TweetsParams(TextParams):
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError("test_fraction must be in (0, 1) and val_fraction + test_fraction below 1")


class TextClassificationTask(Task):
    input_kind = "tokens"
    n_classes: ClassVar[int]
    class_names: ClassVar[list[str]]
    Params = TextParams
    primary_metric = "accuracy"
    higher_is_better = True

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("class_per_sequence", n_classes=self.n_classes)

    @classmethod
    def data_shape(cls, params: TextParams) -> DataShape:
        # The vocabulary is at most its cap (the model is sized for that: an upper bound). How
        # long the documents are is known only once they are read, so a batch's activations
        # are left to the run; the parameter count is checked.
        return DataShape(vocab_size=params.vocab_size)

    # The usual layout: a training file (validation is carved from it) and a test file.
    train_file: ClassVar[DataFile]
    test_file: ClassVar[DataFile]

    def files(self) -> list[DataFile]:
        return [self.train_file, self.test_file]

    def split_files(self, split: str) -> list[DataFile]:
        return [self.test_file if split == "test" else self.train_file]

    def read(self, file: DataFile) -> tuple[list[str], np.ndarray]:
        """(texts, labels) of one file."""
        raise NotImplementedError

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.dropped = {"train": 0, "val": 0}  # documents left out of a split to keep it leak-free
        self._keys: dict[str, str] = {}  # text -> its tokens, joined by spaces

    def load(self) -> dict[str, tuple[list[str], np.ndarray]]:
        """Raw (texts, labels) per split, leak-free."""
        self.dropped = {"train": 0, "val": 0}
        return self.separate(self.carve_validation(*self.read(self.train_file), test=self.read(self.test_file)))

    def clean(self, text: str) -> str:
        """Source-specific clean-up before tokenizing (markup, escape leftovers)."""
        return text

    def text_key(self, text: str) -> str:
        """What makes two documents the same: the tokens the model reads (so two tweets that
        differ only in their link are one text)."""
        key = self._keys.get(text)
        if key is None:
            key = self._keys[text] = " ".join(tokenize(self.clean(text)))
        return key

    def carve_validation(
        self, texts: list[str], labels: np.ndarray, test: tuple[list[str], np.ndarray]
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """Train/validation from the training file (stratified by distinct text, fixed by
        split_seed); test as given."""
        idx = grouped_split([self.text_key(t) for t in texts], labels, (self.params.val_fraction, 0.0),
                            self.params.split_seed)
        out = {k: ([texts[i] for i in idx[k]], labels[idx[k]]) for k in ("train", "val")}
        return {**out, "test": test}

    def separate(self, raw: dict[str, tuple[list[str], np.ndarray]]) -> dict[str, tuple[list[str], np.ndarray]]:
        """Drop training documents whose text is in validation or test, and validation
        documents whose text is in test; ``self.dropped`` counts them."""
        test_keys = {self.text_key(t) for t in raw["test"][0]}
        val_keys = {self.text_key(t) for t in raw["val"][0]}
        out = dict(raw)
        for name, elsewhere in (("val", test_keys), ("train", test_keys | val_keys)):
            texts, labels = out[name]
            keep = [i for i, t in enumerate(texts) if self.text_key(t) not in elsewhere]
            self.dropped[name] += len(texts) - len(keep)
            out[name] = ([texts[i] for i in keep], labels[np.asarray(keep, dtype=np.int64)])
        return out

    def setup(self) -> Splits:
        raw = self.load()
        # The splitting keyed every text by its tokens already (tokens never hold a space).
        tokens = {k: [self.text_key(t).split() for t in texts] for k, (texts, _) in raw.items()}
        self._keys = {}  # only needed while splitting and tokenizing
        p = self.params
        self.vocab = Vocabulary(tokens["train"], p.vocab_size, p.min_freq)
        counts = np.bincount(raw["train"][1], minlength=self.n_classes)
        self.majority = int(counts.argmax())
        self.test_labels = raw["test"][1]
        splits = {
            k: PaddedSplit([self.vocab.encode(t, p.max_len, p.keep) for t in tokens[k]], torch.tensor(raw[k][1]))
            for k in raw
        }
        return Splits(**splits, vocab_size=len(self.vocab))

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.cross_entropy(pred, batch["y"])

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        C = self.n_classes
        cells = batch["y"] * C + pred.argmax(-1)
        return {"confusion": torch.bincount(cells, minlength=C * C).view(C, C)}  # rows: truth

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        return confusion_metrics(s["confusion"])

    def figures(self, predict: Any, splits: Splits, test_stats: dict[str, torch.Tensor]) -> dict[str, Any]:
        cm = test_stats["confusion"].numpy()
        return {"confusion_test.png": confusion_figure(cm, self.class_names, f"{self.name}: test confusion matrix")}

    def references(self) -> dict[str, float]:
        """Always predicting the training split's majority class, scored on test."""
        if not hasattr(self, "majority"):
            return {}
        acc = float((self.test_labels == self.majority).mean())
        return {"accuracy": acc, "macro_f1": 2 * acc / (1 + acc) / self.n_classes}


@register_task
class Tweets(TextClassificationTask):
    """Kaggle 'NLP with Disaster Tweets' (labelled train.csv only): is a tweet about a real disaster?

    Kaggle hides the test labels, so a fixed stratified 80/10/10 split is made from
    ``split_seed``.
    """

    name = "tweets"
    description = "Disaster tweets (7,613): real disaster or not; fixed stratified 80/10/10 split"
    Params = TweetsParams
    n_classes = 2
    class_names = ["not a disaster", "disaster"]
    file = DataFile(
        "disaster_tweets/train.csv",
        "61111c6dc31eaffa34d1e1fa62e2395325c9bc3b38bba1941a5f1ed9b3fa60df",
        "https://raw.githubusercontent.com/FernandoLpz/Text-Classification-LSTMs-PyTorch/"
        "56347a2c3ac764f83869d24f5ebc7c15878241dc/data/tweets.csv",
        dataset="Disaster tweets",
    )

    def files(self) -> list[DataFile]:
        return [self.file]

    def split_files(self, split: str) -> list[DataFile]:
        return [self.file]  # every split is cut from the one file

    def load(self) -> dict[str, tuple[list[str], np.ndarray]]:
        df = pd.read_csv(ensure(self.file, self.data_dir))
        texts, labels = df["text"].astype(str).tolist(), df["target"].to_numpy(dtype=np.int64)
        p = self.params
        # By distinct text: the file repeats some tweets (a few with both labels).
        self.dropped = {"train": 0, "val": 0}
        idx = grouped_split([self.text_key(t) for t in texts], labels, (p.val_fraction, p.test_fraction),
                            p.split_seed)
        return self.separate({k: ([texts[i] for i in rows], labels[rows]) for k, rows in idx.items()})


def ngrams(phrase: str) -> set[str]:
    """Every contiguous run of words of a space-tokenized phrase, the phrase included."""
    words = phrase.split()
    return {" ".join(words[i:j]) for i in range(len(words)) for j in range(i + 1, len(words) + 1)}


@register_task
class SST2(TextClassificationTask):
    """GLUE SST-2 sentiment: the GLUE train file with validation carved from it, and the
    GLUE dev set as the test set (GLUE's test labels are hidden).

    GLUE's training file holds every phrase of every training sentence's parse tree, so a
    random carve of its rows puts phrases in validation whose words, and often whose
    sentence, training has seen. Validation is therefore made of whole sentences (the
    phrases no other phrase contains), and every training phrase that occurs inside a
    validation sentence is dropped from training."""

    name = "sst2"
    description = "SST-2 sentiment (GLUE): 67k training phrases; the 872-sentence dev set is the test set"
    n_classes = 2
    class_names = ["negative", "positive"]
    train_file = DataFile(
        "sst2/train.tsv",
        "48eac26399f8456935f81dd9e3a745c1430adb6c62e233ccfe22db4a0d15d1d1",
        "https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/"
        "6288fb5bec9c572f2492875ae0111df5b6daed11/glue_data/SST-2/train_full.tsv",
        dataset="SST-2 train",
    )
    test_file = DataFile(  # the GLUE dev set: GLUE's own test labels are hidden
        "sst2/dev.tsv",
        "54a9c12c77e402fc14d6a66a506f24d999f596b0176eb777c972cccc2f9cc4b0",
        "https://raw.githubusercontent.com/eyalbd2/Reproducing-AutoPrompt/"
        "6288fb5bec9c572f2492875ae0111df5b6daed11/glue_data/SST-2/dev.tsv",
        dataset="SST-2 dev",
    )

    def read(self, file: DataFile) -> tuple[list[str], np.ndarray]:
        df = pd.read_csv(ensure(file, self.data_dir), sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False)
        return df["sentence"].str.strip().tolist(), df["label"].to_numpy(dtype=np.int64)

    @staticmethod
    def sentences(phrases: list[str]) -> list[int]:
        """Rows of the phrases that no other phrase contains (whole sentences), first copies.
        Longest first: a phrase inside any other is inside one of the whole sentences already
        seen, whose word runs are all in ``covered``."""
        covered: set[str] = set()
        rows = []
        for i in sorted(range(len(phrases)), key=lambda i: (-len(phrases[i].split()), i)):
            if phrases[i] not in covered:
                rows.append(i)
                covered |= ngrams(phrases[i])
        return sorted(rows)

    def carve_validation(
        self, texts: list[str], labels: np.ndarray, test: tuple[list[str], np.ndarray]
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        rows = self.sentences(texts)
        # A sentence whose tokens sit inside a longer sentence's ("etc ." inside "etc. .") is
        # not whole to the model: it never goes to validation.
        keys = {i: self.text_key(texts[i]) for i in rows}
        inner = set().union(*(ngrams(k) - {k} for k in keys.values()))
        rows = np.asarray([i for i in rows if keys[i] not in inner], dtype=np.int64)
        idx = stratified_split(labels[rows], (self.params.val_fraction, 0.0), self.params.split_seed)
        val_rows = rows[idx["val"]]
        # Compared as the tokens the model reads ("free-fall" holds the phrase "free").
        inside = set().union(*(ngrams(self.text_key(texts[i])) for i in val_rows))
        train_rows = np.asarray([i for i in range(len(texts)) if self.text_key(texts[i]) not in inside],
                                dtype=np.int64)
        self.dropped["train"] += len(texts) - len(train_rows) - len(val_rows)  # phrases of validation sentences
        return {"train": ([texts[i] for i in train_rows], labels[train_rows]),
                "val": ([texts[i] for i in val_rows], labels[val_rows]), "test": test}


@dataclass
class IMDBParams(TextParams):
    max_len: int = 256  # reviews average ~270 tokens; longer ones are truncated ...
    keep: str = "tail"  # ... to their last 256: a review's verdict tends to come at its end, and a
    # recurrent reader's summary is its state after the last token (Keras's pad_sequences keeps
    # the tail too). Standard profile, LSTM, seed 0: 0.866 test accuracy against 0.843 with the head.


@register_task
class IMDB(TextClassificationTask):
    """Large Movie Review Dataset (Maas et al. 2011): the standard 25k/25k train/test split,
    validation carved from train; HTML line breaks removed."""

    name = "imdb"
    version = 2  # 2: a long review keeps its last max_len tokens (keep=tail)
    description = "IMDB reviews: 25k train / 25k test, positive or negative; the last max_len tokens of each"
    Params = IMDBParams
    n_classes = 2
    class_names = ["negative", "positive"]
    train_file = DataFile(
        "imdb/train.csv",
        "c324c54e17ffceb54230d53ed26c7c43530fc5fe7374990773ce9871c2bf27ed",
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        dataset="IMDB train",
        how="one CSV with a header 'text,label' of every review in aclImdb/train/neg (label 0, by id) "
        "then aclImdb/train/pos (label 1, by id), texts unchanged",
    )
    test_file = DataFile(
        "imdb/test.csv",
        "9c724df13b97942ce5d40e5df5d6832a522312f601e26de41cd1e7906744cf16",
        "https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
        dataset="IMDB test",
        how="one CSV with a header 'text,label' of every review in aclImdb/test/neg (label 0, by id) "
        "then aclImdb/test/pos (label 1, by id), texts unchanged",
    )
    _BREAK = re.compile(r"<br\s*/?>", re.IGNORECASE)

    def clean(self, text: str) -> str:
        return self._BREAK.sub(" ", text)

    def read(self, file: DataFile) -> tuple[list[str], np.ndarray]:
        df = pd.read_csv(ensure(file, self.data_dir), keep_default_na=False)
        return df["text"].tolist(), df["label"].to_numpy(dtype=np.int64)


@register_task
class AGNews(TextClassificationTask):
    """AG's News topic classification (Zhang, Zhao & LeCun 2015): World, Sports, Business,
    Sci/Tech; the standard train/test files, validation carved from train."""

    name = "agnews"
    description = "AG News topics (4 classes): 120k train / 7.6k test news titles and descriptions"
    n_classes = 4
    class_names = ["World", "Sports", "Business", "Sci/Tech"]
    train_file = DataFile(
        "ag_news/train.csv",
        "",
        "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/"
        "555590db4219b1243abb1918effd6a7425a2d75f/data/ag_news_csv/train.csv",
        dataset="AG News train",
        md5="b1a00f826fdfbd249f79597b59e1dc12",
    )
    test_file = DataFile(
        "ag_news/test.csv",
        "521465c2428ed7f02f8d6db6ffdd4b5447c1c701962353eb2c40d548c3c85699",
        "https://raw.githubusercontent.com/mhjabreel/CharCnn_Keras/"
        "555590db4219b1243abb1918effd6a7425a2d75f/data/ag_news_csv/test.csv",
        dataset="AG News test",
    )
    _ENTITY = re.compile(r"#(\d+);")
    _NAMED = {"quot;": '"', "amp;": "&", "lt;": "<", "gt;": ">"}

    def clean(self, text: str) -> str:
        """The files carry '\\' for line breaks and entity leftovers such as '#39;' and 'quot;'."""
        text = self._ENTITY.sub(lambda m: chr(int(m.group(1))), text.replace("\\", " "))
        for entity, char in self._NAMED.items():
            text = text.replace(entity, char)
        return text

    def read(self, file: DataFile) -> tuple[list[str], np.ndarray]:
        df = pd.read_csv(ensure(file, self.data_dir), header=None, names=["label", "title", "description"],
                         keep_default_na=False)
        return (df["title"] + ". " + df["description"]).tolist(), df["label"].to_numpy(dtype=np.int64) - 1
