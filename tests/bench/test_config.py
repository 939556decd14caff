"""Run configuration: typed overrides, task references, seeds, budgets and the config hash."""

from __future__ import annotations

import copy
import dataclasses
from typing import Any

import pytest

from bench.catalog import load_catalog, parse_request, parse_seeds, parse_tasks, resolve
from bench.config import PROFILES, Budget, RunConfig, TaskRef, TrainConfig, coerce, fields_of, typed_overrides
from bench.errors import BenchError


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return load_catalog()


def request(catalog: dict[str, Any], models: str = "lstm", tasks: str = "copy", seeds: str = "0",
            profile: str = "tiny", settings: list[str] | None = None) -> Any:
    return parse_request(models, tasks, seeds, profile, settings or [], catalog)


# --- values and overrides --------------------------------------------------------------


def test_coerce_parses_declared_types() -> None:
    assert coerce("16", "int", "k") == 16 and isinstance(coerce("16", "int", "k"), int)
    assert coerce("1e-3", "float", "k") == pytest.approx(1e-3)
    assert isinstance(coerce("2", "float", "k"), float)
    assert coerce("yes", "bool", "k") is True and coerce("off", "bool", "k") is False
    assert coerce("abc", "str", "k") == "abc"
    assert coerce("none", "int | None", "k") is None
    assert coerce("7", "int | None", "k") == 7
    with pytest.raises(BenchError, match="Invalid value for k: '1.5' is not int"):
        coerce("1.5", "int", "k")
    with pytest.raises(BenchError, match="is not float"):
        coerce("fast", "float", "k")
    with pytest.raises(BenchError, match="is not bool"):
        coerce("maybe", "bool", "k")


def test_set_overrides_are_typed(catalog: dict[str, Any]) -> None:
    req = request(catalog, settings=["model.hidden_size=16", "model.dropout=0.25", "train.lr=1e-3",
                                     "train.batch_size=32", "budget.max_steps=5", "budget.max_time_s=10"])
    assert req.model_overrides == {"hidden_size": 16, "dropout": 0.25}
    assert isinstance(req.model_overrides["hidden_size"], int)
    assert req.train_overrides == {"lr": 1e-3, "batch_size": 32}
    assert req.budget_overrides == {"max_steps": 5, "max_time_s": 10.0}
    (config,) = resolve(req)
    assert config.model_params["hidden_size"] == 16
    assert config.train["lr"] == 1e-3 and config.train["batch_size"] == 32
    assert config.budget["max_steps"] == 5
    assert config.budget["patience"] == PROFILES["tiny"].patience  # the rest from the profile


def test_unknown_set_key_names_the_valid_keys(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError) as err:
        request(catalog, settings=["model.hiden_size=16"])
    message = str(err.value)
    assert "hiden_size" in message and "Did you mean: hidden_size" in message
    for key in ("hidden_size", "num_layers", "dropout", "embed_dim"):
        assert key in message.split("Available:")[1]
    with pytest.raises(BenchError, match="Available: .*batch_size.*lr"):
        request(catalog, settings=["train.learning_rate=1"])
    with pytest.raises(BenchError, match="max_steps"):
        request(catalog, settings=["budget.steps=1"])


def test_set_key_must_exist_for_every_selected_model(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="parameter of model transformer"):
        request(catalog, models="lstm,transformer", settings=["model.hidden_size=16"])


def test_bad_set_syntax_and_types(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="Invalid value for model hidden_size: 'big' is not int"):
        request(catalog, settings=["model.hidden_size=big"])
    with pytest.raises(BenchError, match="train lr"):
        request(catalog, settings=["train.lr=fast"])
    with pytest.raises(BenchError, match="expected model.KEY=VALUE"):
        request(catalog, settings=["hidden_size=16"])
    with pytest.raises(BenchError, match="task parameters go after the task name"):
        request(catalog, settings=["task.delay=5"])
    with pytest.raises(BenchError, match="expected key=value"):
        request(catalog, settings=["model.hidden_size"])


def test_out_of_range_values_are_refused_when_resolving(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="Invalid hyper-parameters for model lstm: hidden_size=-4"):
        resolve(request(catalog, settings=["model.hidden_size=-4"]))
    with pytest.raises(BenchError, match="batch sizes"):
        resolve(request(catalog, settings=["train.batch_size=0"]))
    with pytest.raises(BenchError, match="max_steps"):
        resolve(request(catalog, settings=["budget.max_steps=0"]))
    with pytest.raises(BenchError, match="delay=-5"):
        resolve(request(catalog, tasks="copy:delay=-5"))


