"""The harness's own cost: its training throughput against a bare PyTorch loop.

For each model family (at its default size) and each task, the same model is trained
twice per repeat, back to back in this process: once by the harness (``Runner.run``, as
``bench run`` does, with its meters, callbacks and store) and once by a bare loop on the
identical model, batches, optimizer, schedule and clipping. The order alternates from
repeat to repeat so machine noise hits both; the ratio is harness / bare, per pair.

    python benchmarks/overhead.py                                  # every family; copy, imdb, etth1
    python benchmarks/overhead.py --models lstm,gru --tasks copy --repeats 5

The harness's figure is its steady-state throughput as recorded (``perf/train_samples_per_s``:
wall time over training steps, validations left out). The bare loop's is the same span:
the same steps after the same warm-up, timed with one device synchronisation at each end.
Run it on an otherwise idle machine; it is a measurement, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

FAMILIES = "rnn,lstm,gru,bilstm,bigru,stacked-lstm,stacked-gru,lstm-attn,transformer"


def bare_throughput(runner, config, steps: int, warmup: int) -> float:  # noqa: ANN001
    """Samples/s of a bare loop over the harness's own batches, model and optimizer."""
    import lightning as L
    import torch

    import models
    from bench.meters import autocast_dtype
    from bench.module import SeqModule
    from bench.recipe import optimizer_and_schedule

    train = config.train
    L.seed_everything(config.seed, verbose=False)
    task, splits = runner.data(config)
    net = runner._build(config, task, splits)
    loader = runner.loaders(config, splits).train
    total = min(config.budget["max_steps"], config.budget["max_epochs"] * len(loader))
    module = SeqModule(net, task, train, predictor=models.get_model(config.model).predictor, total_steps=total)
    if train["compile"]:
        module.backbone = torch.compile(net)
    device = runner.device
    module.to(device).train()
    setup = optimizer_and_schedule(module, train, total)
    optimizer, scheduler = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    mixed = autocast_dtype(train["precision"])

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step, samples, t0 = 0, 0, 0.0
    while step < warmup + steps:
        for batch in loader:
            if step == warmup:
                sync()
                t0 = time.perf_counter()
            if step >= warmup:
                samples += len(batch["y"])
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=mixed, enabled=mixed is not None):
                loss = task.loss(module(batch["x"], batch["mask"]), batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if train["grad_clip"]:
                torch.nn.utils.clip_grad_norm_(module.parameters(), train["grad_clip"])
            optimizer.step()
            scheduler.step()
            step += 1
            if step == warmup + steps:
                break
    sync()
    return samples / (time.perf_counter() - t0)


def with_budget(config, **budget):  # noqa: ANN001, ANN003, ANN201
    """The same run with other budget limits (a new configuration, so a new hash)."""
    return dataclasses.replace(config, budget={**config.budget, **budget})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=FAMILIES)
    parser.add_argument("--tasks", default="copy,imdb,etth1")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per measurement, at least")
    parser.add_argument("--seconds", type=float, default=4.0,
                        help="more timed steps where a step is short, so each measurement lasts about this long")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out before timing")
    parser.add_argument("--repeats", type=int, default=3, help="(harness, bare) pairs per model and task")
    parser.add_argument("--set", action="append", default=[], help="train.KEY=VALUE, as bench run --set")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--accelerator", default="auto")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table

    from bench.catalog import load_catalog, parse_request, resolve
    from bench.runner import Runner
    from bench.tracking import Tracker
    from tasks.data import resolve_data_dir

    request = parse_request(args.models, args.tasks, "0", "quick", args.set, load_catalog())
    console = Console()
    table = Table(title="Training throughput: harness / bare PyTorch loop (samples/s)")
    for col in ("model", "task", "batch", "steps", "harness", "bare", "ratio (median)", "ratios"):
        table.add_column(col, justify="left" if col in ("model", "task", "ratios") else "right")
    with tempfile.TemporaryDirectory(prefix="seqbench-overhead-") as tmp:
        tracker = Tracker(f"sqlite:///{tmp}/mlflow.db", Path(tmp))
        runner = Runner(tracker, resolve_data_dir(args.data_dir), accelerator=args.accelerator, rerun=True)
        console.print(f"device: {runner.env_tags['device']}; timed steps after {args.warmup}")
        for pair in resolve(request):
            # Calibrate: enough steps for about --seconds a measurement. The budget is set so that
            # validation never runs during the timed steps; nothing else changes.
            per_step = 1.0 / bare_throughput(runner, pair, 5, 3) * pair.train["batch_size"]
            steps = max(args.steps, min(2000, round(args.seconds / per_step)))
            config = with_budget(pair, max_steps=args.warmup + steps, val_every_steps=args.warmup + steps,
                                 meter_warmup_steps=args.warmup, max_time_s=3600)
            harness, bare = [], []
            for r in range(args.repeats):
                for side in (("harness", "bare") if r % 2 == 0 else ("bare", "harness")):
                    if side == "harness":
                        result = runner.run(config, evaluate_test=False)
                        if result.status != "finished":
                            console.print(f"{config.label}: {result.status} {result.reason}")
                            break
                        harness.append(result.metrics["perf/train_samples_per_s"])
                    else:
                        bare.append(bare_throughput(runner, config, steps, args.warmup))
            if not harness:
                continue
            ratios = [h / b for h, b in zip(harness, bare, strict=False)]
            table.add_row(config.model, config.task.label, str(config.train["batch_size"]), str(steps),
                          f"{statistics.median(harness):,.0f}", f"{statistics.median(bare):,.0f}",
                          f"{statistics.median(ratios):.3f}", " ".join(f"{x:.2f}" for x in ratios))
            console.print(f"{config.model} × {config.task.label}: ratio {statistics.median(ratios):.3f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
