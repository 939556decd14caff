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
    from tasks.data import DataFile, ensure

    problems, keep = [], []
    for ref in request.tasks:
        try:
            for f in catalog["tasks"][ref.name]["files"]:
                ensure(DataFile(**f), data_dir)
            keep.append(ref)
        except BenchError as e:
            problems.append(f"{ref.label}: {e}")
    request.tasks = keep
    return problems


def cmd_run(args: argparse.Namespace) -> int:
    """Train and evaluate every (model, task, seed); record each run in MLflow."""
    from bench.catalog import load_catalog, parse_request, resolve
    from tasks.data import resolve_data_dir

    catalog = load_catalog()
    request = parse_request(args.models, args.tasks, args.seeds, args.profile, args.set or [], catalog,
                            baselines=not args.no_baselines)
    refused: dict[tuple[str, str], list[str]] = {}
    for model, task, reason in request.refused:
        refused.setdefault((model, reason), []).append(task)
    for (model, reason), task_labels in refused.items():
        err_console.print(f"[yellow]refused[/] {escape(model)} × {escape(', '.join(task_labels))}: {escape(reason)}")
    data_dir = resolve_data_dir(args.data_dir)
    for problem in check_data(request, catalog, data_dir):
        err_console.print(f"[yellow]skipped[/] {escape(problem)}")
    if not request.pairs():
        raise BenchError("Nothing to run: every requested (model, task) pair was refused or lacks its data")

    with console.status("Loading torch, Lightning and MLflow…"):
        configs = resolve(request)  # every value checked before anything is written

        from bench.progress import SweepProgress
        from bench.runner import Runner
        from bench.summary import task_tables
        from bench.tracking import Tracker, default_tracking_uri

        results = results_dir(args.results)
        results.mkdir(parents=True, exist_ok=True)
        uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(results)
        tracker = Tracker(uri, results)

    t0 = time.perf_counter()
    outcomes = []
    with SweepProgress(console, len(configs)) as progress:
        runner = Runner(tracker, data_dir, sweep_id=args.sweep, listener=progress,
                        accelerator=args.accelerator, rerun=args.rerun)
        for config in configs:
            outcome = runner.run(config)
            progress.finished(outcome)
            outcomes.append(outcome)
    elapsed = time.perf_counter() - t0
    for table in task_tables(outcomes):
        console.print(table)
    failed = [o for o in outcomes if o.status == "failed"]
    counts = {s: sum(o.status == s for o in outcomes) for s in ("finished", "cached", "failed", "refused")}
    console.print(
        f"Sweep {runner.sweep_id}: {counts['finished']} finished, {counts['cached']} recorded earlier "
        f"(skipped; --rerun to run again), {counts['failed']} failed, {counts['refused']} refused "
        f"in {elapsed:.0f} s on {runner.env_tags['device']}."
    )
    console.print(f"Runs are in {uri}")
    if tracker.local:
        console.print(f"Browse them: mlflow ui --backend-store-uri {uri}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark sequence models (RNN, LSTM, GRU, attention, transformer) across tasks.",
    )
    parser.add_argument("--version", action="version", version=f"seqbench {bench.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data_help = "dataset directory (default: $SEQBENCH_DATA_DIR, else ./data)"
    p = sub.add_parser("list", help=cmd_list.__doc__, description=cmd_list.__doc__)
    p.add_argument("--models-only", action="store_true", help="only the models")
    p.add_argument("--tasks-only", action="store_true", help="only the tasks")
    p.add_argument("--data-dir", help=data_help)
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("data", help=cmd_data.__doc__, description=cmd_data.__doc__)
    p.add_argument("--tasks", default="all", help="only these tasks' files (default: all)")
    p.add_argument("--verify", action="store_true", help="check every present file's checksum")
    p.add_argument("--fetch", action="store_true", help="download missing files from their sources, then verify")
    p.add_argument("--data-dir", help=data_help)
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
    p.add_argument("--data-dir", help=data_help)
    p.add_argument("--results", help=f"output directory (default: ${ENV_RESULTS}, else ./results)")
    p.add_argument("--tracking-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else SQLite in results/)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu", "cuda", "mps"],
                   help="Lightning accelerator (default: auto, a GPU when there is one)")
    p.add_argument("--sweep", help="sweep id recorded on every run (default: a timestamp)")
    p.add_argument("--rerun", action="store_true", help="run again configurations that already finished")
    p.add_argument("--no-baselines", action="store_true",
                   help="do not add the baselines that serve each task (added by default: they take seconds)")
    p.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except BenchError as e:
        err_console.print(f"[red]error:[/] {escape(str(e))}", highlight=False, soft_wrap=True)
        return 2
    except KeyboardInterrupt:
        err_console.print("[red]interrupted[/]: runs finished so far are recorded")
        return 130


if __name__ == "__main__":
    sys.exit(main())
