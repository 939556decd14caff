"""Search spaces for tuning: the registry's, with the user's changes on top.

Each model declares its search space, and a task may add its own (a forecasting look-back).
Both are functions that ask an Optuna trial for values under keys such as
``model.hidden_size``, ``train.lr`` or ``task.lookback``. The user changes them with
``--space`` or a TOML file, one entry per key:

    model.hidden_size=64,128,256      choose among these values
    train.lr=1e-4..1e-2:log           a range (log scale with ':log'); integers for int settings
    model.num_layers=2                fixed: not searched

In a file, top-level keys apply to every model tuned, and a table named after a model to
that model only:

    "train.batch_size" = [32, 64]
    [transformer]
    "model.n_heads" = [2, 4]

Torch-free (and Optuna-free), so bad input is reported at once.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.config import TrainConfig, coerce, fields_of
from bench.errors import BenchError
from bench.registry import unknown_message

GROUPS = ("model", "train", "task")  # the settings a trial may change


@dataclass(frozen=True)
class Dimension:
    """One searched or fixed setting, as the user gave it."""

    key: str
    choices: tuple[Any, ...] = ()  # categorical, or the one fixed value
    low: float | None = None
    high: float | None = None
    log: bool = False
    fixed: bool = False
    integer: bool = False

    def ask(self, trial: Any) -> Any:
        if self.fixed:
            return self.choices[0]
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)

    def describe(self) -> str:
        if self.fixed:
            return f"{self.choices[0]!r}"
        if self.choices:
            return "{" + ", ".join(repr(c) for c in self.choices) + "}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def parse_dimension(key: str, value: Any, type_str: str) -> Dimension:
    """``value`` is CLI text (``a,b``, ``lo..hi[:log]``, ``v``) or a TOML value (a list, that
    text, or a single value)."""

    def one(v: Any) -> Any:
        return coerce(str(v).strip(), type_str, key)

    if isinstance(value, list):
        if not value:
            raise BenchError(f"Invalid search space for {key}: an empty list of choices")
        return Dimension(key, tuple(dict.fromkeys(one(v) for v in value)))
    text = str(value).strip()
    if ".." in text:
        bounds, colon, scale = text.partition(":")
        scale = scale.strip()
        if scale not in ("", "log") or (colon and not scale):
            raise BenchError(f"Invalid search space for {key}: '{text}' (a range is LOW..HIGH or LOW..HIGH:log)")
        numeric = [t for t in ("int", "float") if t in [s.strip() for s in type_str.split("|")]]
        if not numeric:
            raise BenchError(f"Invalid search space for {key}: a range needs a number, and {key} is {type_str}")
        lo_text, _, hi_text = bounds.partition("..")
        lo, hi = coerce(lo_text.strip(), numeric[0], key), coerce(hi_text.strip(), numeric[0], key)
        if not lo < hi:
            raise BenchError(f"Invalid search space for {key}: '{text}' needs LOW < HIGH")
        if scale == "log" and lo <= 0:
            raise BenchError(f"Invalid search space for {key}: a log range needs LOW > 0")
        return Dimension(key, low=lo, high=hi, log=scale == "log", integer=numeric[0] == "int")
    if "," in text:
        return parse_dimension(key, [t for t in text.split(",") if t.strip()], type_str)
    return Dimension(key, (one(text),), fixed=True)


MAX_SPACE_FILE_BYTES = 1_000_000  # a search space is a few lines; this stops a stray /dev/zero


def read_space_file(path: Path) -> dict[str, dict[str, Any]]:
    """{"*": {key: value}, "<model>": {key: value}} from a TOML file. Whatever bytes it
    holds, a file that is not a search space is a one-line BenchError naming it."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_SPACE_FILE_BYTES + 1)
    except OSError as e:
        raise BenchError(f"Cannot read the space file {path}: {e.strerror or e}") from None
    if len(raw) > MAX_SPACE_FILE_BYTES:
        raise BenchError(f"Invalid space file {path}: more than {MAX_SPACE_FILE_BYTES:,} bytes; "
                         "a search space is a TOML file of a few lines")
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise BenchError(f"Invalid space file {path}: not UTF-8 text (byte {e.start}: {raw[e.start:e.start + 1]!r}); "
                         "TOML files are UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise BenchError(f"Invalid space file {path}: {e}") from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise BenchError(f"Invalid space file {path}: nested too deeply") from None
    def flatten(table: dict[str, Any]) -> dict[str, Any]:
        # Unquoted, `train.lr = …` is TOML for the table {"train": {"lr": …}}: the same key.
        flat: dict[str, Any] = {}
        for key, value in table.items():
            if key in GROUPS and isinstance(value, dict):
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return flat

    out: dict[str, dict[str, Any]] = {"*": {}}
    for key, value in flatten(data).items():
        if isinstance(value, dict) and "." not in key:
            if key == "*":  # would replace the top level, which this mapping keeps under "*"
                raise BenchError(f"Invalid space file {path}: a table is named '*'; tables are named after models")
            out[key] = flatten(value)
        else:
            out["*"][key] = value
    return out


def setting_types(model: dict[str, Any], task: dict[str, Any]) -> dict[str, str]:
    """Every key a trial may set for this (model, task), with its declared type."""
    types = {f"model.{k}": v["type"] for k, v in model["hparams"].items()}
    types.update({f"train.{k}": v["type"] for k, v in fields_of(TrainConfig).items()})
    types.update({f"task.{k}": v["type"] for k, v in task["params"].items()})
    return types


def user_spaces(
    entries: list[str], file: Path | None, models: list[str], tasks: list[str], catalog: dict[str, Any]
) -> dict[tuple[str, str], dict[str, Dimension]]:
    """The user's dimensions for each (model, task name). A key that no requested pair has is
    an error; a key that some pairs lack (``model.n_heads`` for an LSTM) applies to the others."""
    given: dict[str, dict[str, Any]] = read_space_file(file) if file else {"*": {}}
    for name in given:
        if name != "*" and name not in models:
            raise BenchError(f"The space file names model '{name}', which is not among the models tuned "
                             f"({', '.join(models)})")
    cli: dict[str, str] = {}
    for item in entries:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise BenchError(f"Invalid --space '{item}': expected KEY=a,b,c or KEY=LOW..HIGH[:log] or KEY=VALUE")
        cli[key.strip()] = value.strip()
    types = {(m, t): setting_types(catalog["models"][m], catalog["tasks"][t]) for m in models for t in tasks}

    def check_known(key: str, pairs: list[tuple[str, str]]) -> None:
        if not any(key in types[p] for p in pairs):
            known = {k for p in pairs for k in types[p]}
            who = pairs[0][0] if len({m for m, _ in pairs}) == 1 else "the models tuned"
            raise BenchError(unknown_message(f"setting of {who}", key, sorted(known)))

    for key in [*given["*"], *cli]:
        check_known(key, list(types))
    for m in models:
        for key in given.get(m, {}):
            check_known(key, [(m, t) for t in tasks])
    spaces: dict[tuple[str, str], dict[str, Dimension]] = {}
    for (m, t), known in types.items():
        # The command line wins over the file, and a model's own table over the file's top level.
        merged = {**given["*"], **given.get(m, {}), **cli}
        spaces[(m, t)] = {k: parse_dimension(k, v, known[k]) for k, v in merged.items() if k in known}
        for dim in spaces[(m, t)].values():
            if dim.key.startswith("train."):
                check_train_values(dim)
    return spaces


def check_train_values(dim: Dimension) -> None:
    """Each choice, or both bounds, of a ``train.*`` dimension must make a valid TrainConfig (a
    schedule's name, lr > 0): a bad one is an input error now, not a failed trial later.
    (Model and task values are checked by their own classes, which need torch: at trial time.)"""
    name = dim.key.removeprefix("train.")
    for value in dim.choices or (dim.low, dim.high):
        try:
            TrainConfig(**{name: value})
        except (ValueError, TypeError) as e:
            raise BenchError(f"Invalid search space for {dim.key}: {e}") from None


class SpaceTrial:
    """An Optuna trial as the registry's search spaces see it: for a key the user gave, their
    dimension replaces the registry's; a key fixed by ``--set`` is not searched at all."""

    def __init__(self, trial: Any, dims: dict[str, Dimension], fixed: dict[str, Any]) -> None:
        self.trial, self.dims, self.fixed = trial, dims, fixed
        self.asked: set[str] = set()

    def _ask(self, name: str, registry: Callable[[], Any]) -> Any:
        self.asked.add(name)
        if name in self.fixed:
            return self.fixed[name]
        if name in self.dims:
            return self.dims[name].ask(self.trial)
        return registry()

    def suggest_categorical(self, name: str, choices: Any) -> Any:
        return self._ask(name, lambda: self.trial.suggest_categorical(name, choices))

    def suggest_int(self, name: str, low: int, high: int, step: int = 1, log: bool = False) -> int:
        return self._ask(name, lambda: self.trial.suggest_int(name, low, high, step=step, log=log))

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None,
                      log: bool = False) -> float:
        return self._ask(name, lambda: self.trial.suggest_float(name, low, high, step=step, log=log))


def sample(trial: Any, spaces: list[Callable[[Any], dict[str, Any]] | None], dims: dict[str, Dimension],
           fixed: dict[str, Any]) -> dict[str, Any]:
    """One configuration: the registry's spaces (model, then task) as the user changed them,
    then the user's dimensions that those spaces do not have."""
    proxy = SpaceTrial(trial, dims, fixed)
    values: dict[str, Any] = {}
    for space in spaces:
        if space is not None:
            values.update(space(proxy))
    for key, dim in dims.items():
        if key not in proxy.asked:
            values[key] = fixed[key] if key in fixed else dim.ask(trial)
    return values
