"""Leaderboard reports from the runs recorded in MLflow: Markdown, CSV and one
self-contained HTML file (tables, plots and the runs' own figures, all inline).

Reads any tracking URI (the embedded SQLite store by default, or a server). Tuning trials
and study runs are left out: a leaderboard compares runs scored on the test split.
A row is one configuration (model, resolved hyper-parameters, training settings and
budget), aggregated over seeds, never an average of several configurations: two
configurations of one model are two rows, labelled by the settings that differ. When a
configuration was run several times with one seed, the latest run counts. When the store
holds ``bench scale`` sweeps, the HTML report adds the latest one's efficiency table and
plot. Torch-free.
"""

from __future__ import annotations

import base64
import html
import io
import math
import statistics
import time
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.config import configuration_id
from bench.summary import PERF_COLUMNS as PERF  # the same speed, memory and size columns as bench run's tables
from tasks.published import Published, describe, from_tags

ENV_TAGS = ["device", "version.torch", "version.lightning", "version.mlflow", "version.python", "version.seqbench",
            "git_commit", "profile", "host"]
TIE_P = 0.05  # Welch's t-test: a difference with p >= this is within seed-to-seed noise


@dataclass
class Run:
    run_id: str
    task: str  # the task's name (experiment seqbench/<task>)
    variant: str  # the task as run: copy, copy:T200, ...
    model: str
    seed: str
    status: str
    start_time: int
    metrics: dict[str, float]
    tags: dict[str, str]
    params: dict[str, str] = field(default_factory=dict)

    @property
    def row(self) -> str:
        """The model's name in a leaderboard (before the settings that tell its rows apart)."""
        return f"{self.model} (tuned)" if self.tags.get("tuned.study") else self.model

    @property
    def config_id(self) -> str:
        """The configuration this run is a seed of (its resolved settings, seed left out)."""
        if self.params:
            return configuration_id(self.params)
        return self.tags.get("config_id", "")  # a run recorded without its configuration

    @property
    def time_limited(self) -> bool:
        return self.tags.get("stop_reason") == "max_time"


@dataclass
class Row:
    label: str
    runs: list[Run]
    rank: int = 0
    tied: bool = False  # within noise of the first row of its rank (shares that rank)
    p_value: float = math.nan  # of the test against that row

    def values(self, key: str) -> list[float]:
        return [r.metrics[key] for r in self.runs if key in r.metrics and math.isfinite(r.metrics[key])]

    def mean(self, key: str) -> float:
        v = self.values(key)
        return statistics.fmean(v) if v else math.nan

    def std(self, key: str) -> float:
        v = self.values(key)
        return statistics.stdev(v) if len(v) > 1 else math.nan


@dataclass
class Board:
    variant: str
    task: str
    primary: str
    higher_is_better: bool
    metrics: list[str]  # test metrics, primary first
    rows: list[Row]
    failed: list[Run] = field(default_factory=list)
    references: dict[str, str] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)  # figures papers report for the task

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


