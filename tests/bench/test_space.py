"""Search spaces for tuning: the user's dimensions (CLI text and TOML), the space file, which
(model, task) pairs a key applies to, and how a trial samples the registry's spaces with the
user's changes on top."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FixedTrial

import models
import tasks
from bench.catalog import load_catalog
from bench.errors import BenchError
from bench.space import Dimension, parse_dimension, read_space_file, sample, user_spaces
from models.registry import WEIGHT_DECAYS

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return load_catalog()


def asked_trials(n: int = 20, seed: int = 0) -> list[optuna.Trial]:
    """``n`` live trials of one in-memory study (random sampler: every value can come up)."""
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    return [study.ask() for _ in range(n)]


LSTM_DEFAULTS = {"model.hidden_size": 64, "model.num_layers": 2, "model.dropout": 0.1, "train.lr": 1e-3,
                 "train.weight_decay": WEIGHT_DECAYS[1], "train.batch_size": 32}


# --- parse_dimension --------------------------------------------------------------------


def test_choices_from_cli_text_are_typed() -> None:
    dim = parse_dimension("model.hidden_size", "32,64", "int")
    assert dim == Dimension("model.hidden_size", (32, 64))
    assert all(isinstance(c, int) for c in dim.choices)
    assert not dim.fixed and dim.low is None and dim.high is None
    # blanks around values and an empty item are ignored, duplicates kept once, in order
    assert parse_dimension("model.hidden_size", " 64, 32 ,,64", "int").choices == (64, 32)
    assert parse_dimension("train.lr", "1e-3,1e-2", "float").choices == (1e-3, 1e-2)
    assert parse_dimension("x", "true,off", "bool").choices == (True, False)
    assert parse_dimension("x", "none,7", "int | None").choices == (None, 7)


def test_choices_from_a_toml_list() -> None:
    assert parse_dimension("model.hidden_size", [32, 64, 32], "int").choices == (32, 64)
    floats = parse_dimension("model.dropout", [0, 0.25], "float").choices
    assert floats == (0.0, 0.25) and all(isinstance(c, float) for c in floats)
    assert parse_dimension("x", [True, False], "bool").choices == (True, False)
    assert parse_dimension("x", ["a", "b"], "str").choices == ("a", "b")
    one = parse_dimension("model.hidden_size", [16], "int")
    assert one.choices == (16,) and not one.fixed  # a one-item list is still a categorical


def test_float_range_with_log_scale() -> None:
    dim = parse_dimension("train.lr", "1e-4..1e-2:log", "float")
    assert (dim.low, dim.high, dim.log, dim.integer, dim.fixed) == (1e-4, 1e-2, True, False, False)
    assert dim.choices == ()
    assert dim.describe() == "[0.0001, 0.01] log"
    linear = parse_dimension("model.dropout", "0.1..0.5", "float")
    assert (linear.low, linear.high, linear.log) == (0.1, 0.5, False)
    assert linear.describe() == "[0.1, 0.5]"
    # the TOML form of a range is the same text
    assert parse_dimension("train.lr", "1e-4..1e-2:log", "float") == dim


def test_int_range_for_an_int_setting() -> None:
    dim = parse_dimension("model.num_layers", "1..4", "int")
    assert (dim.low, dim.high, dim.integer, dim.log) == (1, 4, True, False)
    assert isinstance(dim.low, int) and isinstance(dim.high, int)
    assert parse_dimension("model.hidden_size", "16..256:log", "int").log
    assert parse_dimension("x", "1..4", "int | None").integer
    floats = parse_dimension("model.dropout", "0..1", "float")
    assert not floats.integer and isinstance(floats.low, float)


def test_a_single_value_is_fixed() -> None:
    dim = parse_dimension("model.num_layers", "2", "int")
    assert dim.fixed and dim.choices == (2,)
    assert dim.describe() == "2"
    assert parse_dimension("model.num_layers", 3, "int").choices == (3,)  # a TOML integer
    assert parse_dimension("train.lr", 1e-5, "float").choices == (1e-5,)  # a TOML float
    assert parse_dimension("x", True, "bool") == Dimension("x", (True,), fixed=True)
    assert parse_dimension("x", "none", "int | None").choices == (None,)


def test_dimension_ask_uses_the_matching_suggest() -> None:
    (trial,) = asked_trials(1)
    assert Dimension("a", (7,), fixed=True).ask(trial) == 7
    assert Dimension("b", ("x", "y")).ask(trial) in ("x", "y")
    assert 1 <= Dimension("c", low=1, high=4, integer=True).ask(trial) <= 4
    assert 1e-4 <= Dimension("d", low=1e-4, high=1e-2, log=True).ask(trial) <= 1e-2
    assert "a" not in trial.params  # fixed: not suggested
    assert trial.distributions["b"] == CategoricalDistribution(("x", "y"))
    assert trial.distributions["c"] == IntDistribution(1, 4)
    assert trial.distributions["d"] == FloatDistribution(1e-4, 1e-2, log=True)


def test_empty_list_of_choices_is_refused() -> None:
    with pytest.raises(BenchError, match="Invalid search space for model.hidden_size: an empty list"):
        parse_dimension("model.hidden_size", [], "int")
    with pytest.raises(BenchError, match="an empty list"):
        parse_dimension("model.hidden_size", ",,", "int")


@pytest.mark.parametrize("text", ["4..1", "2..2"])
def test_range_needs_low_below_high(text: str) -> None:
    with pytest.raises(BenchError, match=rf"Invalid search space for model.num_layers: '{text}' needs LOW < HIGH"):
        parse_dimension("model.num_layers", text, "int")


@pytest.mark.parametrize("text", ["0..1:log", "-1..1:log", "0..0.5:log"])
def test_log_range_needs_a_positive_low(text: str) -> None:
    with pytest.raises(BenchError, match="Invalid search space for train.lr: a log range needs LOW > 0"):
        parse_dimension("train.lr", text, "float")


@pytest.mark.parametrize("type_str", ["str", "bool", "str | None"])
def test_range_on_a_non_numeric_setting_is_refused(type_str: str) -> None:
    with pytest.raises(BenchError, match=f"a range needs a number, and task.kind is {type_str}"):
        parse_dimension("task.kind", "1..4", type_str)


@pytest.mark.parametrize("text", ["1e-4..1e-2:ln", "1e-4..1e-2:LOG", "1..4:int"])
def test_bad_scale_suffix_is_refused(text: str) -> None:
    with pytest.raises(BenchError) as err:
        parse_dimension("train.lr", text, "float")
    message = str(err.value)
    assert f"Invalid search space for train.lr: '{text}'" in message
    assert "LOW..HIGH or LOW..HIGH:log" in message  # says what is expected


def test_values_of_the_wrong_type_are_refused() -> None:
    with pytest.raises(BenchError, match="Invalid value for model.hidden_size: 'big' is not int"):
        parse_dimension("model.hidden_size", "32,big", "int")
    with pytest.raises(BenchError, match="'1.5' is not int"):
        parse_dimension("model.hidden_size", [32, 1.5], "int")
    with pytest.raises(BenchError, match="'fast' is not float"):
        parse_dimension("train.lr", "fast", "float")
    with pytest.raises(BenchError, match="'1e-4' is not int"):  # an int setting takes an int range only
        parse_dimension("model.num_layers", "1e-4..1e-2", "int")
    with pytest.raises(BenchError, match="'' is not int"):
        parse_dimension("model.num_layers", "..4", "int")
    with pytest.raises(BenchError, match="'maybe' is not bool"):
        parse_dimension("x", ["true", "maybe"], "bool")


# --- the space file ---------------------------------------------------------------------


def test_space_file_top_level_keys_and_model_tables(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('"train.batch_size" = [32, 64]\n"train.lr" = "1e-4..1e-2:log"\n\n'
                    '[transformer]\n"model.n_heads" = [2, 4]\n\n[lstm]\n"model.num_layers" = 2\n')
    assert read_space_file(path) == {
        "*": {"train.batch_size": [32, 64], "train.lr": "1e-4..1e-2:log"},
        "transformer": {"model.n_heads": [2, 4]},
        "lstm": {"model.num_layers": 2},
    }


def test_empty_space_file_has_no_keys(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text("# nothing yet\n")
    assert read_space_file(path) == {"*": {}}


def test_invalid_toml_is_a_bench_error(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('"train.lr" = [1e-4, \n')
    with pytest.raises(BenchError, match=f"Invalid space file {path}"):
        read_space_file(path)


def test_missing_space_file_is_a_bench_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(BenchError, match=f"Cannot read the space file {path}"):
        read_space_file(path)


# --- user_spaces ------------------------------------------------------------------------


def test_cli_entries_apply_to_every_pair(catalog: dict[str, Any]) -> None:
    spaces = user_spaces(["train.lr=1e-4..1e-2:log", "model.hidden_size=32,64"], None, ["lstm", "gru"],
                         ["copy", "adding"], catalog)
    assert set(spaces) == {(m, t) for m in ("lstm", "gru") for t in ("copy", "adding")}
    for dims in spaces.values():
        assert set(dims) == {"train.lr", "model.hidden_size"}
        assert dims["model.hidden_size"].choices == (32, 64)
        assert dims["train.lr"].log


def test_no_entries_give_empty_spaces(catalog: dict[str, Any]) -> None:
    assert user_spaces([], None, ["lstm"], ["copy"], catalog) == {("lstm", "copy"): {}}


def test_key_of_one_model_applies_to_that_model_only(catalog: dict[str, Any]) -> None:
    spaces = user_spaces(["model.n_heads=2,4"], None, ["lstm", "transformer"], ["copy"], catalog)
    assert spaces[("lstm", "copy")] == {}
    assert spaces[("transformer", "copy")] == {"model.n_heads": Dimension("model.n_heads", (2, 4))}


def test_task_key_applies_to_the_tasks_that_have_it(catalog: dict[str, Any]) -> None:
    spaces = user_spaces(["task.lookback=12,24"], None, ["lstm"], ["airline", "copy"], catalog)
    assert spaces[("lstm", "airline")]["task.lookback"].choices == (12, 24)
    assert spaces[("lstm", "copy")] == {}


def test_key_of_no_requested_model_is_an_error(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError) as err:
        user_spaces(["model.n_heads=2,4"], None, ["lstm", "gru"], ["copy"], catalog)
    message = str(err.value)
    assert "Unknown setting" in message and "'model.n_heads'" in message
    assert "model.hidden_size" in message.split("Available:")[1]  # says what may be set
    with pytest.raises(BenchError, match="'train.learning_rate'"):
        user_spaces(["train.learning_rate=1e-3"], None, ["lstm"], ["copy"], catalog)


def test_bad_space_entry_syntax(catalog: dict[str, Any]) -> None:
    for item in ("model.hidden_size", "model.hidden_size=", "=32,64"):
        with pytest.raises(BenchError, match=f"Invalid --space '{item}': expected KEY=a,b,c"):
            user_spaces([item], None, ["lstm"], ["copy"], catalog)


def test_bad_value_in_an_entry_is_reported(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="Invalid search space for train.lr: a log range needs LOW > 0"):
        user_spaces(["train.lr=0..1:log"], None, ["lstm"], ["copy"], catalog)


def test_space_file_tables_apply_to_their_model(catalog: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('"train.batch_size" = [32, 64]\n[transformer]\n"model.n_heads" = [2, 4]\n'
                    '[lstm]\n"train.batch_size" = [16]\n')
    spaces = user_spaces(["train.lr=1e-3,1e-2"], path, ["lstm", "transformer"], ["copy"], catalog)
    lstm, transformer = spaces[("lstm", "copy")], spaces[("transformer", "copy")]
    assert set(lstm) == {"train.batch_size", "train.lr"}
    assert lstm["train.batch_size"].choices == (16,)  # its table over the top-level key
    assert transformer["train.batch_size"].choices == (32, 64)
    assert transformer["model.n_heads"].choices == (2, 4)
    assert transformer["train.lr"].choices == lstm["train.lr"].choices == (1e-3, 1e-2)


def test_space_file_table_of_a_model_not_tuned_is_an_error(catalog: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[gru]\n"model.hidden_size" = [16, 32]\n')
    with pytest.raises(BenchError, match=r"names model 'gru', which is not among the models tuned \(lstm\)"):
        user_spaces([], path, ["lstm"], ["copy"], catalog)


def test_space_file_table_key_unknown_to_its_model_is_an_error(catalog: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[lstm]\n"model.n_heads" = [2, 4]\n')
    with pytest.raises(BenchError, match="Unknown setting of lstm 'model.n_heads'"):
        user_spaces([], path, ["lstm", "transformer"], ["copy"], catalog)


# --- sample -----------------------------------------------------------------------------


def test_registry_space_is_used() -> None:
    space = models.get_model("lstm").search_space
    values = sample(FixedTrial(LSTM_DEFAULTS), [space], {}, {})
    assert values == LSTM_DEFAULTS
    for trial in asked_trials(10):
        values = sample(trial, [space], {}, {})
        assert set(values) == set(LSTM_DEFAULTS)
        assert values == trial.params  # every value was suggested, under its key
        assert values["model.hidden_size"] in (32, 64, 128, 256)
        assert 1 <= values["model.num_layers"] <= 3
        assert 1e-4 <= values["train.lr"] <= 1e-2


def test_user_dimension_replaces_the_registry_one() -> None:
    space = models.get_model("lstm").search_space
    dims = {"model.hidden_size": parse_dimension("model.hidden_size", "16,24", "int"),
            "train.lr": parse_dimension("train.lr", "0.5..0.6", "float")}
    seen = set()
    for trial in asked_trials(30):
        values = sample(trial, [space], dims, {})
        assert values["model.hidden_size"] in (16, 24)
        assert 0.5 <= values["train.lr"] <= 0.6
        assert trial.distributions["model.hidden_size"] == CategoricalDistribution((16, 24))
        assert trial.distributions["train.lr"] == FloatDistribution(0.5, 0.6)
        assert set(values) == set(LSTM_DEFAULTS)  # nothing added, nothing lost
        seen.add(values["model.hidden_size"])
    assert seen == {16, 24}


def test_fixed_values_are_returned_not_suggested() -> None:
    space = models.get_model("lstm").search_space
    given = {k: v for k, v in LSTM_DEFAULTS.items() if k != "model.num_layers"}
    # a FixedTrial without model.num_layers raises if it is asked for it
    values = sample(FixedTrial(given), [space], {}, {"model.num_layers": 3})
    assert values == {**given, "model.num_layers": 3}
    (trial,) = asked_trials(1)
    dims = {"model.num_layers": parse_dimension("model.num_layers", "1..2", "int"),
            "model.embed_dim": parse_dimension("model.embed_dim", "8,16", "int")}
    values = sample(trial, [space], dims, {"model.num_layers": 3, "model.embed_dim": 4})
    assert values["model.num_layers"] == 3 and values["model.embed_dim"] == 4  # fixed over a user dimension
    assert "model.num_layers" not in trial.params and "model.embed_dim" not in trial.params
    assert "model.hidden_size" in trial.params


def test_user_dimension_the_registry_lacks_is_added() -> None:
    space = models.get_model("lstm").search_space
    dims = {"model.embed_dim": parse_dimension("model.embed_dim", "8,16", "int"),
            "train.grad_clip": parse_dimension("train.grad_clip", "0.5", "float")}
    values = sample(FixedTrial({**LSTM_DEFAULTS, "model.embed_dim": 16}), [space], dims, {})
    assert values == {**LSTM_DEFAULTS, "model.embed_dim": 16, "train.grad_clip": 0.5}
    (trial,) = asked_trials(1)
    values = sample(trial, [space], dims, {})
    assert values["model.embed_dim"] in (8, 16) and trial.params["model.embed_dim"] == values["model.embed_dim"]
    assert values["train.grad_clip"] == 0.5 and "train.grad_clip" not in trial.params  # fixed by the user


def test_task_space_adds_the_lookback() -> None:
    spaces = [models.get_model("lstm").search_space, tasks.get_task("airline").search_space]
    values = sample(FixedTrial({**LSTM_DEFAULTS, "task.lookback": 36}), spaces, {}, {})
    assert values == {**LSTM_DEFAULTS, "task.lookback": 36}
    for trial in asked_trials(10):
        values = sample(trial, spaces, {}, {})
        assert values["task.lookback"] in (12, 24, 36, 48)
        assert trial.distributions["task.lookback"] == CategoricalDistribution((12, 24, 36, 48))
    # a task without a space of its own adds nothing
    copy_values = sample(FixedTrial(LSTM_DEFAULTS), [spaces[0], tasks.get_task("copy").search_space], {}, {})
    assert copy_values == LSTM_DEFAULTS


def test_user_dimension_replaces_the_task_lookback() -> None:
    spaces = [models.get_model("lstm").search_space, tasks.get_task("airline").search_space]
    dims = {"task.lookback": parse_dimension("task.lookback", "6..8", "int")}
    for trial in asked_trials(10):
        values = sample(trial, spaces, dims, {})
        assert 6 <= values["task.lookback"] <= 8
        assert trial.distributions["task.lookback"] == IntDistribution(6, 8)


def test_model_without_a_space_samples_the_user_dimensions_only() -> None:
    dims = {"model.hidden_size": parse_dimension("model.hidden_size", "16,32", "int")}
    (trial,) = asked_trials(1)
    values = sample(trial, [None, None], dims, {})
    assert list(values) == ["model.hidden_size"] and values["model.hidden_size"] in (16, 32)
    assert sample(trial, [None, None], {}, {}) == {}


def test_model_table_task_key_applies_to_the_tasks_that_have_it(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[lstm]\n"task.lookback" = [12, 24]\n')
    spaces = user_spaces([], path, ["lstm"], ["airline", "copy"], load_catalog())
    assert spaces[("lstm", "airline")]["task.lookback"].choices == (12, 24)
    assert spaces[("lstm", "copy")] == {}


def test_unquoted_dotted_keys_in_the_space_file(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('train.lr = "1e-4..1e-2:log"\n[transformer]\nmodel.n_heads = [2, 4]\n')
    spaces = user_spaces([], path, ["lstm", "transformer"], ["copy"], load_catalog())
    assert spaces[("lstm", "copy")]["train.lr"].log
    assert spaces[("transformer", "copy")]["model.n_heads"].choices == (2, 4)


def test_the_command_line_wins_over_the_space_file(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_text('[lstm]\n"model.hidden_size" = [16]\n')
    spaces = user_spaces(["model.hidden_size=32,64"], path, ["lstm"], ["copy"], load_catalog())
    assert spaces[("lstm", "copy")]["model.hidden_size"].choices == (32, 64)


@pytest.mark.parametrize("text", ["1e-4..1e-2 : log", "1e-4..1e-2: log"])
def test_scale_suffix_may_have_spaces(text: str) -> None:
    assert parse_dimension("train.lr", text, "float").log


def test_empty_scale_suffix_is_refused() -> None:
    with pytest.raises(BenchError, match="LOW..HIGH:log"):
        parse_dimension("train.lr", "1e-4..1e-2:", "float")
