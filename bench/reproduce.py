"""``bench reproduce``: the harness held against published figures.

``bench/reproductions.toml`` lists reference experiments: what to run, which metric, the
published value with its source, and a tolerance. Each is run through the normal runner
and recorded in MLflow like any run (tag ``reproduction``), then the measured value is
compared with the published one. A regression in the science then fails as visibly as a
regression in the code.
"""

from __future__ import annotations

import math
import statistics
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError

REFERENCE_FILE = Path(__file__).with_name("reproductions.toml")
CHECKS = ("at_most", "at_least", "within")
AGGREGATES = {"mean": statistics.fmean, "median": statistics.median}


@dataclass(frozen=True)
class Experiment:
    """One reference experiment, as written in the reference file."""

    name: str
    about: str
    models: str
    tasks: str
    metric: str
    published: float
    source: str
    check: str
    tolerance: float
    profile: str = "standard"
    seeds: str = "0"
    set: tuple[str, ...] = ()
    aggregate: str = "mean"

    def passes(self, measured: float) -> bool:
        if not math.isfinite(measured):
            return False
        if self.check == "at_most":
            return measured <= self.published + self.tolerance
        if self.check == "at_least":
            return measured >= self.published - self.tolerance
        return abs(measured - self.published) <= self.tolerance

    @property
    def bar(self) -> str:
        """The condition as a person reads it: '≤ 0.401'."""
        if self.check == "at_most":
            return f"≤ {self.published + self.tolerance:.4g}"
        if self.check == "at_least":
            return f"≥ {self.published - self.tolerance:.4g}"
        return f"{self.published:.4g} ± {self.tolerance:.4g}"


@dataclass
class Outcome:
    experiment: Experiment
    measured: float = math.nan
    per_seed: list[float] = field(default_factory=list)
    passed: bool = False
    run_s: float = 0.0  # the runs' own recorded wall time (also for runs recorded earlier)
    wall_s: float = 0.0  # this command's time for the experiment
    runs: int = 0
    cached: int = 0
    note: str = ""


def load_experiments(path: Path | None = None) -> list[Experiment]:
    """The reference experiments (of ``REFERENCE_FILE`` unless another file is named); a
    malformed file is a one-line error naming the entry."""
    path = path or REFERENCE_FILE
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise BenchError(f"Cannot read the reference experiments {path}: {e}") from None
    out, known = [], {f for f in Experiment.__dataclass_fields__}
    for i, entry in enumerate(data.get("experiment", [])):
        where = f"{path.name}, experiment {entry.get('name', i + 1)}"
        unknown = set(entry) - known
        if unknown:
            raise BenchError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        try:
            exp = Experiment(**{**entry, "set": tuple(entry.get("set", ())),
                                "published": float(entry["published"]), "tolerance": float(entry["tolerance"])})
        except (KeyError, TypeError, ValueError) as e:
            raise BenchError(f"{where}: {e}") from None
        if exp.check not in CHECKS:
            raise BenchError(f"{where}: check '{exp.check}' is not one of {', '.join(CHECKS)}")
        if exp.aggregate not in AGGREGATES:
            raise BenchError(f"{where}: aggregate '{exp.aggregate}' is not one of {', '.join(AGGREGATES)}")
        out.append(exp)
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise BenchError(f"{path.name}: experiment names must be unique")
    return out


def select(experiments: list[Experiment], only: str | None) -> list[Experiment]:
    """``--only a,b``: those experiments, every unknown name reported at once."""
    if not only:
        return experiments
    from bench.registry import select_names

    names = select_names("reference experiment", only, {e.name: e for e in experiments})
    return [e for e in experiments if e.name in names]


def plan(experiments: list[Experiment], catalog: dict[str, Any]) -> list[tuple[Experiment, list[Any]]]:
    """Each experiment with its resolved run configurations; every entry is checked before
    anything runs."""
    from bench.catalog import parse_request, resolve

    out = []
    for exp in experiments:
        try:
            request = parse_request(exp.models, exp.tasks, exp.seeds, exp.profile, list(exp.set), catalog)
            if request.refused:
                raise BenchError(request.refused[0][2])
            out.append((exp, resolve(request)))
        except BenchError as e:
            raise BenchError(f"Reference experiment {exp.name}: {e}") from None
    return out


def run_all(planned: list[tuple[Experiment, list[Any]]], runner: Any, progress: Any = None) -> list[Outcome]:
    """Run (or reuse) every experiment's runs and compare with the published figures."""
    items = [(config, {"reproduction": exp.name}) for exp, configs in planned for config in configs]
    results = iter(runner.sweep(items, on_result=progress.finished if progress is not None else None))
    outcomes = []
    for exp, configs in planned:
        outcome = Outcome(exp)
        for config in configs:
            result = next(results)
            outcome.runs += 1
            outcome.cached += result.status == "cached"
            outcome.wall_s += result.wall_s
            if result.status in ("finished", "cached"):
                outcome.per_seed.append(result.metrics.get(exp.metric, math.nan))
                outcome.run_s += result.metrics.get("time/total_s", 0.0)
                if result.stop_reason == "max_time":  # trained less than its budget: say so beside the verdict
                    steps = result.metrics.get("train/steps", math.nan)
                    outcome.note = f"seed {config.seed}: time limit hit after {steps:.0f} steps"
            else:
                outcome.note = f"seed {config.seed} {result.status}: {result.reason}"
        values = [v for v in outcome.per_seed if math.isfinite(v)]
        if values and len(values) == len(configs):
            outcome.measured = AGGREGATES[exp.aggregate](values)
        elif not outcome.note:
            outcome.note = f"{exp.metric} was not recorded"
        outcome.passed = exp.passes(outcome.measured)
        outcomes.append(outcome)
    return outcomes


def table(outcomes: list[Outcome]) -> Any:
    from rich.table import Table

    t = Table(title="Reference experiments: measured against published", title_justify="left")
    for col in ("experiment", "metric", "measured", "published", "pass if", "result", "seeds", "run time s", "source"):
        t.add_column(col, justify="right" if col in ("measured", "published", "seeds", "run time s") else "left")
    for o in outcomes:
        e = o.experiment
        seeds = ", ".join(f"{v:.4g}" for v in o.per_seed)
        result = "[green]pass[/]" if o.passed else "[red]miss[/]"
        measured = "–" if math.isnan(o.measured) else f"{o.measured:.4g}"
        note = f" ({o.note})" if o.note else ""
        t.add_row(e.name, f"{e.metric} ({e.aggregate})" if len(o.per_seed) > 1 else e.metric, measured,
                  f"{e.published:.4g}", e.bar, result + note, seeds, f"{o.run_s:.0f}", e.source)
    return t


def markdown(outcomes: list[Outcome], environment: str) -> str:
    lines = ["| experiment | metric | measured | published | pass if | result | per seed | run time s |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        e = o.experiment
        measured = "–" if math.isnan(o.measured) else f"{o.measured:.4g}"
        result = ("pass" if o.passed else "**miss**") + (f" ({o.note})" if o.note else "")
        lines.append(f"| {e.name} | {e.metric} ({e.aggregate}) | {measured} | {e.published:.4g} | {e.bar} | {result} "
                     f"| {', '.join(f'{v:.4g}' for v in o.per_seed)} | {o.run_s:.0f} |")
    lines += ["", f"Measured on {environment}.", "", "Sources:", ""]
    lines += [f"- {o.experiment.name}: {o.experiment.source}" for o in outcomes]
    return "\n".join(lines) + "\n"