def test_unknown_profile(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="Unknown profile 'tiyn'. Did you mean: tiny"):
        request(catalog, profile="tiyn")


def test_train_and_budget_validation() -> None:
    with pytest.raises(ValueError):
        TrainConfig(lr=0)
    with pytest.raises(ValueError):
        TrainConfig(eval_batch_size=0)
    with pytest.raises(ValueError):
        dataclasses.replace(PROFILES["tiny"], patience=0)
    with pytest.raises(ValueError):
        dataclasses.replace(PROFILES["tiny"], max_time_s=0)
    with pytest.raises(ValueError, match=r"min_steps \(9\) exceeds max_steps \(8\)"):
        dataclasses.replace(PROFILES["tiny"], min_steps=9)
    with pytest.raises(ValueError):
        dataclasses.replace(PROFILES["tiny"], min_steps=-1)
    assert set(PROFILES) == {"tiny", "quick", "standard", "full"}
    assert fields_of(Budget)["max_time_s"]["type"] == "float"
    assert fields_of(TrainConfig)["batch_size"] == {"type": "int", "default": 64}


def test_typed_overrides_error_names_owner() -> None:
    with pytest.raises(BenchError, match="Unknown parameter of task copy 'dellay'. Did you mean: delay"):
        typed_overrides({"dellay": "5"}, {"delay": {"type": "int"}}, "task copy")


# --- task references -------------------------------------------------------------------


def test_task_with_parameters(catalog: dict[str, Any]) -> None:
    (ref,) = parse_tasks("copy:delay=200", catalog)
    assert ref == TaskRef("copy", "", {"delay": 200})
    assert isinstance(ref.params["delay"], int)
    assert ref.label == "copy:delay=200"
    (ref,) = parse_tasks("adding:length=50:n_train=100", catalog)
    assert ref.params == {"length": 50, "n_train": 100}


def test_task_variant(catalog: dict[str, Any]) -> None:
    (ref,) = parse_tasks("copy:T200", catalog)
    assert ref == TaskRef("copy", "T200", {})
    assert ref.label == "copy:T200"
    (config,) = resolve(request(catalog, tasks="copy:T200"))
    assert config.task_params["delay"] == 200
    (config,) = resolve(request(catalog, tasks="copy:T200:delay=7"))
    assert config.task_params["delay"] == 7  # an explicit parameter wins over the variant


def test_unknown_variant(catalog: dict[str, Any]) -> None:
    pattern = "Unknown variant of task copy 'T300'. Did you mean: .*T200.*Available: T200, T500"
    with pytest.raises(BenchError, match=pattern):
        parse_tasks("copy:T300", catalog)
    with pytest.raises(BenchError, match="two variants"):
        parse_tasks("copy:T200:T500", catalog)


def test_task_parameter_errors(catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError) as err:
        parse_tasks("copy:dely=5", catalog)
    assert "Did you mean: delay" in str(err.value)
    assert "n_train" in str(err.value)
    with pytest.raises(BenchError, match="Invalid value for task copy delay: 'long' is not int"):
        parse_tasks("copy:delay=long", catalog)


def test_several_tasks_and_all(catalog: dict[str, Any]) -> None:
    refs = parse_tasks("copy,adding:length=20,copy", catalog)
    assert [r.label for r in refs] == ["copy", "adding:length=20"]
    assert [r.name for r in parse_tasks("all", catalog)] == list(catalog["tasks"])
    with pytest.raises(BenchError) as err:
        parse_tasks("cpy,addng", catalog)
    assert "'cpy'" in str(err.value) and "'addng'" in str(err.value)


# --- seeds -----------------------------------------------------------------------------


@pytest.mark.parametrize(("spec", "seeds"), [
    ("0", [0]), ("0,1,2", [0, 1, 2]), ("0-3", [0, 1, 2, 3]), ("5, 1-2", [5, 1, 2]), ("1,1,0-1", [1, 0]),
])
def test_parse_seeds(spec: str, seeds: list[int]) -> None:
    assert parse_seeds(spec) == seeds


@pytest.mark.parametrize("spec", ["", "a", "0,b", "1-", "1-x", "3-1", ",", "1.5"])
def test_parse_seeds_rejects_bad_input(spec: str) -> None:
    with pytest.raises(BenchError, match="Invalid seeds"):
        parse_seeds(spec)


