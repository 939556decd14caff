"""``bench scale``: training and inference throughput, and peak memory, against sequence length.

Every point (model, length, batch size; see ``bench.scale_worker`` for what one measures)
runs in a worker process that imports torch once and takes point after point, so a point
that runs out of memory or time cannot stop the sweep: the parent kills a worker that
overruns the point timeout (counted from the worker's word that it started the point) and
starts another for the next point. Once a point has run out of memory or time, the
model's longer lengths at that batch size are skipped rather than tried.

Outputs: a table and the log-log slope of training time per sample against length (about
1 for a recurrence, towards 2 for attention at long lengths); ``scale.csv`` and
``scale.png`` under ``results/scale/<sweep id>/``; one MLflow run per point (experiment
``seqbench/scale``, ``kind=scale``) under a parent run (``kind=scale-sweep``) that holds
the plot, the CSV and the slopes. Torch-free at import: ``bench report`` reads it.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import multiprocessing
import re
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.scale_worker import METRICS, Point, PointResult, Settings, worker_main

EXPERIMENT = "scale"  # MLflow experiment seqbench/scale
SWEEP_KIND, POINT_KIND = "scale-sweep", "scale"
PLOT_NAME, CSV_NAME = "scale.png", "scale.csv"
STARTUP_TIMEOUT_S = 600.0  # a worker's imports: torch and Lightning take tens of seconds on a busy machine
RUN_STATUS = {"ok": "FINISHED", "skipped": "KILLED"}  # oom, timeout and failed points are FAILED runs
HEADER = ["model", "length", "batch", "train samples/s", "train tokens/s", "infer samples/s", "peak MB", "status"]
SLOPE_HEADER = ["model", "slope (all ok points)", "slope (longest 3)"]

@dataclass(frozen=True)
class Slope:
    """Least-squares slope of log(training time per sample) against log(length)."""

    all_points: float | None  # over every ok point
    longest: float | None  # over the three longest ok points, where fixed overheads hide the least


@dataclass
class Sweep:
    sweep_id: str
    device: str
    results: list[PointResult]
    slopes: dict[tuple[str, int], Slope]  # by (model, batch size)
    files: dict[str, Path]


def parse_sizes(flag: str, text: str) -> list[int]:
    """``64,128,256`` -> [64, 128, 256], sorted, without repeats."""
    values = set()
    for part in text.split(","):
        if not re.fullmatch(r"\s*\d+\s*", part) or int(part) < 1:
            raise BenchError(f"Invalid {flag} '{text}': '{part.strip()}' is not a positive integer "
                             "(expected e.g. 64,128,256)")
        values.add(int(part))
    return sorted(values)


class Worker:
    """A worker process and the parent's end of its pipe."""

    def __init__(self, s: Settings) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=worker_main, args=(child, s), daemon=True, name="bench-scale-worker")
        self.process.start()
        child.close()  # so that the worker's death reads as the end of the pipe

    def _receive(self, deadline: float) -> tuple[str, Any] | None:
        """The next message, ("died", exit code) if the worker ended, None past the deadline."""
        try:
            if not self.conn.poll(max(0.0, deadline - time.monotonic())):
                return None
            return self.conn.recv()
        except (EOFError, OSError):
            self.process.join(5)
            return ("died", self.process.exitcode)

    def ready(self) -> str:
        """Wait for the worker's imports; the device it measures on."""
        msg = self._receive(time.monotonic() + STARTUP_TIMEOUT_S) or ("error", "it did not answer in time")
        if msg[0] != "ready":
            self.kill()
            why = msg[1] if msg[0] == "error" else f"it exited with code {msg[1]}"
            raise BenchError(f"The measuring worker did not start: {why}")
        return msg[1]

    def measure(self, point: Point, s: Settings) -> PointResult:
        try:
            self.conn.send(dataclasses.asdict(point))
        except OSError:
            return self._death(point)
        msg = self._receive(time.monotonic() + STARTUP_TIMEOUT_S)
        if msg is not None and msg[0] == "started":  # the point's time counts from here
            msg = self._receive(time.monotonic() + s.point_timeout_s + s.kill_grace_s)
        if msg is None:
            self.kill()
            return PointResult(point, "timeout", f"killed: ran past the {s.point_timeout_s:g} s point timeout")
        return msg[1] if msg[0] == "result" else self._death(point)

    def _death(self, point: Point) -> PointResult:
        self.process.join(5)
        code = self.process.exitcode
        if code == -signal.SIGKILL:
            return PointResult(point, "oom", "the worker was killed (SIGKILL), most likely by the kernel for memory")
        return PointResult(point, "failed", f"the worker exited with code {code}")

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(10)
        self.conn.close()

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self.conn.send(None)
                self.process.join(10)
            except OSError:
                pass
        self.kill()