def load_runs(client: Any, tasks: list[str] | None = None, models: list[str] | None = None,
              sweep: str | None = None, since_ms: int | None = None) -> list[Run]:
    """Leaderboard runs (not tuning trials or studies) from every seqbench experiment."""
    from bench.tracking import EXPERIMENT_PREFIX

    experiments = {e.experiment_id: e.name.removeprefix(EXPERIMENT_PREFIX) for e in client.search_experiments()
                   if e.name.startswith(EXPERIMENT_PREFIX)}
    if tasks is not None:
        experiments = {i: t for i, t in experiments.items() if t in tasks}
    if not experiments:
        return []
    clauses = []
    if sweep:
        clauses.append(f"tags.sweep_id = '{sweep}'")
    if since_ms is not None:
        clauses.append(f"attributes.start_time >= {since_ms}")
    runs, token = [], None
    while True:
        page = client.search_runs(list(experiments), filter_string=" and ".join(clauses), max_results=5000,
                                  page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            break
    out = []
    for r in runs:
        tags = r.data.tags
        if tags.get("kind", "run") != "run" or "model" not in tags:
            continue
        if models is not None and tags["model"] not in models:
            continue
        out.append(Run(r.info.run_id, experiments[r.info.experiment_id], tags.get("task_variant", tags.get("task", "")),
                       tags["model"], tags.get("seed", "?"), r.info.status, r.info.start_time or 0,
                       dict(r.data.metrics), dict(tags), dict(r.data.params)))
    return out


def unfinished_reason(run: Run, now: float | None = None) -> str:
    """Why a run is not FINISHED: its recorded reason, or for a RUNNING one how long ago it
    last showed life (the next bench run marks an abandoned one FAILED)."""
    from bench.tracking import STALE_AFTER_S, last_sign_of_life

    if run.status != "RUNNING":
        return run.tags.get("failure_reason", "no reason recorded")
    ago = (now or time.time()) - last_sign_of_life(run.tags, run.start_time)
    when = f"{ago:.0f} s" if ago < 120 else f"{ago / 60:.0f} min" if ago < 7200 else f"{ago / 3600:.1f} h"
    if ago > STALE_AFTER_S:
        return f"no heartbeat for {when}: abandoned (the next bench run marks it FAILED)"
    return f"still running (last heartbeat {when} ago)"


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of Welch's t-test; NaN when either side has fewer than 2 seeds."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy import stats

    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nearly equal seeds: "precision loss"
        return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def boards(runs: list[Run], catalog: dict[str, Any]) -> list[Board]:
    """One leaderboard per task variant, ranked on the primary test metric."""
    by_variant: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_variant[r.variant].append(r)
    out = []
    for variant in sorted(by_variant):
        group = by_variant[variant]
        task = group[0].task
        info = catalog["tasks"].get(task, {})
        primary = info.get("primary_metric") or group[0].tags.get("primary_metric", "")
        higher = bool(info.get("higher_is_better", True))
        finished = [r for r in group if r.status == "FINISHED"]
        latest: dict[tuple[str, str, str], Run] = {}
        for r in sorted(finished, key=lambda r: r.start_time):
            latest[(r.row, r.config_id, r.seed)] = r  # a configuration run again: the latest run counts
        rows_by: dict[tuple[str, str], list[Run]] = defaultdict(list)
        for (label, config_id, _), r in sorted(latest.items()):
            rows_by[(label, config_id)].append(r)
        rows = [Row(label, rs) for label, rs in row_labels(rows_by).items()]
        key = f"test/{primary}"
        rows.sort(key=lambda row: (math.isnan(row.mean(key)),
                                   -row.mean(key) if higher else row.mean(key), row.label))
        leader = None  # the first row of the current rank: ties are judged against it, so they do not chain
        for i, row in enumerate(rows):
            if leader is not None:
                row.p_value = welch_p(leader.values(key), row.values(key))
                row.tied = not math.isnan(row.p_value) and row.p_value >= TIE_P
            if row.tied:
                row.rank = leader.rank
            else:
                row.rank, leader = i + 1, row
        others = sorted({k.split("/", 1)[1] for r in finished for k in r.metrics if k.startswith("test/")} - {primary})
        references = {k.split(".", 1)[1]: v for r in finished for k, v in r.tags.items() if k.startswith("reference.")}
        published = next((p for p in (from_tags(r.tags) for r in finished) if p), [])
        failed = [r for r in group if r.status != "FINISHED"]  # failed, stopped, abandoned or still running
        out.append(Board(variant, task, primary, higher, [primary, *others], rows, failed, references, published))
    return out


SHOWN_DIFFERENCES = 4  # settings named in a row's label; more are summed up as "+N more"


def row_labels(rows_by: dict[tuple[str, str], list[Run]]) -> dict[str, list[Run]]:
    """Rows by label. A model with one configuration on a board is its name; a model with
    several gets, on each row, the settings in which its configurations differ:
    ``lstm (profile=standard, train.lr=0.001)``."""
    configs_of: dict[str, list[str]] = defaultdict(list)
    for label, config_id in rows_by:
        configs_of[label].append(config_id)
    out: dict[str, list[Run]] = {}
    for (label, config_id), runs in rows_by.items():
        if len(configs_of[label]) == 1:
            out[label] = runs
            continue
        params = [rows_by[(label, c)][0].params for c in configs_of[label]]
        keys = {k for p in params for k in p if k != "seed" and len({q.get(k, "–") for q in params}) > 1}
        if "profile" in keys:  # budget settings follow from the profile: naming it says them
            keys = {k for k in keys if not k.startswith("budget.")}
        order = ("profile", "model.", "train.", "task.", "budget.")
        keys = sorted(keys, key=lambda k: (next((i for i, o in enumerate(order) if k.startswith(o)), 9), k))
        own = runs[0].params
        shown = [f"{k}={own.get(k, '–')}" for k in keys[:SHOWN_DIFFERENCES]]
        if len(keys) > SHOWN_DIFFERENCES:
            shown.append(f"+{len(keys) - SHOWN_DIFFERENCES} more")
        name = f"{label} ({', '.join(shown)})" if shown else f"{label} [{config_id}]"
        out[name if name not in out else f"{name} [{config_id}]"] = runs
    return out


def stop_note(row: Row) -> str:
    """Says which seeds stopped on the time limit (the guard) rather than their step budget:
    such a row trained for as long as the machine allowed, not for its budget."""
    seeds = [r.seed for r in row.runs if r.time_limited]
    return f"time limit hit (seed {', '.join(seeds)})" if seeds else ""


def average_ranks(all_boards: list[Board]) -> list[tuple[str, float, int]]:
    """(row label, mean rank, number of tasks) over the leaderboards each model appears on."""
    ranks: dict[str, list[int]] = defaultdict(list)
    for b in all_boards:
        for row in b.rows:
            if row.values(f"test/{b.primary}"):
                ranks[row.label].append(row.rank)
    return sorted(((m, statistics.fmean(r), len(r)) for m, r in ranks.items()), key=lambda x: (x[1], -x[2], x[0]))


def environment(runs: list[Run]) -> dict[str, list[tuple[str, int]]]:
    """Each environment tag's values over the reported runs, with how many runs had each."""
    out = {}
    for key in ENV_TAGS:
        counts = Counter(r.tags.get(key, "unknown") for r in runs)
        out[key] = counts.most_common()
    return out


# -- formatting -------------------------------------------------------------------------------
def env_summary(values: list[tuple[str, int]]) -> str:
    """One environment tag's values: the value alone when all runs share it, else each with its run count."""
    if len(values) == 1:
        return values[0][0]
    return "; ".join(f"{v} ({n} run{'' if n == 1 else 's'})" for v, n in values)


def fmt(row: Row, key: str, pattern: str = "{:.4g}", std_pattern: str = "{:.2g}") -> str:
    m, s, n = row.mean(key), row.std(key), len(row.values(key))
    if math.isnan(m):
        return "–"
    return pattern.format(m) + (f" ± {std_pattern.format(s)}" if n > 1 and not math.isnan(s) else "")


def table_cells(board: Board) -> tuple[list[str], list[list[str]]]:
    header = ["rank", "model", "n"] + [f"{m} {board.arrow}" if m == board.primary else m for m in board.metrics]
    header += [h for _, h, _ in PERF] + ["notes"]
    body = []
    for row in board.rows:
        rank = f"={row.rank}" if row.tied else str(row.rank)
        cells = [rank, row.label, str(len(row.runs))]
        cells += [fmt(row, f"test/{m}") for m in board.metrics]
        cells += [fmt(row, k, p, p) for k, _, p in PERF]
        body.append(cells + [stop_note(row)])
    return header, body


TIE_NOTE = (f"Rank: on the mean test {{primary}} over seeds (± is the standard deviation, n the number of seeds). "
            f"'=k' marks a row whose difference to the first row ranked k is within seed-to-seed noise (Welch's "
            f"t-test on the per-seed values, p ≥ {TIE_P}); it shares that rank. With few seeds the test separates "
            "only large, steady differences: run more seeds to rank closer rows apart. A row with fewer than two "
            "seeds, or beside one, is ranked by its value alone.")


def markdown(all_boards: list[Board], env: dict[str, list[tuple[str, int]]], title: str) -> str:
    lines = [f"# {title}", ""]
    for b in all_boards:
        header, body = table_cells(b)
        lines += [f"## {b.variant}: test split, ranked on {b.primary} {b.arrow}", "",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        lines.append("")
        if b.references:
            lines += ["Reference: " + ", ".join(f"{k} {v}" for k, v in b.references.items()), ""]
        if b.published:
            lines += [describe(b.published, "Published"), ""]
        if b.failed:
            lines += ["Runs that did not finish:", ""]
            lines += [f"- {r.model}, seed {r.seed}: {r.status.lower()}, {unfinished_reason(r)}" for r in b.failed]
            lines.append("")
    ranks = average_ranks(all_boards)
    if ranks:
        lines += ["## Across tasks: average rank", "", "| model | average rank | tasks |", "|---|---|---|"]
        lines += [f"| {m} | {r:.2f} | {n} |" for m, r, n in ranks]
        lines.append("")
    lines += [TIE_NOTE.format(primary="primary metric"), "", "## Environment", ""]
    for key, values in env.items():
        lines.append(f"- {key}: {env_summary(values)}")
    return "\n".join(lines) + "\n"


def frames(all_boards: list[Board]) -> tuple[Any, Any]:
    """(leaderboard, runs) as pandas DataFrames: one row per model and task, one per run."""
    import pandas as pd

    board_rows, run_rows = [], []
    for b in all_boards:
        for row in b.rows:
            rec: dict[str, Any] = {"task": b.variant, "model": row.label, "rank": row.rank, "tied": row.tied,
                                   "p_vs_rank_leader": row.p_value, "n": len(row.runs), "primary_metric": b.primary,
                                   "higher_is_better": b.higher_is_better, "config_id": row.runs[0].config_id,
                                   "time_limited_runs": sum(r.time_limited for r in row.runs)}
            for m in b.metrics:
                rec[f"test/{m}_mean"], rec[f"test/{m}_std"] = row.mean(f"test/{m}"), row.std(f"test/{m}")
            for k, _, _ in PERF:
                rec[f"{k}_mean"], rec[f"{k}_std"] = row.mean(k), row.std(k)
            board_rows.append(rec)
            for r in row.runs:
                run_rows.append({"task": b.variant, "model": row.label, "seed": r.seed, "run_id": r.run_id,
                                 "status": r.status, "config_id": r.config_id,
                                 "stop_reason": r.tags.get("stop_reason", ""),
                                 **{k: v for k, v in sorted(r.metrics.items())}})
        for r in b.failed:
            run_rows.append({"task": b.variant, "model": r.row, "seed": r.seed, "run_id": r.run_id,
                             "status": r.status, "failure_reason": unfinished_reason(r)})
    return pd.DataFrame(board_rows), pd.DataFrame(run_rows)


# -- plots and HTML -------------------------------------------------------------------------
def _png(figure: Any) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    figure.savefig(buf, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buf.getvalue()).decode()


def pareto(points: list[tuple[float, float]], higher_is_better: bool) -> list[int]:
    """Indices of the points no other point beats on both quality (by direction) and throughput."""
    def better(a: tuple[float, float], b: tuple[float, float]) -> bool:  # a dominates b
        qa, qb = (a[0], b[0]) if higher_is_better else (-a[0], -b[0])
        return qa >= qb and a[1] >= b[1] and (qa > qb or a[1] > b[1])

    return [i for i, p in enumerate(points) if not any(better(q, p) for j, q in enumerate(points) if j != i)]


def plots(board: Board, curves: dict[str, list[list[tuple[int, float]]]]) -> dict[str, str]:
    """Base64 PNGs: quality vs throughput (Pareto front marked), peak memory, learning curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = {}
    key = f"test/{board.primary}"
    pts = [(row.label, row.mean(key), row.mean("perf/train_samples_per_s")) for row in board.rows]
    pts = [p for p in pts if math.isfinite(p[1]) and math.isfinite(p[2])]
    if pts:
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        front = set(pareto([(q, t) for _, q, t in pts], board.higher_is_better))
        for i, (label, q, t) in enumerate(pts):
            ax.scatter(t, q, s=60, marker="*" if i in front else "o", color="C3" if i in front else "C0", zorder=3)
            ax.annotate(label, (t, q), textcoords="offset points", xytext=(5, 4), fontsize=8)
        line = sorted((pts[i][2], pts[i][1]) for i in front)
        ax.plot([x for x, _ in line], [y for _, y in line], color="C3", lw=1, ls="--", label="Pareto front")
        ax.set_xscale("log")
        ax.set_xlabel("train samples/s (log)")
        ax.set_ylabel(f"test {board.primary} {board.arrow}")
        ax.set_title(f"{board.variant}: quality vs training throughput")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["tradeoff"] = _png(fig)
    mem = [(row.label, row.mean("perf/peak_memory_mb")) for row in board.rows]
    mem = [m for m in mem if math.isfinite(m[1])]
    if mem:
        fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(mem) + 1.4))
        ax.barh([m for m, _ in mem], [v for _, v in mem], color="C2")
        ax.invert_yaxis()
        ax.set_xlabel("peak memory MB (mean over seeds)")
        ax.set_title(f"{board.variant}: peak memory")
        fig.tight_layout()
        out["memory"] = _png(fig)
    if any(curve for seed_curves in curves.values() for curve in seed_curves):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        for i, (label, seed_curves) in enumerate(curves.items()):
            for j, curve in enumerate(seed_curves):
                if curve:
                    ax.plot([s for s, _ in curve], [v for _, v in curve], color=f"C{i % 10}", lw=1.2, alpha=0.8,
                            marker="o", ms=3, label=label if j == 0 else None)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(f"validation {board.primary} {board.arrow}")
        ax.set_title(f"{board.variant}: learning curves (each seed)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        out["curves"] = _png(fig)
    return out


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:0.8em 0;font-size:0.9em}
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}
th{background:#f2f2f2} td.l,th.l{text-align:left} tr.tied td{background:#fafaf0}
h2{border-bottom:2px solid #ddd;padding-bottom:0.2em;margin-top:2em}
td{white-space:nowrap} .plots img{max-width:100%;margin:0.3em}
.figs{display:flex;flex-wrap:wrap} .figs figure{width:48%;margin:0.3em} .figs img{width:100%;border:1px solid #eee}
figcaption{font-size:0.85em;color:#555}
.note{color:#555;font-size:0.9em} .failed{color:#a00}
"""


def html_table(header: list[str], body: list[list[str]], left: set[int], tied: list[bool] | None = None) -> str:
    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="l"' if i in left else ""
        return f"<{tag}{cls}>{html.escape(text)}</{tag}>"

    rows = ["<tr>" + "".join(cell("th", i, h) for i, h in enumerate(header)) + "</tr>"]
    for n, cells in enumerate(body):
        cls = ' class="tied"' if tied and tied[n] else ""
        rows.append(f"<tr{cls}>" + "".join(cell("td", i, c) for i, c in enumerate(cells)) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def html_report(all_boards: list[Board], env: dict[str, list[tuple[str, int]]], title: str,
                curves: dict[str, dict[str, list[list[tuple[int, float]]]]],
                images: dict[str, list[tuple[str, str]]], scale: str = "") -> str:
    """One file: every image is inline (data: URIs), no script, nothing fetched."""
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
             f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    ranks = average_ranks(all_boards)
    if ranks:
        parts.append("<h2 id=\"summary\">Across tasks: average rank</h2>")
        parts.append(html_table(["model", "average rank", "tasks"], [[m, f"{r:.2f}", str(n)] for m, r, n in ranks],
                                {0}))
    for b in all_boards:
        header, body = table_cells(b)
        anchor = html.escape(b.variant, quote=True)
        parts.append(f"<section class=\"task\" id=\"task-{anchor}\"><h2>{html.escape(b.variant)}: test split, "
                     f"ranked on {html.escape(b.primary)} {b.arrow}</h2>")
        parts.append(html_table(header, body, {1}, [r.tied for r in b.rows]))
        if b.references:
            parts.append("<p class=\"note\">Reference: " + html.escape(", ".join(f"{k} {v}"
                                                                                 for k, v in b.references.items()))
                         + "</p>")
        if b.published:
            parts.append(f"<p class=\"note published\">{html.escape(describe(b.published, 'Published'))}</p>")
        if b.failed:
            parts.append("<p class=\"failed\">Runs that did not finish:</p><ul class=\"failed\">" + "".join(
                f"<li>{html.escape(r.model)}, seed {html.escape(r.seed)}: {r.status.lower()}, "
                f"{html.escape(unfinished_reason(r))}</li>" for r in b.failed) + "</ul>")
        pngs = plots(b, curves.get(b.variant, {}))
        parts.append("<div class=\"plots\">" + "".join(
            f"<img class=\"plot\" alt=\"{name}\" src=\"data:image/png;base64,{data}\">" for name, data in pngs.items())
            + "</div>")
        if images.get(b.variant):
            parts.append("<div class=\"figs\">" + "".join(
                f"<figure><img class=\"figure\" alt=\"{html.escape(alt, quote=True)}\" "
                f"src=\"data:image/png;base64,{data}\"><figcaption>{html.escape(alt)}</figcaption></figure>"
                for alt, data in images[b.variant]) + "</div>")
        parts.append("</section>")
    if all_boards:
        parts.append(f"<p class=\"note\">{html.escape(TIE_NOTE.format(primary='primary metric'))}</p>")
    if scale:
        parts.append(scale)
    if not all_boards:  # a report of a bench scale sweep alone: no leaderboard runs to describe
        return "\n".join([*parts, "</body></html>"])
    parts.append("<h2 id=\"environment\">Environment</h2><ul>" + "".join(
        f"<li><b>{html.escape(k)}</b>: {html.escape(env_summary(vals))}</li>"
        for k, vals in env.items()) + "</ul></body></html>")
    return "\n".join(parts)


def gather_curves(client: Any, board: Board) -> dict[str, list[list[tuple[int, float]]]]:
    """Each run's validation curve of the primary metric (``val_curve/…``, one point per
    validation during training)."""
    key = f"val_curve/{board.primary}"
    out: dict[str, list[list[tuple[int, float]]]] = {}
    for row in board.rows:
        out[row.label] = [[(m.step, m.value) for m in sorted(client.get_metric_history(r.run_id, key),
                                                             key=lambda m: m.step)]
                          for r in row.runs]
    return out


def gather_images(client: Any, board: Board) -> list[tuple[str, str]]:
    """The PNG figures the runs recorded (forecasts, confusion matrices): one run per row."""
    out = []
    for row in board.rows:
        run = row.runs[0]
        try:
            files = [a.path for a in client.list_artifacts(run.run_id) if a.path.endswith(".png")]
            for name in files:
                local = client.download_artifacts(run.run_id, name)
                out.append((f"{row.label}, seed {run.seed}: {name}", base64.b64encode(Path(local).read_bytes())
                            .decode()))
        except Exception:  # noqa: BLE001 - an artifact store we cannot read costs the figure, not the report
            continue
    return out


# -- efficiency: the latest bench scale sweep --------------------------------------------------
@dataclass
class ScaleSweep:
    sweep_id: str
    device: str
    start_time: int
    results: list[Any]  # bench.scale_worker.PointResult, read back from the store
    plot_png: str  # base64 of the sweep's recorded plot ("" when it has none)


def load_scale_sweep(client: Any) -> ScaleSweep | None:
    """The latest ``bench scale`` sweep recorded in the store, with its points and plot."""
    from bench.scale import EXPERIMENT, PLOT_NAME, POINT_KIND, SWEEP_KIND
    from bench.scale_worker import PointResult
    from bench.tracking import EXPERIMENT_PREFIX

    exp = client.get_experiment_by_name(EXPERIMENT_PREFIX + EXPERIMENT)
    if exp is None:
        return None
    ids = [exp.experiment_id]
    parents = client.search_runs(ids, filter_string=f"tags.kind = '{SWEEP_KIND}'", max_results=1,
                                 order_by=["attributes.start_time DESC"])
    if not parents:
        return None
    parent = parents[0]
    sweep_id = parent.data.tags.get("sweep_id", "")
    points = client.search_runs(ids, filter_string=f"tags.kind = '{POINT_KIND}' and tags.sweep_id = '{sweep_id}'",
                                max_results=5000)
    results = [PointResult.from_run(r.data.params, r.data.tags, r.data.metrics) for r in points]
    order = parent.data.params.get("models", "").split(",")
    results.sort(key=lambda r: (order.index(r.point.model) if r.point.model in order else len(order),
                                r.point.model, r.point.batch_size, r.point.length))
    try:
        png = base64.b64encode(Path(client.download_artifacts(parent.info.run_id, PLOT_NAME)).read_bytes()).decode()
    except Exception:  # noqa: BLE001 - a sweep cut short has no plot; the table still stands
        png = ""
    return ScaleSweep(sweep_id, parent.data.tags.get("device", "unknown"), parent.info.start_time or 0, results, png)


SCALE_NOTE = ("Each point trains the model's default backbone with a class-per-sequence head on random tokens of "
              "the given length: samples/s over the timed steps of forward, backward and AdamW, and of forward "
              "passes in eval mode; peak MB is the most memory the point added (GPU: allocated by torch; CPU: "
              "resident set). The slope is that of log(training time per sample) against log(length): about 1 "
              "when cost grows linearly with length, 2 when quadratically. Points after one that ran out of "
              "memory or time are skipped.")


def scale_html(sweep: ScaleSweep) -> str:
    from datetime import datetime

    from bench.scale import HEADER, SLOPE_HEADER, fit_slopes, slope_rows, table_rows

    when = datetime.fromtimestamp(sweep.start_time / 1000).strftime("%Y-%m-%d %H:%M")
    parts = ["<section class=\"scale\" id=\"efficiency\"><h2>Efficiency: cost against sequence length</h2>",
             f"<p class=\"note\">Sweep {html.escape(sweep.sweep_id)} on {html.escape(sweep.device)}, "
             f"started {when}.</p>",
             html_table(HEADER, table_rows(sweep.results), {0, 7}),
             html_table(SLOPE_HEADER, slope_rows(fit_slopes(sweep.results)), {0})]
    if sweep.plot_png:
        parts.append(f"<div class=\"plots\"><img class=\"plot\" alt=\"scale\" "
                     f"src=\"data:image/png;base64,{sweep.plot_png}\"></div>")
    parts.append(f"<p class=\"note\">{html.escape(SCALE_NOTE)}</p></section>")
    return "".join(parts)


def write(client: Any, runs: list[Run], catalog: dict[str, Any], out_dir: Path, formats: list[str],
          title: str) -> dict[str, Path]:
    """Write the report files; returns them by format."""
    all_boards = boards(runs, catalog)
    env = environment([r for r in runs if r.status == "FINISHED"] or runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if "md" in formats:
        written["md"] = out_dir / "leaderboard.md"
        written["md"].write_text(markdown(all_boards, env, title))
    if "csv" in formats:
        board_frame, run_frame = frames(all_boards)
        written["csv"] = out_dir / "leaderboard.csv"
        board_frame.to_csv(written["csv"], index=False)
        written["runs-csv"] = out_dir / "runs.csv"
        run_frame.to_csv(written["runs-csv"], index=False)
    if "html" in formats:
        curves = {b.variant: gather_curves(client, b) for b in all_boards}
        images = {b.variant: gather_images(client, b) for b in all_boards}
        written["html"] = out_dir / "report.html"
        scale = load_scale_sweep(client)
        written["html"].write_text(html_report(all_boards, env, title, curves, images,
                                               scale_html(scale) if scale else ""))
    return written
