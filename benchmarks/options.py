"""What a speed option buys: the harness's training throughput with and without it.

Each model and task is trained by the harness with the defaults and with ``--set``'s
settings, alternately, back to back in this process, and the ratio (with / without) is
printed per pair, with the run's time outside training (evaluation included) beside it.

    python benchmarks/options.py --models gru,transformer --tasks copy --set train.precision=bf16-mixed
    python benchmarks/options.py --models lstm --tasks imdb --set train.loader_workers=1
    python benchmarks/options.py --models lstm,transformer --tasks copy --set train.compile=true --steps 200

The first timed steps after compiling include recompilations for new shapes; raise
``--warmup`` where a task's batches change shape (text).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from overhead import with_budget  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="lstm,gru,transformer")
    parser.add_argument("--tasks", default="copy")
    parser.add_argument("--set", action="append", required=True, help="train.KEY=VALUE: the option measured")
    parser.add_argument("--steps", type=int, default=60, help="timed steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out before timing")
    parser.add_argument("--repeats", type=int, default=2, help="(without, with) pairs per model and task")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from bench.catalog import load_catalog, parse_request, resolve
    from bench.runner import Runner
    from bench.tracking import Tracker
    from tasks.data import resolve_data_dir

    catalog = load_catalog()
    budget = {"max_steps": args.warmup + args.steps, "val_every_steps": args.warmup + args.steps,
              "meter_warmup_steps": args.warmup, "max_time_s": 3600}
    plain = [with_budget(c, **budget) for c in resolve(parse_request(args.models, args.tasks, "0", "quick", [],
                                                                     catalog))]
    option = [with_budget(c, **budget) for c in resolve(parse_request(args.models, args.tasks, "0", "quick",
                                                                      args.set, catalog))]
    console = Console()
    table = Table(title=f"Training samples/s with {' '.join(args.set)} / without")
    for col in ("model", "task", "without", "with", "ratio (median)", "ratios", "other s without", "other s with"):
        table.add_column(col, justify="left" if col in ("model", "task", "ratios") else "right")
    with tempfile.TemporaryDirectory(prefix="seqbench-options-") as tmp:
        runner = Runner(Tracker(f"sqlite:///{tmp}/mlflow.db", Path(tmp)), resolve_data_dir(args.data_dir),
                        accelerator=args.accelerator, rerun=True)
        console.print(f"device: {runner.env_tags['device']}; {args.steps} timed steps after {args.warmup}")
        for without, with_ in zip(plain, option, strict=True):
            speed: dict[str, list[float]] = {"without": [], "with": []}
            other: dict[str, list[float]] = {"without": [], "with": []}
            failed = ""
            for r in range(args.repeats):
                for side in (("without", "with") if r % 2 == 0 else ("with", "without")):
                    result = runner.run(without if side == "without" else with_, evaluate_test=False)
                    if result.status != "finished":
                        failed = f"{side}: {result.reason}"
                        break
                    speed[side].append(result.metrics["perf/train_samples_per_s"])
                    other[side].append(result.metrics["time/total_s"] - result.metrics["time/train_s"])
                if failed:
                    break
            if failed:
                table.add_row(without.model, without.task.label, "", "", "failed", failed[:60], "", "")
                continue
            ratios = [w / o for w, o in zip(speed["with"], speed["without"], strict=True)]
            table.add_row(without.model, without.task.label, f"{statistics.median(speed['without']):,.0f}",
                          f"{statistics.median(speed['with']):,.0f}", f"{statistics.median(ratios):.2f}",
                          " ".join(f"{x:.2f}" for x in ratios), f"{statistics.median(other['without']):.1f}",
                          f"{statistics.median(other['with']):.1f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