class Sweeper:
    """Runs one sweep. The first worker starts (importing torch) as soon as this is made,
    so that it loads while the caller opens the tracker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.worker: Worker | None = Worker(settings)
        self.device = ""

    def start(self) -> str:
        """Wait until the first worker is ready; the device it measures on."""
        if not self.device and self.worker is not None:
            self.device = self.worker.ready()
        return self.device

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None

    def _measure(self, point: Point) -> PointResult:
        if self.worker is None:  # the last one was killed, or died
            self.worker = Worker(self.settings)
            self.worker.ready()
        result = self.worker.measure(point, self.settings)
        if not self.worker.process.is_alive():
            self.worker.kill()
            self.worker = None
        return result

    def run(self, models: list[str], lengths: list[int], batch_sizes: list[int], tracker: Any, out_root: Path,
            sweep_id: str | None = None, on_point: Callable[[PointResult], None] | None = None) -> Sweep:
        s = self.settings
        device = self.start()
        sweep_id = sweep_id or time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
        params = {"models": ",".join(models), "lengths": ",".join(map(str, lengths)),
                  "batch_sizes": ",".join(map(str, batch_sizes)), **dataclasses.asdict(s)}
        parent = tracker.start(EXPERIMENT, f"scale-{sweep_id}", params,
                               {"kind": SWEEP_KIND, "sweep_id": sweep_id, "device": device})
        tags = {"kind": POINT_KIND, "sweep_id": sweep_id, "device": device, "mlflow.parentRunId": parent}
        results: list[PointResult] = []
        try:
            for model in models:
                for batch in batch_sizes:
                    stop: PointResult | None = None  # the point that ran out of memory or time
                    for length in lengths:
                        point = Point(model, length, batch)
                        if stop is None:
                            result = self._measure(point)
                            stop = result if result.status in ("oom", "timeout") else None
                        else:
                            what = "memory" if stop.status == "oom" else "time"
                            result = PointResult(point, "skipped", f"longer than a point that ran out of {what} "
                                                                   f"(length {stop.point.length})")
                        record_point(tracker, tags, s, result)
                        results.append(result)
                        if on_point is not None:
                            on_point(result)
            slopes = fit_slopes(results)
            files = write_files(results, out_root / sweep_id)
            tracker.log_metrics(parent, {f"scale/{name}/{m}/b{b}": value for (m, b), v in slopes.items()
                                         for name, value in (("slope", v.all_points), ("slope_longest", v.longest))
                                         if value is not None})
            for path in files.values():
                tracker.log_artifact(parent, path)
        except BaseException:
            tracker.end(parent, "KILLED")
            raise
        tracker.end(parent, "FINISHED")
        return Sweep(sweep_id, device, results, slopes, files)


def record_point(tracker: Any, tags: dict[str, str], s: Settings, result: PointResult) -> None:
    """One MLflow run: numbers only for an ok point, the status and reason for any point."""
    p = result.point
    params = {"model": p.model, "length": p.length, "batch_size": p.batch_size, "steps": s.steps,
              "warmup_steps": s.warmup_steps, "point_timeout_s": s.point_timeout_s,
              "memory_limit_mb": s.memory_limit_mb if s.memory_limit_mb is not None else "none"}
    run_tags = {**tags, "model": p.model, "status": result.status}
    if result.reason:
        run_tags["failure_reason"] = result.reason
    run_id = tracker.start(EXPERIMENT, f"{p.model}-L{p.length}-B{p.batch_size}", params, run_tags)
    if result.status == "ok":
        tracker.log_metrics(run_id, result.metrics())
    tracker.end(run_id, RUN_STATUS.get(result.status, "FAILED"))


def _least_squares(xy: list[tuple[float, float]]) -> float | None:
    if len(xy) < 2:
        return None
    mx, my = (sum(v) / len(xy) for v in zip(*xy, strict=True))
    var = sum((x - mx) ** 2 for x, _ in xy)
    return sum((x - mx) * (y - my) for x, y in xy) / var if var > 0 else None


def fit_slopes(results: list[PointResult]) -> dict[tuple[str, int], Slope]:
    """Per (model, batch size): the slope of log(seconds per training sample) on log(length)."""
    out = {}
    for key in dict.fromkeys((r.point.model, r.point.batch_size) for r in results):
        ok = sorted((r.point.length, r.train_samples_per_s) for r in results
                    if (r.point.model, r.point.batch_size) == key and r.status == "ok" and r.train_samples_per_s)
        xy = [(math.log(length), -math.log(rate)) for length, rate in ok]  # log(1 / rate): time per sample
        out[key] = Slope(_least_squares(xy), _least_squares(xy[-3:]))
    return out


def _num(v: float | None) -> str:
    return "–" if v is None else f"{v:,.0f}" if v >= 100 else f"{v:.3g}"


def table_rows(results: list[PointResult]) -> list[list[str]]:
    return [[r.point.model, str(r.point.length), str(r.point.batch_size), _num(r.train_samples_per_s),
             _num(r.train_tokens_per_s), _num(r.infer_samples_per_s),
             "–" if r.peak_memory_mb is None else f"{r.peak_memory_mb:.1f}",
             r.status + (f": {r.reason}" if r.reason else "")] for r in results]


def slope_rows(slopes: dict[tuple[str, int], Slope]) -> list[list[str]]:
    one_batch = len({b for _, b in slopes}) == 1
    fmt = lambda v: "–" if v is None else f"{v:.2f}"  # noqa: E731
    return [[m if one_batch else f"{m} (batch {b})", fmt(v.all_points), fmt(v.longest)]
            for (m, b), v in slopes.items()]


def progress_line(r: PointResult) -> str:
    p = r.point
    what = (f"train {_num(r.train_samples_per_s)} samples/s, infer {_num(r.infer_samples_per_s)} samples/s, "
            f"peak {r.peak_memory_mb:.1f} MB" if r.status == "ok" else r.reason)
    return f"{p.model} length {p.length} batch {p.batch_size}: {r.status} ({what})"


def tables(sweep: Sweep) -> list[Any]:
    from rich.table import Table

    table = Table(title=f"Cost against sequence length ({sweep.device})", title_justify="left")
    for i, col in enumerate(HEADER):
        table.add_column(col, justify="left" if i in (0, 7) else "right")
    for row in table_rows(sweep.results):
        table.add_row(*row)
    slopes = Table(title="log-log slope of training time per sample against length "
                   "(1: linear in length, 2: quadratic)", title_justify="left")
    for i, col in enumerate(SLOPE_HEADER):
        slopes.add_column(col, justify="left" if i == 0 else "right")
    for row in slope_rows(sweep.slopes):
        slopes.add_row(*row)
    return [table, slopes]


def plot(results: list[PointResult]) -> Any:
    """Training and inference samples/s and peak memory against length, log-log, one line
    per model (a line style per batch size)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r.point.model for r in results))
    batches = sorted({r.point.batch_size for r in results})
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2))
    panels = [("train_samples_per_s", "training samples/s"), ("infer_samples_per_s", "inference samples/s"),
              ("peak_memory_mb", "peak memory MB")]
    for (key, label), ax in zip(panels, axes, strict=True):
        for m, model in enumerate(models):
            for b, batch in enumerate(batches):
                pts = [(r.point.length, getattr(r, key)) for r in results if r.point.model == model
                       and r.point.batch_size == batch and r.status == "ok" and (getattr(r, key) or 0) > 0]
                if pts:
                    ax.plot(*zip(*pts, strict=True), color=f"C{m % 10}", ls=["-", "--", ":", "-."][b % 4],
                            marker="o", ms=3, label=model if len(batches) == 1 else f"{model}, batch {batch}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length", ylabel=label)
        lengths = sorted({r.point.length for r in results})
        ax.set_xticks(lengths, [str(n) for n in lengths], minor=False)
        ax.set_xticks([], minor=True)
        ax.grid(True, which="both", alpha=0.3)
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def write_files(results: list[PointResult], out_dir: Path) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["model", "length", "batch_size", "status", *METRICS, "reason"])
    for r in results:
        writer.writerow([r.point.model, r.point.length, r.point.batch_size, r.status,
                         *("" if getattr(r, k) is None else getattr(r, k) for k in METRICS), r.reason])
    files = {"csv": out_dir / CSV_NAME, "plot": out_dir / PLOT_NAME}
    files["csv"].write_text(buf.getvalue())
    import matplotlib.pyplot as plt

    fig = plot(results)
    fig.savefig(files["plot"], dpi=100)
    plt.close(fig)
    return files
