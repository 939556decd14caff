"""What is registered, without importing torch: names, descriptions, parameters.

``bench list``, ``bench --help`` and input errors must answer in about a second, but
model and task files import torch (1-2 s here, more on a cold disk). So the first
process that imports the registries writes a JSON catalog of them to a cache,
keyed by a hash of the source files; later processes read that instead. Editing or
adding a model or task file changes the key, and the catalog is rebuilt.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bench
from bench.config import (
    PROFILES,
    Budget,
    RunConfig,
    TaskRef,
    TrainConfig,
    family_neutral,
    fields_of,
    parse_assignments,
    typed_overrides,
)
from bench.errors import BenchError
from bench.registry import select_names, unknown_message
from bench.sizes import check_run_count

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("models", "tasks")


def cache_dir() -> Path:
    if os.environ.get("SEQBENCH_CACHE_DIR"):
        return Path(os.environ["SEQBENCH_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "seqbench"


def source_key() -> str:
    h = hashlib.sha256(f"{bench.__version__} {sys.version_info[:2]}".encode())
    files = [Path(__file__), ROOT / "bench" / "config.py"]
    for pkg in SOURCES:
        files += sorted((ROOT / pkg).glob("*.py"))
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:20]


def build_catalog() -> dict[str, Any]:
    """Import the registries (and torch) and describe every model and task."""
    import models
    import tasks

    catalog: dict[str, Any] = {"models": {}, "tasks": {}}
    for name in models.MODELS:
        spec = models.get_model(name)
        params = None  # a predictor's size depends on the task
        if not spec.predictor:
            one = models.InputSpec(n_features=1, frame=(1, 1) if "frames" in spec.inputs else None)
            params = sum(p.numel() for p in spec.build(one, spec.make_hparams(), False).parameters())
        catalog["models"][name] = {
            "description": spec.description,
            "bidirectional": spec.bidirectional,
            "outputs": sorted(spec.outputs),
            "inputs": sorted(spec.inputs),
            "baseline": spec.predictor,
            "tunable": spec.search_space is not None,
            "params_1_feature": params,
            "hparams": {k: {**v, "default": spec.default_hparams()[k]} for k, v in fields_of(spec.hparams).items()},
            "train_defaults": spec.train_defaults,
        }
    for name in tasks.TASKS:
        cls = tasks.get_task(name)
        task = cls(cls.make_params())
        catalog["tasks"][name] = {
            "description": cls.description,
            "version": cls.version,
            "causal": cls.causal,
            "input": cls.input_kind,
            "frames": cls.frames,
            "primary_metric": cls.primary_metric,
            "higher_is_better": cls.higher_is_better,
            "output": task.output.kind,
            "params": fields_of(cls.Params),
            "variants": cls.variants,
            "files": [dataclasses.asdict(f) for f in task.files()],
        }
    return catalog


def load_catalog(use_cache: bool = True) -> dict[str, Any]:
    path = cache_dir() / f"catalog-{source_key()}.json"
    if use_cache and path.is_file():
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            pass
    catalog = build_catalog()
    try:  # a cache we cannot write only costs speed
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as tmp:
            json.dump(catalog, tmp)
        os.replace(tmp.name, path)
    except OSError:
        pass
    return catalog


@dataclass
class Request:
    """A sweep as asked on the CLI, checked against the catalog (names, keys, types)."""

    models: list[str]
    tasks: list[TaskRef]
    seeds: list[int]
    profile: str
    model_overrides: dict[str, Any] = field(default_factory=dict)
    train_overrides: dict[str, Any] = field(default_factory=dict)
    budget_overrides: dict[str, Any] = field(default_factory=dict)
    refused: list[tuple[str, str, str]] = field(default_factory=list)  # (model, task label, reason)
    baselines: dict[str, list[str]] = field(default_factory=dict)  # task label -> baselines added to it
    # resolve() refuses a run too large for this machine (bench.sizes). parse_request, the CLI's
    # way in, turns it on unless --allow-large; a Request made in code (tests, benchmarks) is trusted.
    limit_sizes: bool = False

    def pairs(self) -> list[tuple[str, TaskRef]]:
        """Each task's requested models, then the baselines added to it."""
        refused = {(m, t) for m, t, _ in self.refused}
        return [(m, t) for t in self.tasks
                for m in [*self.models, *self.baselines.get(t.label, [])] if (m, t.label) not in refused]


