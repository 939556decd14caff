"""The ``bench`` command line.

Subcommands map to plain functions. Heavy libraries (torch, Lightning, MLflow) are
imported inside the functions that need them, so ``bench --help``, ``bench list`` and
input errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

import bench
from bench.errors import BenchError

# Wide enough for the summary tables when output goes to a file or a CI log.
console = Console(width=None if sys.stdout.isatty() else 180)
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 180)

ENV_RESULTS = "SEQBENCH_RESULTS"
ENV_STORAGE = "SEQBENCH_STORAGE"  # Optuna study storage (bench.tuning reads the same name)


def results_dir(explicit: str | None) -> Path:
    return Path(explicit or os.environ.get(ENV_RESULTS) or "results").expanduser().resolve()


def cmd_list(args: argparse.Namespace) -> int:
    """Show registered models and tasks."""
    from rich.table import Table

    from bench.catalog import load_catalog
    from tasks.data import resolve_data_dir

    catalog = load_catalog()
    data_dir = resolve_data_dir(args.data_dir)
    if not args.tasks_only:
        table = Table(title="Models", title_justify="left")
        for col in ("name", "params (1 input feature)", "reads future", "serves", "description"):
            table.add_column(col, justify="right" if col.startswith("params") else "left")
        for name, m in catalog["models"].items():
            params = f"{m['params_1_feature']:,}" if m["params_1_feature"] is not None else "per task"
            serves = "any task" if len(m["outputs"]) == 4 else ", ".join(o.replace("_", " ") for o in m["outputs"])
            if m["inputs"] == ["frames"]:
                serves = "tasks of image frames"
            table.add_row(name, params, "yes" if m["bidirectional"] else "no", serves, m["description"])
        console.print(table)
    if not args.models_only:
        table = Table(title=f"Tasks (data directory: {data_dir})", title_justify="left")
        for col in ("name", "output", "primary metric", "causal", "variants", "data", "description"):
            table.add_column(col)
        for name, t in catalog["tasks"].items():
            missing = [f["path"] for f in t["files"] if not (data_dir / f["path"]).is_file()]
            data = "generated" if not t["files"] else ("missing: " + ", ".join(missing) if missing else "present")
            arrow = "↑" if t["higher_is_better"] else "↓"
            variants = ", ".join(f"{k} ({', '.join(f'{a}={b}' for a, b in v.items())})"
                                 for k, v in t["variants"].items())
            table.add_row(name, t["output"].replace("_", " "), f"{t['primary_metric']} {arrow}",
                          "yes" if t["causal"] else "no", variants or "–", data, t["description"])
        console.print(table)
        console.print("Set task parameters after the name: [bold]--tasks copy:delay=200[/], or a variant: "
                      "[bold]--tasks copy:T200[/]; model and training settings with "
                      "[bold]--set model.hidden_size=64 --set train.lr=1e-3[/].")
    return 0


def download_progress() -> Any:
    """A rich progress bar for downloads, and the callback that drives it."""
    from rich.progress import DownloadColumn, Progress, TransferSpeedColumn

    bar = Progress(*Progress.get_default_columns(), DownloadColumn(), TransferSpeedColumn(), console=err_console,
                   transient=True)
    state: dict[str, Any] = {}

    def update(done: int, total: int | None) -> None:
        if "task" not in state:
            state["task"] = bar.add_task("downloading", total=total)
        bar.update(state["task"], completed=done)

    return bar, update


def cmd_data(args: argparse.Namespace) -> int:
    """List the dataset files with their status; verify checksums or fetch what is missing."""
    from rich.table import Table

    from bench.catalog import load_catalog
    from bench.registry import select_names
    from tasks.data import DataFile, ensure, resolve_data_dir, status

    catalog = load_catalog()
    data_dir = resolve_data_dir(args.data_dir)
    names = select_names("task", args.tasks, catalog["tasks"])
    files: dict[str, tuple[DataFile, list[str]]] = {}
    for name in names:
        for f in catalog["tasks"][name]["files"]:
            files.setdefault(f["path"], (DataFile(**f), []))[1].append(name)
    table = Table(title=f"Datasets in {data_dir}", title_justify="left")
    for col in ("file", "tasks", "status", "size MB", "source"):
        table.add_column(col, justify="right" if col == "size MB" else "left")
    problems = 0
    for path, (file, users) in files.items():
        state = "present" if (data_dir / path).is_file() else "missing"
        if args.fetch and state == "missing":
            bar, update = download_progress()
            try:
                with bar:
                    bar.console.print(f"fetching {path} from {file.url}", highlight=False)
                    ensure(file, data_dir, allow_download=True, progress=update)
            except BenchError as e:  # the file could not be had: say why, list it as missing
                err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        if args.verify or args.fetch:
            state = status(file, data_dir)
        problems += state in ("missing", "corrupt")
        size = f"{(data_dir / path).stat().st_size / 1e6:.1f}" if (data_dir / path).is_file() else "–"
        colour = {"verified": "green", "present": "green", "corrupt": "red", "missing": "yellow"}[state]
        table.add_row(path, ", ".join(users), f"[{colour}]{state}[/]", size, file.url)
    console.print(table)
    if not (args.verify or args.fetch):
        console.print("Checksums are verified on first use; --verify checks them now, "
                      "--fetch downloads what is missing.")
    return 1 if problems and (args.verify or args.fetch) else 0


def check_data(request: Any, catalog: dict[str, Any], data_dir: Path) -> list[str]:
    """Make sure each requested task's files are present and intact, downloading what is
    missing when possible. A task whose data cannot be had is dropped from the sweep,
    and its one-line reason returned."""
    problems, keep = [], []
    for ref in request.tasks:
        problem = data_problem(ref.name, catalog, data_dir)
        if problem:
            problems.append(f"{ref.label}: {problem}")
        else:
            keep.append(ref)
    request.tasks = keep
    return problems


def data_problem(task: str, catalog: dict[str, Any], data_dir: Path) -> str:
    """Why a task's data files cannot be had ('' when they are present and intact, or were
    downloaded just now)."""
    from tasks.data import DataFile, ensure

    try:
        for f in catalog["tasks"][task]["files"]:
            ensure(DataFile(**f), data_dir)
    except BenchError as e:
        return str(e)
    return ""


def checked_request(args: argparse.Namespace, catalog: dict[str, Any], seeds: str, baselines: bool) -> Any:
    """The request, with refused pairs and tasks whose data is missing reported and left out.
    Sizes past the sane limits (runs here, one run's memory in ``resolve``) are refused unless
    --allow-large."""
    from bench.catalog import parse_request
    from tasks.data import resolve_data_dir

    request = parse_request(args.models, args.tasks, seeds, args.profile, args.set or [], catalog,
                            baselines=baselines, allow_large=args.allow_large)
    refused: dict[tuple[str, str], list[str]] = {}
    for model, task, reason in request.refused:
        refused.setdefault((model, reason), []).append(task)
    for (model, reason), task_labels in refused.items():
        err_console.print(f"[yellow]refused[/] {escape(model)} × {escape(', '.join(task_labels))}: {escape(reason)}")
    for problem in check_data(request, catalog, resolve_data_dir(args.data_dir)):
        err_console.print(f"[yellow]skipped[/] {escape(problem)}")
    if not request.pairs():
        raise BenchError("Nothing to run: every requested (model, task) pair was refused or lacks its data")
    return request


def tracking_uri(args: argparse.Namespace) -> str:
    from bench.store import default_tracking_uri

    return args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results_dir(args.results))


def check_store(args: argparse.Namespace, writing: bool) -> None:
    """The results directory and a SQLite store in it, checked before torch or MLflow load:
    a directory or store that cannot be used is named at once, and a reading command
    (``writing=False``) creates nothing."""
    from bench.store import check_results_dir, check_sqlite_file, sqlite_path

    path = sqlite_path(tracking_uri(args))
    if writing:
        check_results_dir(results_dir(args.results))
    if path is not None:
        if writing:
            check_results_dir(path.parent)
        check_sqlite_file(path, must_exist=not writing)


def open_tracker(args: argparse.Namespace, writing: bool = True) -> Any:
    """The run store, opened (see ``Tracker.connect``); checked first with ``check_store``."""
    from bench.store import make_results_dir, sqlite_path

    check_store(args, writing)
    uri = tracking_uri(args)
    if writing:
        make_results_dir(results_dir(args.results))
        if (path := sqlite_path(uri)) is not None:
            make_results_dir(path.parent)
    from bench.tracking import Tracker

    tracker = Tracker(uri, results_dir(args.results)).connect()
    if writing:  # experiments recorded before they had a kind become model-training ones
        tracker.mark_training_experiments()
    return tracker


def storage_url(args: argparse.Namespace) -> str:
    from bench.tuning import default_storage

    return args.storage or os.environ.get(ENV_STORAGE) or default_storage(results_dir(args.results))


def tuned_configs(configs: list[Any], request: Any, args: argparse.Namespace) -> list[tuple[Any, dict[str, str]]]:
    """Each requested model's configuration with its study's best parameters (settings given
    with --set or after the task name still win); baselines stay as they are."""
    from bench.tuning import apply, find_tuned
    from tasks import get_task

    url = storage_url(args)
    explicit = {f"model.{k}" for k in request.model_overrides} | {f"train.{k}" for k in request.train_overrides}
    found: dict[tuple[str, str], Any] = {}
    out = []
    for config in configs:
        if config.model not in request.models:
            out.append((config, {}))
            continue
        key = (config.model, config.task.label)
        if key not in found:
            found[key] = find_tuned(url, config.model, config.task.label, config.profile, args.study_suffix,
                                    get_task(config.task.name).higher_is_better)
            if found[key].note:
                err_console.print(f"[yellow]note[/] {escape(found[key].note)}")
        tuned = found[key]
        values = {k: v for k, v in tuned.params.items()
                  if k not in explicit and not (k.startswith("task.") and k[5:] in config.task.params)}
        try:
            out.append((apply(config, values), tuned.tags(url)))
        except (ValueError, TypeError) as e:
            raise BenchError(f"The best parameters of {tuned.study} do not fit {config.label}: {e}") from None
    return out


def cmd_run(args: argparse.Namespace) -> int:
    """Train and evaluate every (model, task, seed); record each run in MLflow."""
    from bench.catalog import load_catalog, resolve
    from tasks.data import resolve_data_dir

    catalog = load_catalog()
    request = checked_request(args, catalog, args.seeds, baselines=not args.no_baselines)
    data_dir = resolve_data_dir(args.data_dir)
    check_store(args, writing=True)

    with console.status("Loading torch, Lightning and MLflow…"):
        configs = resolve(request)  # every value checked before anything is written
        runs = tuned_configs(configs, request, args) if args.tuned else [(c, {}) for c in configs]

        from bench.executor import open_executor
        from bench.progress import SweepProgress
        from bench.signals import requests
        from bench.summary import task_tables

        tracker = open_tracker(args)
        uri = tracker.uri

    t0 = time.perf_counter()
    keep = True if args.tuned and args.keep_model is None else args.keep_model  # tuned models are kept
    settings = runner_settings(args, tracker, data_dir, keep, args.rerun)
    with SweepProgress(console, len(runs)) as progress, open_executor(settings, tracker, progress,
                                                                      ray_options(args)) as runner:
        # Ctrl+C and SIGTERM: the runs under way end KILLED, the sweep stops (130, 143). (Installed
        # once the executor is open: ray.init puts in a SIGTERM handler of its own.)
        requests.install()
        outcomes = runner.sweep(runs, on_result=progress.finished)
    elapsed = time.perf_counter() - t0
    for table in task_tables(outcomes):
        console.print(table)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "cached", "failed", "refused")}
    console.print(
        f"Sweep {runner.sweep_id}: {counts['finished']} finished, {counts['cached']} recorded earlier "
        f"(skipped; --rerun to run again), {counts['failed']} failed, {counts['refused']} refused "
        f"in {elapsed:.0f} s on {runner.runs_on}."
    )
    console.print(f"Runs are in {uri}")
    store = f" --tracking-uri {args.tracking_uri}" if args.tracking_uri else (
        f" --results {args.results}" if args.results else "")
    console.print(f"Browse them: bench ui{store}  (it prints a link to each task's runs, best first)")
    return 1 if failed else 0


def runner_settings(args: argparse.Namespace, tracker: Any, data_dir: Path, keep: bool | None, rerun: bool) -> Any:
    """What every run of a sweep is made with, wherever it runs."""
    from bench.executor import RunnerSettings, new_sweep_id

    return RunnerSettings(tracking_uri=tracker.uri, results_dir=str(results_dir(args.results).resolve()),
                          data_dir=str(data_dir.resolve()), sweep_id=args.sweep or new_sweep_id(),
                          accelerator=args.accelerator, rerun=rerun, keep_model=keep,
                          model_required=getattr(args, "keep_model", None) is True,
                          system_metrics_s=args.system_metrics)


def ray_options(args: argparse.Namespace) -> Any:
    """``--ray [ADDRESS]`` and the resources of each run; None without --ray."""
    if args.ray is None:
        if args.cpus_per_run is not None or args.gpus_per_run is not None:
            raise BenchError("--cpus-per-run and --gpus-per-run go with --ray (a local sweep runs one run at a time)")
        return None
    from bench.executor import RayOptions

    return RayOptions(address=args.ray or None, cpus_per_run=args.cpus_per_run or 1.0,
                      gpus_per_run=args.gpus_per_run)


def parse_duration(text: str | None) -> float | None:
    """``90``, ``90s``, ``30m``, ``2h``, ``1h30m`` -> seconds."""
    if text is None:
        return None
    import re

    match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*", text)
    if not match or not any(match.groups()):
        raise BenchError(f"Invalid duration '{text}': expected e.g. 90s, 30m, 2h or 1h30m")
    h, m, sec = (float(g or 0) for g in match.groups())
    seconds = 3600 * h + 60 * m + sec
    if not seconds < 10 * 365 * 86400:  # inf, or NaN, or longer than anyone waits
        raise BenchError(f"Invalid duration '{text}': at most ten years")
    if seconds <= 0:
        raise BenchError(f"Invalid duration '{text}': it must be more than 0")
    return seconds


def cmd_tune(args: argparse.Namespace) -> int:
    """Tune each (model, task) with an Optuna study on the validation split; trials are runs in MLflow."""
    from bench.catalog import load_catalog, resolve
    from bench.space import user_spaces
    from tasks.data import resolve_data_dir

    if args.trials < 1:
        raise BenchError(f"Invalid --trials {args.trials}: it must be at least 1")
    timeout = parse_duration(args.timeout)
    catalog = load_catalog()
    request = checked_request(args, catalog, str(args.study_seed), baselines=False)
    spaces = user_spaces(args.space or [], Path(args.space_file) if args.space_file else None, request.models,
                         list(dict.fromkeys(t.name for t in request.tasks)), catalog)
    for model in request.models:
        if not catalog["models"][model]["tunable"] and not any(spaces[(model, t.name)] for t in request.tasks):
            raise BenchError(f"{model} has no search space of its own: give one with --space KEY=…")
    data_dir = resolve_data_dir(args.data_dir)
    check_store(args, writing=True)

    with console.status("Loading torch, Lightning, MLflow and Optuna…"):
        configs = resolve(request)
        from bench.executor import TuneSettings, open_executor
        from bench.progress import TuneProgress
        from bench.tuning import StudyPlan, redact, study_name

        tracker = open_tracker(args)
        url = storage_url(args)
    fixed = {f"model.{k}": v for k, v in request.model_overrides.items()}
    fixed.update({f"train.{k}": v for k, v in request.train_overrides.items()})
    import tasks

    plans = []
    for config in configs:
        task_cls = tasks.get_task(config.task.name)
        task_fixed = {**fixed, **{f"task.{k}": v for k, v in config.task.params.items()}}
        plans.append(StudyPlan(study_name(config.model, config.task.label, config.profile, args.study_suffix),
                               config, spaces[(config.model, config.task.name)], task_fixed,
                               task_cls.higher_is_better, task_cls.primary_metric))

    from bench.signals import requests

    settings = runner_settings(args, tracker, data_dir, keep=None, rerun=True)  # (trials claim nothing)
    tuning = TuneSettings(url, study_seed=args.study_seed, pruner=args.pruner, default_trial=not args.no_default_trial)
    with TuneProgress(console, args.trials) as progress, open_executor(settings, tracker, progress,
                                                                       ray_options(args)) as executor:
        # Ctrl+C, or a scheduler's SIGTERM: the training under way stops at its next batch (its
        # trial is queued again) and no other trial starts; a second one stops at once.
        requests.install(graceful=True)
        outcomes = executor.tune(plans, args.trials, timeout, tuning)
    console.print(tune_table(outcomes, plans))
    console.print(f"Studies are in {redact(url)}; trials are runs in {tracker.uri}, under one parent run per study.")
    console.print("Run the same command again to continue a study (--trials is the total it should hold); "
                  f"train with the best parameters: bench run --models {args.models} --tasks {args.tasks} --tuned")
    return 0 if all(o.complete for o in outcomes) else 1


def parse_since(text: str | None) -> int | None:
    """``2026-11-01``, ``2026-11-01T08:30`` (local time) or a duration back from now (``12h``,
    ``3d``) -> milliseconds since the epoch."""
    if text is None:
        return None
    from datetime import datetime

    days = text.strip().removesuffix("d")
    try:
        if text.strip().endswith("d") and days.replace(".", "", 1).isdigit():
            if float(days) > 100 * 365:
                raise ValueError
            return int((time.time() - float(days) * 86400) * 1000)
        try:
            return int(datetime.fromisoformat(text.strip()).timestamp() * 1000)
        except ValueError:
            pass
        return int((time.time() - (parse_duration(text) or 0)) * 1000)
    except (BenchError, ValueError, OverflowError, OSError):
        raise BenchError(f"Invalid --since '{text}': expected a date (2026-11-01), a time (2026-11-01T08:30) "
                         "or a duration back from now (12h, 3d)") from None


def cmd_report(args: argparse.Namespace) -> int:
    """Leaderboards from the recorded runs: Markdown, CSV and a self-contained HTML report."""
    from bench.catalog import load_catalog
    from bench.registry import select_names

    catalog = load_catalog()
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("md", "csv", "html")]
    if bad or not formats:
        raise BenchError(f"Invalid --format '{args.format}': choose from md, csv, html (comma-separated)")
    tasks = select_names("task", args.tasks, catalog["tasks"]) if args.tasks else None
    models = select_names("model", args.models, catalog["models"]) if args.models else None
    since = parse_since(args.since)
    with console.status("Reading runs…"):
        from bench.report import load_runs, load_scale_sweep, write

        tracker = open_tracker(args, writing=False)
        runs = load_runs(tracker.client, tasks, models, args.sweep, since)
        scale = None if runs else load_scale_sweep(tracker.client)  # a report of a bench scale sweep alone
    if not runs and scale is None:
        raise BenchError(f"No runs match in {tracker.uri} (tasks: {args.tasks or 'all'}, models: "
                         f"{args.models or 'all'}, sweep: {args.sweep or 'any'}, since: {args.since or 'any time'})")
    out = Path(args.out) if args.out else results_dir(args.results) / "reports"
    with console.status("Writing the report…"):
        written = write(tracker.client, runs, catalog, out, formats, args.title)
    finished = sum(r.status == "FINISHED" for r in runs)
    if scale is not None:
        console.print(f"No leaderboard runs match; the report holds the scale sweep {scale.sweep_id}")
    console.print(f"{finished} finished and {len(runs) - finished} failed or interrupted runs on "
                  f"{len({r.variant for r in runs})} tasks, from {tracker.uri}")
    for kind, path in written.items():
        console.print(f"  {kind:8} {path}")
    return 0


def cmd_ui(args: argparse.Namespace) -> int:
    """Start the MLflow UI on the run store (loopback by default) and print its URL."""
    from bench.ui import serve

    with console.status("Opening the run store…"):
        tracker = open_tracker(args, writing=False)  # experiments get the training kind and a saved view
    return serve(tracker, results_dir(args.results), args.host, args.port, console)


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Run the reference experiments and compare them with their published figures."""
    from bench.catalog import load_catalog
    from bench.reproduce import load_experiments, markdown, plan, run_all, select, table
    from tasks.data import resolve_data_dir

    experiments = select(load_experiments(), args.only)
    if args.list:
        for e in experiments:
            console.print(f"[bold]{e.name}[/]: {escape(e.about)}\n  {e.metric} {e.bar} "
                          f"(published {e.published:g}: {escape(e.source)})", highlight=False)
        return 0
    catalog = load_catalog()
    planned = plan(experiments, catalog)
    data_dir = resolve_data_dir(args.data_dir)
    missing = [f"{exp.name}: {problem}" for exp, configs in planned
               if (problem := data_problem(configs[0].task.name, catalog, data_dir))]
    if missing:
        raise BenchError("Reference experiments lack their data: " + "; ".join(missing))
    check_store(args, writing=True)
    with console.status("Loading torch, Lightning and MLflow…"):
        from bench.executor import open_executor
        from bench.progress import SweepProgress
        from bench.signals import requests

        tracker = open_tracker(args)
    total = sum(len(configs) for _, configs in planned)
    keep = True if args.keep_model is None else args.keep_model  # reference runs keep their models
    settings = runner_settings(args, tracker, data_dir, keep, args.rerun)
    with SweepProgress(console, total) as progress, open_executor(settings, tracker, progress,
                                                                  ray_options(args)) as runner:
        requests.install()  # (after ray.init, as in bench run)
        outcomes = run_all(planned, runner, progress)
    console.print(table(outcomes))
    out = results_dir(args.results) / "reports"
    out.mkdir(parents=True, exist_ok=True)
    (out / "reproduce.md").write_text(markdown(outcomes, runner.runs_on))
    missed = [o.experiment.name for o in outcomes if not o.passed]
    console.print(f"{len(outcomes) - len(missed)} of {len(outcomes)} reference experiments reach their published "
                  f"figure" + (f"; missed: {', '.join(missed)}" if missed else "") + f". Table: {out / 'reproduce.md'}")
    return 1 if missed else 0


def cmd_load(args: argparse.Namespace) -> int:
    """Load the model a run kept and score it on a split again, without the run loop."""
    from rich.table import Table

    from tasks.data import resolve_data_dir

    with console.status("Loading torch and MLflow…"):
        from bench.saved_model import load

        tracker = open_tracker(args, writing=False)
        loaded = load(args.run_id, tracker, resolve_data_dir(args.data_dir), args.device)
        metrics = loaded.evaluate(args.split)
    recorded = tracker.get_run(args.run_id).data.metrics
    prefix = None if args.split == "train" else args.split  # the run recorded val/ and test/ metrics
    table = Table(title=f"run {args.run_id}: {loaded.config.label}, {args.split} split, loaded from the store")
    for col in ("metric", "loaded model", "recorded by the run"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for k, v in metrics.items():
        before = recorded.get(f"{prefix}/{k}") if prefix else None
        table.add_row(k, f"{v:.6g}", "–" if before is None else f"{before:.6g}")
    console.print(table)
    return 0


def cmd_scale(args: argparse.Namespace) -> int:
    """Throughput and peak memory of each model against sequence length (the efficiency table)."""
    from bench.catalog import load_catalog
    from bench.registry import select_names
    from bench.scale import Settings, Sweeper, parse_sizes, progress_line, tables

    catalog = load_catalog()
    names = select_names("model", args.models, catalog["models"])
    # bench scale feeds token ids: baselines (no backbone) and models of image frames sit out
    models = [n for n in names if not catalog["models"][n]["baseline"] and "tokens" in catalog["models"][n]["inputs"]]
    if len(models) < len(names):
        left_out = ", ".join(n for n in names if n not in models)
        if not models:
            raise BenchError(f"Nothing to measure: {left_out} are baselines or read image frames, not token ids")
        err_console.print(f"[yellow]left out[/] {escape(left_out)}: baselines have no backbone to train, "
                          "and models of image frames read no token ids")
    lengths = parse_sizes("--lengths", args.lengths)
    batch_sizes = parse_sizes("--batch-sizes", args.batch_sizes)
    if args.steps < 1 or args.warmup_steps < 0:
        raise BenchError(f"Invalid --steps {args.steps} / --warmup-steps {args.warmup_steps}: "
                         "at least 1 timed step, and no negative warm-up")
    try:
        timeout = parse_duration(args.point_timeout) or 0.0
    except BenchError:
        raise BenchError(f"Invalid --point-timeout '{args.point_timeout}': expected seconds (60, 0.5) or a "
                         "duration (90s, 2m), more than 0") from None
    if args.memory_limit_mb is not None and args.memory_limit_mb <= 0:
        raise BenchError(f"Invalid --memory-limit-mb {args.memory_limit_mb:g}: it must be more than 0")
    check_store(args, writing=True)
    sweeper = Sweeper(Settings(args.steps, args.warmup_steps, timeout, args.memory_limit_mb, args.accelerator))
    try:
        with console.status("Loading torch and MLflow…"):
            tracker = open_tracker(args)  # while the worker imports torch
            sweeper.start()
        sweep = sweeper.run(models, lengths, batch_sizes, tracker, results_dir(args.results) / "scale", args.sweep,
                            on_point=lambda r: console.print(escape(progress_line(r)), highlight=False))
    finally:
        sweeper.close()
    for table in tables(sweep):
        console.print(table)
    failed = sum(r.status == "failed" for r in sweep.results)
    console.print(f"Sweep {sweep.sweep_id} on {sweep.device}: {len(sweep.results)} points, "
                  + ", ".join(f"{n} {s}" for s in ("ok", "oom", "timeout", "skipped", "failed")
                              if (n := sum(r.status == s for r in sweep.results))), highlight=False)
    console.print(f"Table: {sweep.files['csv']}\nPlot: {sweep.files['plot']}\n"
                  f"Runs: {tracker.uri} (experiment seqbench/scale)", highlight=False)
    return 1 if failed else 0


def tune_table(outcomes: list[Any], plans: list[Any]) -> Any:
    from rich.table import Table

    table = Table(title="Studies (validation split)", title_justify="left")
    for col in ("study", "trials", "complete", "pruned", "failed", "ran here", "default", "best", "best trial",
                "best parameters", "wall s"):
        table.add_column(col, justify="left" if col in ("study", "best parameters") else "right")
    for o, plan in zip(outcomes, plans, strict=True):
        arrow = "↑" if plan.higher_is_better else "↓"
        value = (lambda v: "–" if v != v else f"{v:.4g}")  # noqa: E731 - NaN shows as a dash
        params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in o.best_params.items())
        table.add_row(o.name, str(o.n_trials), str(o.complete), str(o.pruned), str(o.failed), str(o.ran_here),
                      value(o.default_value), f"{value(o.best_value)} {arrow}",
                      "–" if o.best_trial is None else str(o.best_trial), params or o.note, f"{o.wall_s:.0f}")
    return table


DEFAULT_LENGTHS = ",".join(str(64 * 2**i) for i in range(7))  # 64, 128, ..., 4096 (bench scale)
DATA_HELP = "dataset directory (default: $SEQBENCH_DATA_DIR, else ./data)"


def training_options(p: argparse.ArgumentParser) -> None:
    """Where data comes from and results go, and what trains: shared by run and tune."""
    p.add_argument("--data-dir", help=DATA_HELP)
    p.add_argument("--results", help=f"output directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"],
                   help="Lightning accelerator (default: auto, a GPU when there is one)")
    p.add_argument("--sweep", help="sweep id recorded on every run (default: a timestamp)")
    p.add_argument("--system-metrics", type=positive_seconds, nargs="?", const=10.0, metavar="SECONDS",
                   help="record MLflow's system metrics (CPU, GPU, memory) during each run, sampled every "
                   "SECONDS (default when given: 10)")
    p.add_argument("--ray", nargs="?", const="", metavar="ADDRESS",
                   help="spread the runs over Ray workers: a local Ray instance on this machine's cores, or the "
                   "cluster at ADDRESS (e.g. 10.0.0.5:6379); needs pip install 'seqbench[ray]'")
    p.add_argument("--cpus-per-run", type=positive_count, metavar="N",
                   help="with --ray: CPUs each run takes, and its torch threads (default: 1)")
    p.add_argument("--gpus-per-run", type=non_negative_count, metavar="N",
                   help="with --ray: GPUs each run takes, fractions allowed (default: 1 where the cluster has "
                   "GPUs, else 0)")


