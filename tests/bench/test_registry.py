"""The generic registry: unique names, selections with wildcards, errors that say what exists."""

from __future__ import annotations

from typing import Any

import pytest

from bench.errors import BenchError, UnknownNameError
from bench.registry import Registry, select_names, unknown_message
from models import MODELS, get_model
from tasks import TASKS, get_task

NAMES = ["lstm", "gru", "rnn", "bilstm", "stacked-lstm", "stacked-gru"]


def test_unknown_name_suggests_close_match_and_lists_available() -> None:
    with pytest.raises(UnknownNameError) as err:
        get_model("lsmt")
    message = str(err.value)
    assert "Did you mean" in message and "lstm" in message.split("Did you mean")[1].split("?")[0]
    assert "Available:" in message
    for name in MODELS:
        assert name in message.split("Available:")[1]
    assert f"({len(MODELS)} total)" in message
    assert not message.startswith(("'", '"')), "KeyError quoting must not leak into the message"
    assert isinstance(err.value, KeyError) and isinstance(err.value, BenchError)


def test_unknown_name_without_close_match_has_no_hint() -> None:
    message = unknown_message("model", "zzzzzz", NAMES)
    assert "Did you mean" not in message
    assert "Available: bilstm, gru, lstm, rnn, stacked-gru, stacked-lstm (6 total)" in message


def test_unknown_task_lists_tasks() -> None:
    with pytest.raises(UnknownNameError, match="Did you mean: copy") as err:
        get_task("cpoy")
    for name in TASKS:
        assert name in str(err.value)


def test_every_unknown_name_is_reported_at_once() -> None:
    with pytest.raises(UnknownNameError) as err:
        select_names("model", "lsmt,gru,grv,nothing-like-it", NAMES)
    message = str(err.value)
    assert message.count("\n") == 0
    assert message.startswith("Unknown models:")
    assert "'lsmt' (did you mean: lstm" in message
    assert "'grv' (did you mean: gru" in message
    assert "'nothing-like-it'" in message
    assert "'gru'" not in message  # a known name is not a problem
    assert "Available: bilstm, gru, lstm, rnn, stacked-gru, stacked-lstm" in message


def test_wildcards_and_all() -> None:
    assert select_names("model", "stacked-*", NAMES) == ["stacked-lstm", "stacked-gru"]
    assert select_names("model", "*lstm", NAMES) == ["lstm", "bilstm", "stacked-lstm"]
    assert select_names("model", "all", NAMES) == NAMES
    assert select_names("model", "gru,all", NAMES) == ["gru"] + [n for n in NAMES if n != "gru"]
    assert select_names("model", " gru , lstm ,gru", NAMES) == ["gru", "lstm"]  # request order, no duplicates
    assert select_names("model", ["rnn", "?ru"], NAMES) == ["rnn", "gru"]
    with pytest.raises(UnknownNameError, match="'trans\\*' matches no model"):
        select_names("model", "trans*", NAMES)
    with pytest.raises(BenchError, match="No model given"):
        select_names("model", " , ", NAMES)


def test_registry_selects_real_models_and_tasks() -> None:
    assert MODELS.select("stacked-*") == ["stacked-lstm", "stacked-gru"]
    assert MODELS.select("all") == list(MODELS)
    assert MODELS.names("bi*") == ["bilstm", "bigru"]
    assert TASKS.select("all") == list(TASKS)
    assert "lstm" in MODELS and "lsmt" not in MODELS
    assert len(MODELS) == len(list(MODELS))


def test_duplicate_registration_raises_and_keeps_the_first() -> None:
    reg: Registry[int] = Registry("widget")
    reg.add("a", 1)
    with pytest.raises(BenchError, match="Duplicate widget name 'a'"):
        reg.add("a", 2)
    assert reg.get("a") == 1
    reg.remove("a")
    assert "a" not in reg
    reg.add("a", 3)
    assert reg.get("a") == 3


def test_duplicate_of_a_real_model_raises() -> None:
    with pytest.raises(BenchError, match="Duplicate model name 'lstm'"):
        MODELS.add("lstm", get_model("gru"))
    assert get_model("lstm").name == "lstm"


def test_register_fixture_adds_and_removes(register: Any) -> None:
    register(MODELS, "temp-widget-model", get_model("gru"))
    assert "temp-widget-model" in MODELS
    assert "temp-widget-model" in MODELS.select("temp-*")