def test_parse_seeds_rejects_negative_seeds() -> None:
    """A negative seed cannot seed anything (Lightning's seed_everything refuses it, so each
    run would fail after it was recorded): it must be an input error, like any bad seed."""
    with pytest.raises(BenchError, match="Invalid seeds"):
        parse_seeds("-1")


# --- the configuration hash ------------------------------------------------------------


def test_config_hash_is_stable_for_equal_configs(catalog: dict[str, Any]) -> None:
    (a,) = resolve(request(catalog, tasks="copy:delay=5", settings=["model.hidden_size=16"]))
    (b,) = resolve(request(catalog, tasks="copy:delay=5", settings=["model.hidden_size=16"]))
    assert a is not b and a == b
    assert a.config_hash == b.config_hash
    assert len(a.config_hash) == 16
    rebuilt = RunConfig(**{f.name: copy.deepcopy(getattr(a, f.name)) for f in dataclasses.fields(a)})
    assert rebuilt.config_hash == a.config_hash


@pytest.mark.parametrize("change", [
    {"tasks": "copy:delay=6"},
    {"settings": ["model.hidden_size=17"]},
    {"settings": ["model.hidden_size=16", "train.lr=0.01"]},
    {"settings": ["model.hidden_size=16", "budget.max_steps=9"]},
    {"seeds": "1"},
    {"profile": "quick"},
    {"models": "gru"},
])
def test_config_hash_changes_with_any_setting(catalog: dict[str, Any], change: dict[str, Any]) -> None:
    base = {"tasks": "copy:delay=5", "settings": ["model.hidden_size=16"]}
    (a,) = resolve(request(catalog, **base))
    (b,) = resolve(request(catalog, **{**base, **change}))
    assert a != b
    assert a.config_hash != b.config_hash


def test_config_hash_ignores_the_order_of_task_parameters(catalog: dict[str, Any]) -> None:
    """``copy:delay=5:n_train=64`` and ``copy:n_train=64:delay=5`` are the same run: the configs
    compare equal, so they must hash the same (else a finished run is not found and is rerun)."""
    (a,) = resolve(request(catalog, tasks="copy:delay=5:n_train=64"))
    (b,) = resolve(request(catalog, tasks="copy:n_train=64:delay=5"))
    assert a == b
    assert a.config_hash == b.config_hash


def test_flat_config_has_every_setting(catalog: dict[str, Any]) -> None:
    (config,) = resolve(request(catalog, tasks="copy:delay=5"))
    flat = config.flat()
    for key in ("model", "task", "seed", "profile", "task_version", "model.hidden_size", "task.delay",
                "train.lr", "train.eval_batch_size", "budget.max_steps", "budget.patience"):
        assert key in flat, key
    assert flat["task.delay"] == 5 and flat["model"] == "lstm" and flat["task"] == "copy"


def test_min_steps_at_zero_keeps_a_configurations_identity() -> None:
    """Runs recorded before budget.min_steps existed watched every validation: at 0 the setting
    changes neither params nor hashes."""
    def config(**budget: int) -> RunConfig:
        return RunConfig(model="lstm", task=TaskRef("copy"), seed=0, profile="tiny", model_params={},
                         task_params={}, train={}, budget={"max_steps": 8, **budget})

    assert config(min_steps=0).config_hash == config().config_hash
    assert "budget.min_steps" not in config(min_steps=0).flat()
    assert config(min_steps=4).config_id != config().config_id


def test_causal_task_refuses_bidirectional_models(catalog: dict[str, Any]) -> None:
    causal = copy.deepcopy(catalog)
    causal["tasks"]["copy"]["causal"] = True
    req = parse_request("lstm,bilstm,bigru,transformer", "copy:delay=5", "0", "tiny", [], causal)
    refused = {(m, t) for m, t, _ in req.refused}
    assert refused == {("bilstm", "copy:delay=5"), ("bigru", "copy:delay=5")}
    assert all("bidirectional" in reason for _, _, reason in req.refused)
    assert [m for m, _ in req.pairs()] == ["lstm", "transformer"]
    assert [c.model for c in resolve(req)] == ["lstm", "transformer"]
    # the same request on the non-causal task refuses nothing
    req = parse_request("lstm,bilstm,bigru,transformer", "copy:delay=5", "0", "tiny", [], catalog)
    assert req.refused == [] and len(req.pairs()) == 4