def keep_model_option(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument("--keep-model", action=argparse.BooleanOptionalAction, default=None,
                   help=f"keep each run's trained model in the store, loadable with bench load ({default})")


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < 86400:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds between 0 and 86400")
    return value


def positive_count(text: str) -> float:
    value = non_negative_count(text)
    if value == 0:
        raise argparse.ArgumentTypeError(f"'{text}' is not more than 0")
    return value


def non_negative_count(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 <= value <= 1024:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number between 0 and 1024")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark sequence models (RNN, LSTM, GRU, attention, transformer) across tasks.",
    )
    parser.add_argument("--version", action="version", version=f"seqbench {bench.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("list", help=cmd_list.__doc__, description=cmd_list.__doc__)
    p.add_argument("--models-only", action="store_true", help="only the models")
    p.add_argument("--tasks-only", action="store_true", help="only the tasks")
    p.add_argument("--data-dir", help=DATA_HELP)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("data", help=cmd_data.__doc__, description=cmd_data.__doc__)
    p.add_argument("--tasks", default="all", help="only these tasks' files (default: all)")
    p.add_argument("--verify", action="store_true", help="check every present file's checksum")
    p.add_argument("--fetch", action="store_true", help="download missing files from their sources, then verify")
    p.add_argument("--data-dir", help=DATA_HELP)
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("run", help=cmd_run.__doc__, description=cmd_run.__doc__)
    p.add_argument("--models", required=True, help="comma-separated names, wildcards or 'all' (see bench list)")
    p.add_argument("--tasks", required=True,
                   help="comma-separated tasks or 'all'; parameters after the name: copy:delay=200, "
                   "or a variant: copy:T200")
    p.add_argument("--seeds", default="0", help="e.g. 0,1,2 or 0-4 (default: 0)")
    p.add_argument("--profile", default="quick", help="budget profile: tiny, quick, standard, full (default: quick)")
    p.add_argument("--set", action="append", metavar="GROUP.KEY=VALUE",
                   help="override a setting: model.hidden_size=64, train.lr=1e-3, budget.max_steps=200 (repeatable)")
    large_help = ("run what is past the sane limits: more than 10,000 runs, or a run whose data, parameters "
                  "and activations would not fit in the memory available (refused by default)")
    p.add_argument("--allow-large", action="store_true", help=large_help)
    training_options(p)
    p.add_argument("--rerun", action="store_true", help="run again configurations that already finished")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not add the baselines that serve each task (added by default: they take seconds)")
    p.add_argument("--tuned", action="store_true",
                   help="train each model with the best parameters of its study (see bench tune)")
    storage_help = f"Optuna storage URL (default: ${ENV_STORAGE}, else SQLite in results/)"
    p.add_argument("--storage", help=storage_help + ", for --tuned")
    p.add_argument("--study-suffix", default="", help="with --tuned: the suffix the study was given")
    keep_model_option(p, "default: with --tuned, and for the standard and full profiles")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tune", help=cmd_tune.__doc__, description=cmd_tune.__doc__)
    p.add_argument("--models", required=True, help="comma-separated names, wildcards or 'all'")
    p.add_argument("--tasks", required=True, help="comma-separated tasks (with parameters or a variant, as for run)")
    p.add_argument("--trials", type=int, default=20,
                   help="trials each study should hold; a study continued counts those it has (default: 20)")
    p.add_argument("--timeout", help="per study: start no new trial after this long, e.g. 30m, 2h, 90s")
    p.add_argument("--profile", default="quick", help="budget of each trial (default: quick)")
    p.add_argument("--pruner", default="median", choices=["median", "halving", "none"],
                   help="stop poor trials early: median, successive halving, or none (default: median)")
    p.add_argument("--space", action="append", metavar="KEY=SPEC",
                   help="change the search space: model.hidden_size=64,128 (choices), train.lr=1e-4..1e-2:log "
                   "(range), model.num_layers=2 (fixed); repeatable")
    p.add_argument("--space-file", help="a TOML file of such entries; a [model] table applies to that model only")
    p.add_argument("--set", action="append", metavar="GROUP.KEY=VALUE",
                   help="fix a setting for every trial: budget.max_steps=200, model.hidden_size=64 (repeatable)")
    p.add_argument("--storage", help=storage_help + "; e.g. postgresql://user@host/db shared by many workers")
    p.add_argument("--study-seed", type=int, default=0,
                   help="each trial's training seed and sampling are drawn from it and the trial number (default: 0)")
    p.add_argument("--study-suffix", default="", help="appended to study names, to keep studies with other "
                   "settings apart")
    p.add_argument("--no-default-trial", action="store_true",
                   help="do not make trial 0 the default configuration")
    p.add_argument("--allow-large", action="store_true", help=large_help)
    training_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("reproduce", help=cmd_reproduce.__doc__, description=cmd_reproduce.__doc__)
    p.add_argument("--only", help="only these experiments (comma-separated names or wildcards; see --list)")
    p.add_argument("--list", action="store_true", help="list the reference experiments and their figures")
    p.add_argument("--rerun", action="store_true",
                   help="run again experiments recorded earlier with the same configuration, device and code")
    training_options(p)
    keep_model_option(p, "default: kept")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("scale", help=cmd_scale.__doc__, description=cmd_scale.__doc__)
    p.add_argument("--models", required=True, help="comma-separated names, wildcards or 'all' (baselines left out)")
    p.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"sequence lengths (default: {DEFAULT_LENGTHS})")
    p.add_argument("--batch-sizes", default="32", help="batch sizes, comma-separated (default: 32)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per point, training and inference (default: 5)")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed steps before them (default: 2)")
    p.add_argument("--point-timeout", default="60", help="seconds a point may take, e.g. 60, 90s, 2m (default: 60)")
    p.add_argument("--memory-limit-mb", type=float,
                   help="MB a point may take (CPU: added to the worker's data segment, by default 90%% of the "
                   "memory available; GPU: torch's share of the device)")
    p.add_argument("--results", help=f"output directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda"],
                   help="where points run (default: auto, a GPU when there is one)")
    p.add_argument("--sweep", help="sweep id recorded on every run (default: a timestamp)")
    p.set_defaults(func=cmd_scale)

    p = sub.add_parser("report", help=cmd_report.__doc__, description=cmd_report.__doc__)
    p.add_argument("--tasks", help="only these tasks (comma-separated, wildcards; default: all)")
    p.add_argument("--models", help="only these models (default: all)")
    p.add_argument("--sweep", help="only the runs of this sweep id")
    p.add_argument("--since", help="only runs started since: 2026-11-01, 2026-11-01T08:30, or 12h, 3d back")
    p.add_argument("--format", default="md,csv,html", help="any of md, csv, html (default: all three)")
    p.add_argument("--out", help="output directory (default: results/reports)")
    p.add_argument("--title", default="seqbench leaderboard", help="the report's title")
    p.add_argument("--results", help=f"results directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("load", help=cmd_load.__doc__, description=cmd_load.__doc__)
    p.add_argument("run_id", help="the run (its id, as the MLflow UI and bench report show it)")
    p.add_argument("--split", default="test", choices=["train", "val", "test"], help="split to score (default: test)")
    p.add_argument("--device", default="cpu", help="torch device to load the model on (default: cpu)")
    p.add_argument("--data-dir", help=DATA_HELP)
    p.add_argument("--results", help=f"results directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri", help="the run store (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("ui", help=cmd_ui.__doc__, description=cmd_ui.__doc__)
    p.add_argument("--port", type=int, default=5000, help="port (default: 5000)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--results", help=f"results directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri", help="the run store (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.set_defaults(func=cmd_ui)
    return parser


STORE_ERRORS = ("mlflow", "sqlalchemy", "sqlite3", "psycopg", "alembic")  # modules whose errors are the store's


def main(argv: list[str] | None = None) -> int:
    from bench.signals import requests

    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
        if requests.pending is not None:  # bench tune: a stop request after its last look
            raise KeyboardInterrupt
        return code
    except BenchError as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        if requests.pending is not None:  # it landed between two runs
            requests.deliver()
        what = "terminated" if requests.exit_code == 143 else "interrupted"
        err_console.print(f"[red]{what}[/]: runs finished so far are recorded; the one under way is KILLED")
        return requests.exit_code
    except Exception as e:
        if not type(e).__module__.startswith(STORE_ERRORS):
            raise
        text = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        err_console.print(f"[red]error:[/] the run store failed: {escape(text)}. Runs recorded so far are kept; "
                          "check that the store is reachable and writable, then run the command again",
                          highlight=False, soft_wrap=True)
        return 2
    finally:
        if requests.installed:
            requests.uninstall()


if __name__ == "__main__":
    sys.exit(main())
