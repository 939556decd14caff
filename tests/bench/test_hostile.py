"""Hostile input: whatever is typed or put in a file, the parsers return a value or raise a
one-line BenchError (the CLI's ``error: …`` and exit 2), never another exception, a
MemoryError or a hang; and a sweep or a run too large for this machine is refused before
any data is generated or anything is written, unless --allow-large."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import bench.sizes
from bench.catalog import Request, count_seeds, expand_seeds, load_catalog, parse_request, resolve, seed_ranges
from bench.cli import main, parse_duration, parse_since
from bench.errors import BenchError
from bench.space import read_space_file, user_spaces
from tests.conftest import REPO_ROOT

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
COPY_SMALL = "copy:delay=5:n_train=64:n_val=32:n_test=32"


@pytest.fixture(scope="module")
def catalog() -> dict[str, Any]:
    return load_catalog()


@functools.cache
def the_catalog() -> dict[str, Any]:
    """The catalog, for the fuzz tests (a fixture's value would be printed with every failing example)."""
    return load_catalog()


def bench_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed command, as a user runs it (the environment as conftest set it: offline,
    a scratch catalog cache)."""
    return subprocess.run([sys.executable, "-m", "bench", *argv], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "COLUMNS": "200"})


def assert_refused(code: int, out: str, err: str, results: Path, *needles: str) -> str:
    """Exit 2, one ``error:`` line naming ``needles``, no traceback, and nothing written."""
    assert code == 2, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"
    assert "Traceback" not in out + err and "MemoryError" not in out + err
    assert not results.exists(), f"bad input must write nothing, found {sorted(results.rglob('*'))}"
    return lines[0]


# --- a. the space file: any bytes ------------------------------------------------------


def test_non_utf8_space_file_is_one_line_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_bytes(b'"train.lr" = [0.001]\n# caf\xe9\n')
    with pytest.raises(BenchError, match="not UTF-8") as err:
        read_space_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("content", [b"a = " + b"[" * 100_000, b"\x00\x01", b"[\"*\"]\nx = 1\n",
                                     b"x" * 1_000_001], ids=["deep", "binary", "star-table", "huge"])
def test_other_hostile_space_files(content: bytes, tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_bytes(content)
    with pytest.raises(BenchError, match="Invalid space file"):
        read_space_file(path)


def test_bench_tune_with_non_utf8_space_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "space.toml"
    path.write_bytes(b"\xff\xfe\x00[lstm]\n")
    results = tmp_path / "results"
    proc = bench_cli("tune", "--models", "lstm", "--tasks", COPY_SMALL, "--space-file", str(path),
                     "--results", str(results))
    assert_refused(proc.returncode, proc.stdout, proc.stderr, results, str(path), "UTF-8")


def test_bad_train_values_in_a_search_space_are_input_errors(catalog: dict[str, Any]) -> None:
    for entry in ("train.schedule=cosine,sometimes", "train.lr=-1..1", "train.lr_warmup=0.5..1"):
        with pytest.raises(BenchError, match="Invalid search space for train"):
            user_spaces([entry], None, ["lstm"], ["copy"], catalog)


# --- b. the number of runs -------------------------------------------------------------


@pytest.mark.parametrize("seeds", ["0-999999", "0-99999999", "0-4294967295"])
def test_a_huge_seed_range_is_refused_without_expanding_it(seeds: str, catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError) as err:
        parse_request("lstm", "copy", seeds, "tiny", [], catalog)
    message = str(err.value)
    runs = int(seeds.split("-")[1]) + 1
    assert f"{runs:,} runs" in message and "--allow-large" in message


def test_allow_large_lets_a_large_sweep_through_up_to_a_hard_limit(catalog: dict[str, Any]) -> None:
    request = parse_request("lstm", "copy", "0-19999", "tiny", [], catalog, allow_large=True)
    assert len(request.seeds) == 20_000 and request.seeds[-1] == 19_999
    with pytest.raises(BenchError, match="even with --allow-large"):
        parse_request("lstm", "copy", "0-99999999", "tiny", [], catalog, allow_large=True)
    # runs are pairs × seeds: baselines count
    with pytest.raises(BenchError, match=r"20,000 runs \(2 model × task pairs × 10,000 seeds"):
        parse_request("lstm", "copy", "0-9999", "tiny", [], catalog, baselines=True)


@given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=1, max_size=6))
@FUZZ
def test_seed_count_without_expanding_matches_the_expansion(bounds: list[tuple[int, int]]) -> None:
    spec = ",".join(f"{lo}-{lo + n}" if n else str(lo) for lo, n in bounds)
    ranges = seed_ranges(spec)
    assert count_seeds(ranges) == len(set(expand_seeds(ranges)))


def test_bench_run_with_a_hundred_million_seeds_exits_2_at_once(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = bench_cli("run", "--models", "lstm", "--tasks", COPY_SMALL, "--seeds", "0-99999999", "--no-baselines",
                     "--results", str(results))
    assert_refused(proc.returncode, proc.stdout, proc.stderr, results, "100,000,000 runs", "--seeds")


# --- c. the size of one run ------------------------------------------------------------


def test_bench_run_with_a_huge_hidden_size_exits_2_before_anything_runs(tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = bench_cli("run", "--models", "lstm", "--tasks", COPY_SMALL, "--set", "model.hidden_size=100000000",
                     "--no-baselines", "--results", str(results))
    assert_refused(proc.returncode, proc.stdout, proc.stderr, results, "model.hidden_size=100000000", "parameters",
                   "available", "--allow-large")


def test_bench_run_with_a_huge_copy_delay_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    results = tmp_path / "results"
    code = main(["run", "--models", "lstm", "--tasks", "copy:delay=100000000", "--no-baselines", "--results",
                 str(results)])
    out, err = capsys.readouterr()
    assert_refused(code, out, err, results, "copy:delay=100000000", "generated data", "--allow-large")


@pytest.mark.parametrize(("tasks", "settings", "named"), [
    ("copy:alphabet=100000000", [], "alphabet=100000000"),  # the embedding and the per-step output
    ("airline:lookback=100000000", [], "lookback=100000000"),  # the look-back window
    ("etth1:horizon=1000000000", [], "horizon=1000000000"),  # the forecast head
    ("imdb:vocab_size=1000000000", [], "vocab_size=1000000000"),  # real data: sized by the vocabulary cap
    (COPY_SMALL, ["model.num_layers=1000000"], "num_layers=1000000"),  # deep: counted from 1 and 2 layers
    (COPY_SMALL, ["train.loader_workers=100000"], "loader_workers=100000"),
])
def test_sizes_past_the_machine_are_refused_up_front(tasks: str, settings: list[str], named: str,
                                                     catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError, match="--allow-large") as err:
        resolve(parse_request("lstm", tasks, "0", "tiny", settings, catalog))
    assert named in str(err.value) and "\n" not in str(err.value)
    # --allow-large lets each through (the run may then fail: a failed run, recorded)
    assert len(resolve(parse_request("lstm", tasks, "0", "tiny", settings, catalog, allow_large=True))) == 1


def test_a_batch_larger_than_the_data_is_not_refused(catalog: dict[str, Any]) -> None:
    """No training batch is larger than the training split (here 64 sequences)."""
    assert len(resolve(parse_request("lstm", COPY_SMALL, "0", "tiny", ["train.batch_size=100000000"], catalog))) == 1


def test_the_limit_is_the_memory_available(monkeypatch: pytest.MonkeyPatch, catalog: dict[str, Any]) -> None:
    """The default copy task generates 12,000 sequences of 120 steps (23 MB): refused with 10 MB
    available, run with 100 MB."""
    request = parse_request("lstm", "copy", "0", "tiny", [], catalog)
    monkeypatch.setattr(bench.sizes, "available_bytes", lambda: 10_000_000)
    with pytest.raises(BenchError, match=r"23 MB.*more than the 10 MB available"):
        resolve(request)
    monkeypatch.setattr(bench.sizes, "available_bytes", lambda: 100_000_000)
    assert len(resolve(request)) == 1


def test_a_request_made_in_code_is_not_size_checked() -> None:
    from bench.config import TaskRef

    request = Request(["lstm"], [TaskRef("copy", "", {"delay": 100_000_000})], [0], "tiny")
    assert len(resolve(request)) == 1


def real_parameter_count(model: str, task_name: str, hparams: dict[str, Any]) -> int:
    import models
    import tasks
    from bench.module import Head

    spec, cls = models.get_model(model), tasks.get_task(task_name)
    shape = cls.data_shape(cls.make_params())
    task = cls(cls.make_params())
    out = task.output
    module = spec.instantiate(models.InputSpec(vocab_size=shape.vocab_size, n_features=shape.n_features,
                                               season=shape.season, seq_len=shape.seq_len),
                              spec.make_hparams(**hparams), cls.causal,
                              models.OutputShape(out.kind, out.n_classes, out.shape))
    n = sum(p.numel() for p in module.parameters())
    return n if spec.predictor else n + sum(p.numel() for p in Head(out, module.step_dim, module.summary_dim)
                                            .parameters())


@pytest.mark.parametrize(("model", "task", "hparams"), [
    ("lstm", "copy", {}), ("gru", "adding", {"num_layers": 4}), ("bilstm", "sst2", {"num_layers": 3}),
    ("stacked-gru", "airline", {}), ("lstm-attn", "copy", {"num_layers": 3}),
    ("transformer", "etth1", {"n_layers": 5}), ("transformer", "timemachine", {}), ("linear", "airline", {}),
    ("bow-logreg", "imdb", {}),
])
@pytest.mark.filterwarnings("ignore:Initializing zero-element tensors")  # timemachine's classes: known after setup
def test_parameter_count_on_the_meta_device_is_the_real_one(model: str, task: str, hparams: dict[str, Any]) -> None:
    import models
    import tasks

    spec, cls = models.get_model(model), tasks.get_task(task)
    params = cls.make_params()
    counted, _, _ = bench.sizes.count_parameters(spec, spec.make_hparams(**hparams), cls(params),
                                                 cls.data_shape(params), "test")
    assert counted == real_parameter_count(model, task, hparams)


def test_every_default_pair_passes_the_size_check(catalog: dict[str, Any]) -> None:
    """No false alarm: every model on every task it serves, as registered."""
    configs = resolve(parse_request("all", "all", "0", "quick", [], catalog))
    assert configs


# --- e. fuzzing the parsers ------------------------------------------------------------
# Mostly well-formed input with hostile values, so that examples get past the first check
# (a name, a key) to the values, the sizes and resolve; and some input that is anything at all.

WEIRD_VALUES = ["", " ", "nan", "NaN", "inf", "-inf", "1e309", "-0", "9" * 5000, "1" + "0" * 30, "None", "true",
                "٣", "1_000", " 5 ", "0x10", "🙂", "\x00", "\n", "=", ":", ",", "..", "1..", "..2", "2..1",
                "1..2:log", "-1..1:log", "a,b,", "1e-400", "head", "tail", "S", "cosine", "bf16-mixed"]
NUMBERS = st.one_of(st.integers(-2, 10), st.integers(-(2**70), 2**70), st.sampled_from([2**31, 2**63, 10**8]),
                    st.floats(allow_nan=True, allow_infinity=True))
VALUES = st.one_of(NUMBERS.map(str), NUMBERS.map(str), st.sampled_from(WEIRD_VALUES), st.text(max_size=12))
ANY_TEXT = st.text(max_size=12)


def mostly(valid: st.SearchStrategy[str], *other: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """``valid`` three times in four, so that most examples get past the first check."""
    return st.integers(0, 3).flatmap(lambda i: valid if i else st.one_of(*other))


@st.composite
def task_specs(draw: Any) -> str:
    """``copy:T200:delay=5,adding:length=…``: known names, their variants and parameters, odd values."""
    catalog = the_catalog()["tasks"]
    items = []
    for _ in range(draw(st.integers(1, 2))):
        name = draw(mostly(st.sampled_from(sorted(catalog)), st.sampled_from(["all", "c*", "cpy", "", "[", "copy["]),
                           ANY_TEXT))
        info = catalog.get(name, catalog["copy"])
        parts = [name]
        if draw(st.integers(0, 3)) == 0:
            parts.append(draw(st.sampled_from([*info["variants"], "T9", ""])))
        for _ in range(draw(st.integers(0, 3))):
            key = draw(mostly(st.sampled_from(sorted(info["params"])), st.sampled_from(["", "x", " delay"])))
            parts.append(f"{key}={draw(VALUES)}" if draw(st.integers(0, 5)) else draw(ANY_TEXT))
        items.append(":".join(parts))
    return ",".join(items)


@st.composite
def set_options(draw: Any, models: str) -> list[str]:
    """``--set GROUP.KEY=VALUE`` entries for these models, and some that are anything at all."""
    catalog = the_catalog()
    from bench.config import Budget, TrainConfig, fields_of

    model = catalog["models"].get(models.split(",")[0], catalog["models"]["lstm"])
    keys = ([f"model.{k}" for k in model["hparams"]] + [f"train.{k}" for k in fields_of(TrainConfig)]
            + [f"budget.{k}" for k in fields_of(Budget)] + ["model.x", "task.delay", "model", ".", ""])
    entries = st.tuples(st.sampled_from(keys), VALUES).map("=".join)
    return draw(st.lists(mostly(entries, ANY_TEXT), max_size=3))


SEEDS = mostly(st.integers(0, 2**33).map(str) | st.tuples(NUMBERS, NUMBERS).map(lambda b: f"{b[0]}-{b[1]}"),
                  st.sampled_from(["0", "0-4", "0-999999", "4294967295", "0-4294967296", "-1", "1--2", "3-1", ",",
                                   "1,1,0-1", "9" * 5000, "0-1" + "0" * 30, " 1 - 3 "]),
                  st.text(alphabet="0123456789-, ", max_size=16), ANY_TEXT)

MODELS = mostly(st.sampled_from(["lstm", "transformer", "bigru", "lstm,transformer", "linear", "char-ngram", "all",
                                 "stacked-*"]), st.sampled_from(["lsmt", "", "[", "ls[a-"]), ANY_TEXT)
PROFILES = mostly(st.sampled_from(["tiny", "quick"]), st.sampled_from(["huge", ""]), ANY_TEXT)


def returns_or_bench_error(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except BenchError as e:
        assert "\n" not in str(e), f"a multi-line error: {e!r}"
        return None


@given(data=st.data())
@FUZZ
def test_fuzz_parse_request(data: st.DataObject) -> None:
    models = data.draw(MODELS)
    returns_or_bench_error(parse_request, models, data.draw(task_specs()), data.draw(SEEDS),
                           data.draw(PROFILES), data.draw(set_options(models)),
                           the_catalog(), baselines=data.draw(st.booleans()), allow_large=data.draw(st.booleans()))


@given(data=st.data(), models=st.sampled_from(["lstm", "transformer", "bigru", "lstm-attn", "linear"]),
       tasks=st.sampled_from([COPY_SMALL, "adding:length=10:n_train=64", "copy:T200", "airline", "etth1:S-h96",
                              "sst2"]))
@FUZZ
def test_fuzz_set_and_task_values_through_resolve(data: st.DataObject, models: str, tasks: str) -> None:
    """--set values and task parameters all the way to resolved configurations, size checks included."""
    keys = sorted(the_catalog()["tasks"][tasks.split(":")[0]]["params"])
    extra = data.draw(st.lists(st.tuples(st.sampled_from(keys), VALUES).map("=".join), max_size=2))
    request = returns_or_bench_error(parse_request, models, ":".join([tasks, *extra]), "0", "tiny",
                                     data.draw(set_options(models)), the_catalog())
    if request is not None:
        returns_or_bench_error(resolve, request)


@pytest.mark.parametrize(("tasks", "settings"), [
    (COPY_SMALL, ["model.hidden_size=" + "9" * 30]), (COPY_SMALL, ["model.num_layers=100000000"]),
    ("copy:alphabet=" + "9" * 30, []), ("airline:lookback=" + "9" * 30, []), ("etth1:horizon=" + "9" * 30, []),
])
def test_sizes_past_what_torch_can_hold_are_one_line(tasks: str, settings: list[str],
                                                      catalog: dict[str, Any]) -> None:
    with pytest.raises(BenchError) as err:
        resolve(parse_request("lstm", tasks, "0", "tiny", settings, catalog))
    assert "\n" not in str(err.value)


RANGES = st.tuples(NUMBERS, NUMBERS, st.sampled_from(["", ":log", ":lin", ":"])).map(lambda r: f"{r[0]}..{r[1]}{r[2]}")
SPACE_KEYS = ["model.hidden_size", "model.dropout", "model.n_heads", "train.lr", "train.batch_size",
              "train.schedule", "train.compile", "task.delay", "task.lookback", "model.order", "x"]
TOML_VALUES = st.one_of((VALUES | RANGES).map(lambda v: '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'),
                        NUMBERS.map(str), st.lists(NUMBERS, max_size=3).map(str),
                        st.sampled_from(["[]", "[1, 2]", '["a", 3]', "nan", "inf", "1979-05-27", "{a = 1}",
                                         "[[1], [2]]", "true", "-0.0", "1e308", "99999999999999999999"]))


TABLES = ["lstm", "transformer", "gru", "model", "lstm.model", '"*"', "[lstm]"]


@st.composite
def space_files(draw: Any) -> bytes:
    """TOML-shaped text (tables, dotted keys, odd values), or any bytes at all."""
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    lines = []
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.integers(0, 2))
        if kind == 0:
            lines.append(f"[{draw(st.sampled_from(TABLES))}]")
        else:
            key = draw(st.sampled_from(SPACE_KEYS))
            lines.append(f'"{key}" = {draw(TOML_VALUES)}' if kind == 1 else f"{key} = {draw(TOML_VALUES)}")
    return "\n".join(lines).encode()


@given(entries=st.lists(mostly(st.tuples(st.sampled_from(SPACE_KEYS), VALUES | RANGES).map("=".join), ANY_TEXT),
                        max_size=3),
       content=st.none() | space_files())
@FUZZ
def test_fuzz_space_entries_and_files(entries: list[str], content: bytes | None) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = None
        if content is not None:
            path = Path(tmp) / "space.toml"
            path.write_bytes(content)
        returns_or_bench_error(user_spaces, entries, path, ["lstm", "transformer"], ["copy", "airline"], the_catalog())


@given(st.text(max_size=30) | st.sampled_from(["90", "1h30m", "0", "0s", "9" * 400, "1e5", "٣h", "1.5.2m"]))
@FUZZ
def test_fuzz_parse_duration(text: str) -> None:
    returns_or_bench_error(parse_duration, text)


@given(st.text(max_size=30) | st.sampled_from(["2026-11-01", "2026-11-01T08:30", "12h", "3d", "0001-01-01"]))
@example("9" * 400 + "d")
@FUZZ
def test_fuzz_parse_since(text: str) -> None:
    returns_or_bench_error(parse_since, text)