def parse_tasks(spec: str, catalog: dict[str, Any]) -> list[TaskRef]:
    """``copy,adding:length=200,copy:T500`` -> task references with typed parameters."""
    known = catalog["tasks"]
    items = [s.strip() for s in spec.split(",") if s.strip()]
    select_names("task", [i.split(":", 1)[0] for i in items], known)  # reports every unknown at once
    refs: list[TaskRef] = []
    for item in items:
        name, *parts = item.split(":")
        expanded = select_names("task", name, known)
        variant, assigned = "", []
        for part in parts:
            if "=" in part:
                assigned.append(part)
            elif variant:
                raise BenchError(f"Task '{item}' names two variants ('{variant}' and '{part}')")
            else:
                variant = part
        for task in expanded:
            info = known[task]
            if variant and variant not in info["variants"]:
                raise BenchError(unknown_message(f"variant of task {task}", variant, info["variants"]))
            params = typed_overrides(parse_assignments(assigned, "task parameter"), info["params"], f"task {task}")
            ref = TaskRef(task, variant, params)
            if ref not in refs:
                refs.append(ref)
    return refs


def seed_ranges(spec: str) -> list[range]:
    """``0,1,2`` or ``0-4`` (inclusive) -> the ranges given, checked but not expanded (so a
    range of a billion seeds can be counted and refused); each seed in [0, 2**32) as Lightning
    needs."""
    ranges: list[range] = []
    for part in spec.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = (int(x) for x in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                ranges.append(range(lo, hi + 1))
            elif part:
                ranges.append(range(int(part), int(part) + 1))
        except ValueError:
            raise BenchError(f"Invalid seeds '{spec}': expected e.g. 0,1,2 or 0-4") from None
    if not ranges:
        raise BenchError(f"Invalid seeds '{spec}': no seed given")
    bad = [r for r in ranges if not (0 <= r.start and r.stop <= 2**32)]
    if bad:
        seed = bad[0].start if bad[0].start < 0 else bad[0].stop - 1
        raise BenchError(f"Invalid seeds '{spec}': {seed} is out of range; seeds must be in [0, 2**32)")
    return ranges


def count_seeds(ranges: list[range]) -> int:
    """Distinct seeds in ``ranges``, counted without expanding them."""
    count, end = 0, 0
    for r in sorted(ranges, key=lambda r: r.start):
        start = max(r.start, end)
        if r.stop > start:
            count += r.stop - start
        end = max(end, r.stop)
    return count


def expand_seeds(ranges: list[range]) -> list[int]:
    return list(dict.fromkeys(seed for r in ranges for seed in r))  # in the order given, each once


def parse_seeds(spec: str) -> list[int]:
    """``0,1,2`` or ``0-4`` (inclusive) -> seeds, in the order given, each once."""
    return expand_seeds(seed_ranges(spec))


def parse_request(
    models: str, tasks: str, seeds: str, profile: str, settings: list[str], catalog: dict[str, Any],
    baselines: bool = False, allow_large: bool = False,
) -> Request:
    """The sweep asked for. With ``baselines``, every baseline that serves a task is added to
    it (they take seconds), so each leaderboard shows what the sequence models add. A sweep of
    more runs than ``bench.sizes.MAX_RUNS``, or (in ``resolve``) a run larger than this
    machine's memory, is refused unless ``allow_large``."""
    model_names = select_names("model", models, catalog["models"])
    task_refs = parse_tasks(tasks, catalog)
    if profile not in PROFILES:
        raise BenchError(unknown_message("profile", profile, PROFILES))
    groups: dict[str, list[str]] = {"model": [], "train": [], "budget": []}
    for item in settings:
        group, dot, rest = item.partition(".")
        if not dot or group not in groups:
            raise BenchError(
                f"Invalid --set '{item}': expected model.KEY=VALUE, train.KEY=VALUE or budget.KEY=VALUE "
                "(task parameters go after the task name: --tasks copy:delay=200)"
            )
        groups[group].append(rest)
    model_raw = parse_assignments(groups["model"], "--set model")
    for key in model_raw:
        lacking = [m for m in model_names if key not in catalog["models"][m]["hparams"]]
        if lacking:
            m = lacking[0]
            raise BenchError(unknown_message(f"parameter of model {m}", key, catalog["models"][m]["hparams"]))
    model_overrides = typed_overrides(model_raw, catalog["models"][model_names[0]]["hparams"], "model")
    train = typed_overrides(parse_assignments(groups["train"], "--set train"), fields_of(TrainConfig), "train")
    budget = typed_overrides(parse_assignments(groups["budget"], "--set budget"), fields_of(Budget), "budget")
    seed_list = seed_ranges(seeds)
    request = Request(model_names, task_refs, [], profile, model_overrides, train, budget,
                      limit_sizes=not allow_large)
    for t in task_refs:
        for m in model_names:
            reason = refusal(m, catalog["models"][m], catalog["tasks"][t.name])
            if reason:
                request.refused.append((m, t.label, reason))
        if baselines:
            request.baselines[t.label] = [
                m for m, info in catalog["models"].items()
                if info["baseline"] and m not in model_names and not refusal(m, info, catalog["tasks"][t.name])
            ]
    check_run_count(len(request.pairs()), count_seeds(seed_list), seeds, allow_large)
    request.seeds = expand_seeds(seed_list)
    return request


OUTPUT_WORDS = {"class_per_sequence": "a class per sequence", "class_per_step": "a class per step",
                "values": "real values", "forecast": "forecasts"}


def refusal(name: str, model: dict[str, Any], task: dict[str, Any]) -> str:
    """Why this model cannot serve this task ('' when it can). The reason speaks of the
    model, so one line can name every task that refuses it for that reason."""
    if task["causal"] and model["bidirectional"]:
        return f"{name} is bidirectional (reads later steps), and causal tasks refuse it"
    if task["output"] not in model["outputs"]:
        return f"{name} gives {' or '.join(OUTPUT_WORDS[o] for o in model['outputs'])} only"
    readable = {task["input"], "frames"} if task.get("frames") else {task["input"]}
    if not readable & set(model["inputs"]):
        return f"{name} reads {' or '.join(model['inputs'])} only"
    return ""


def combine_recipe(task_cls: Any, params: Any, spec: Any, request: Request,
                   requested: bool) -> tuple[TrainConfig, Budget]:
    """Training settings and budget of one (model, task) pair, in order of precedence: the
    defaults and the profile, the task's recipe, the model family's defaults, then --set
    (``train.*`` only for the models asked for). A baseline that gives the task's output itself
    keeps its own behaviour: the task's window normalisation is not applied to it."""
    budget = dataclasses.replace(PROFILES[request.profile], **request.budget_overrides)
    recipe = task_cls.recipe(params, dataclasses.asdict(budget))
    task_budget = {k[7:]: v for k, v in recipe.items() if k.startswith("budget.")}
    budget = dataclasses.replace(PROFILES[request.profile], **{**task_budget, **request.budget_overrides})
    task_train = {k[6:]: v for k, v in recipe.items() if k.startswith("train.")}
    if spec.predictor:
        task_train.pop("window_norm", None)
    train = TrainConfig(**{**task_train, **spec.train_defaults, **(request.train_overrides if requested else {})})
    if train.window_norm != "none" and task_cls(params).output.kind != "forecast":
        raise ValueError(f"train.window_norm={train.window_norm} applies to forecasting tasks only")
    return train, budget


def pair_label(model: str, ref: TaskRef, request: Request, requested: bool) -> str:
    """``lstm × copy:delay=5 with --set model.hidden_size=64``: a pair and the settings given."""
    given = {f"model.{k}": v for k, v in request.model_overrides.items()} if requested else {}
    given.update({f"train.{k}": v for k, v in request.train_overrides.items()} if requested else {})
    settings = " ".join(f"--set {k}={v}" for k, v in given.items())
    return f"{model} × {ref.label}" + (f" with {settings}" if settings else "")


def resolve(request: Request) -> list[RunConfig]:
    """Every run of a request, fully resolved; invalid values raise a one-line BenchError."""
    import models
    import tasks
    from bench.sizes import check_run

    configs = []
    for model, ref in request.pairs():
        spec = models.get_model(model)
        task_cls = tasks.get_task(ref.name)
        try:
            requested = model in request.models  # --set model.* and train.* are for the models asked for
            hp = spec.make_hparams(**(request.model_overrides if requested else {}))
        except (ValueError, TypeError) as e:
            raise BenchError(f"Invalid hyper-parameters for model {model}: {e}") from None
        try:
            params = task_cls.make_params(**{**task_cls.variants.get(ref.variant, {}), **ref.params})
            train, budget = combine_recipe(task_cls, params, spec, request, requested)
        except (ValueError, TypeError) as e:
            raise BenchError(f"Invalid settings for {model} × {ref.label}: {e}") from None
        if request.limit_sizes:  # before any data is generated and anything is written
            check_run(spec, hp, task_cls, params, train, pair_label(model, ref, request, requested))
        for seed in request.seeds:
            configs.append(
                RunConfig(
                    model=model,
                    task=ref,
                    seed=seed,
                    profile=request.profile,
                    model_params=dataclasses.asdict(hp),
                    task_params=dataclasses.asdict(params),
                    train=dataclasses.asdict(train),
                    budget=dataclasses.asdict(budget),
                    task_version=task_cls.version,
                    model_neutral=family_neutral(spec),
                )
            )
    return configs

