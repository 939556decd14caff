"""The summary table printed after a sweep: one table per task, models ranked on the
task's primary test metric (mean ± std over seeds), with speed and memory beside it."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from rich.table import Table

from tasks.published import describe

PERF_COLUMNS = [  # (metric key, header, format)
    ("perf/train_samples_per_s", "train samples/s", "{:,.0f}"),
    ("perf/infer_batch_ms", "infer ms/batch", "{:.1f}"),
    ("perf/peak_memory_mb", "peak mem MB", "{:.0f}"),
    ("model/params", "params", "{:,.0f}"),
    ("time/total_s", "time s", "{:.1f}"),
]


def mean_std(values: list[float]) -> tuple[float, float]:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def fmt(values: list[float], pattern: str = "{:.4g}", std_pattern: str = "{:.2g}") -> str:
    m, s = mean_std(values)
    if math.isnan(m):
        return "–"
    return pattern.format(m) + (f" ± {std_pattern.format(s)}" if len(values) > 1 and s > 0 else "")


def task_tables(results: list[Any]) -> list[Table]:
    """``results``: RunResult-like objects (config, status, metrics, reason, references...)."""
    by_task: dict[str, list[Any]] = defaultdict(list)
    for r in results:
        by_task[r.config.task.label].append(r)
    tables = []
    for label, runs in by_task.items():
        primary, higher = runs[0].primary_metric, runs[0].higher_is_better
        metric_names = [primary] + sorted(
            {k.split("/", 1)[1] for r in runs for k in r.metrics if k.startswith("test/")} - {primary}
        )
        rows = []
        by_model: dict[str, list[Any]] = defaultdict(list)
        for r in runs:
            by_model[r.config.model].append(r)
        for model, model_runs in by_model.items():
            ok = [r for r in model_runs if r.status in ("finished", "cached")]
            failed = [r for r in model_runs if r.status in ("failed", "refused")]
            score, _ = mean_std([r.metrics.get(f"test/{primary}", math.nan) for r in ok])
            n_failed = sum(r.status == "failed" for r in model_runs)
            cells = [model, f"{len(ok)}" + (f" (+{n_failed} failed)" if n_failed else "")]
            cells += [fmt([r.metrics.get(f"test/{m}", math.nan) for r in ok]) for m in metric_names]
            cells += [fmt([r.metrics.get(k, math.nan) for r in ok], p, p) for k, _, p in PERF_COLUMNS]
            note = "; ".join(f"seed {r.config.seed} {r.status}: {r.reason}" for r in failed)
            timed = [str(r.config.seed) for r in ok if r.stop_reason == "max_time"]
            if timed:  # trained as long as the machine allowed, not for its step budget
                note = (note + "; " if note else "") + f"time limit hit (seed {', '.join(timed)})"
            if any(r.status == "cached" for r in ok):
                note = (note + "; " if note else "") + "recorded earlier"
            rows.append((math.isnan(score), -score if higher else score, cells + [note]))
        rows.sort(key=lambda row: (row[0], row[1]))
        arrow = "↑" if higher else "↓"
        table = Table(title=f"{label}: test split, ranked on {primary} {arrow}", title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("model")
        table.add_column("seeds", justify="right")
        for m in metric_names:
            table.add_column(m + (f" {arrow}" if m == primary else ""), justify="right")
        for _, header, _ in PERF_COLUMNS:
            table.add_column(header, justify="right")
        table.add_column("notes")
        for rank, (failed_only, _, cells) in enumerate(rows, 1):
            table.add_row("–" if failed_only else str(rank), *cells)
        refs = runs[0].references or next((r.references for r in runs if r.references), {})
        published = next((r.published for r in runs if r.published), [])
        caption = [("reference: " + ", ".join(f"{k} {v:.4g}" for k, v in refs.items())) if refs else "",
                   describe(published)]
        if any(caption):
            table.caption = "\n".join(c for c in caption if c)
            table.caption_justify = "left"
        tables.append(table)
    return tables
