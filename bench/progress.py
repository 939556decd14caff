"""Live progress of a sweep: the overall count, a row per run under way (its steps, loss and
latest validation score), and one line per finished run. The local runner has one run under
way at a time; a sweep spread over Ray workers has several (``row(key)``, one per run)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


class RunRow:
    """The live row of one run under way (a ``bench.runner.Listener``)."""

    def __init__(self, progress: Progress, description: str, total: float | None, info: str = "") -> None:
        self.progress = progress
        self.id: TaskID = progress.add_task(description, total=total, info=info)
        self.primary = ""

    def on_start(self, config: Any, max_steps: int) -> None:
        self.primary = ""
        self.progress.update(self.id, description=f"  {config.label}", total=max_steps, completed=0, info="")

    def on_step(self, step: int, loss: float) -> None:
        shown = f"loss {loss:.4g}" if loss == loss else "loss …"  # nan: not read yet
        self.progress.update(self.id, completed=step, info=f"{shown}{self.primary}")

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        name, value = next(iter(metrics.items()))
        self.primary = f"  val/{name} {value:.4g}"

    def on_evaluate(self) -> None:
        self.progress.update(self.id, info=f"evaluating the best checkpoint{self.primary}")

    def on_wait(self, result: Any) -> None:
        self.progress.update(self.id, description=f"  {result.config.label}", total=None,
                             info=f"waiting: {result.reason}")

    def remove(self) -> None:
        self.progress.remove_task(self.id)


class SweepProgress:
    def __init__(self, console: Console, total_runs: int) -> None:
        self.console = console
        self.total = total_runs
        self.done = 0
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[info]}"),
            console=console,
            transient=True,
        )
        self.sweep = self.progress.add_task("sweep", total=total_runs, info="")
        self.rows: dict[Any, RunRow] = {}

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def row(self, key: Any = None, label: str = "") -> RunRow:
        """The row of run ``key`` (made on first use; ``label`` until the run itself starts)."""
        if key not in self.rows:
            self.rows[key] = RunRow(self.progress, f"  {label}", None, "starting" if label else "")
        return self.rows[key]

    def drop(self, key: Any = None) -> None:
        row = self.rows.pop(key, None)
        if row is not None:
            row.remove()

    def in_flight(self, count: int, queued: int) -> None:
        """Runs under way on workers, and runs waiting for one (a sweep spread over Ray)."""
        self.progress.update(self.sweep, info=f"{count} running, {queued} waiting for a worker")

    # Listener protocol (called by the local runner: one run at a time)
    def on_start(self, config: Any, max_steps: int) -> None:
        self.drop()
        self.row().on_start(config, max_steps)

    def on_step(self, step: int, loss: float) -> None:
        self.row().on_step(step, loss)

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        self.row().on_validation(step, metrics)

    def on_evaluate(self) -> None:
        self.row().on_evaluate()

    def on_wait(self, result: Any) -> None:
        self.row().on_wait(result)

    def finished(self, result: Any, key: Any = None) -> None:
        self.done += 1
        self.progress.update(self.sweep, completed=self.done)
        key_metric = f"test/{result.primary_metric}"
        if result.status == "failed":
            line = f"[red]failed[/]   {result.config.label}: {result.reason}"
        elif result.status == "refused":
            line = f"[yellow]refused[/]  {result.config.label}: {result.reason}"
        else:
            score = result.metrics.get(key_metric)
            text = f"{key_metric} {score:.4g}" if score is not None else ""
            state = "[green]done[/]  " if result.status == "finished" else "[cyan]cached[/]"
            line = f"{state}   {result.config.label}: {text}  ({result.metrics.get('time/total_s', 0):.1f} s)"
        self.console.print(f"[{self.done}/{self.total}] {line}", highlight=False)
        self.drop(key)


class TuneProgress(SweepProgress):
    """A study's trials so far (across every worker), the current trial's run, and one line per
    trial this worker ran."""

    def study(self, name: str, counted: int) -> None:
        self.progress.update(self.sweep, description=name, total=self.total, completed=counted, info="")

    def trial_done(self, plan: Any, trial: Any, census: Any, best: Any) -> None:
        from optuna.trial import TrialState

        key = f"val/{plan.primary_metric}"
        if trial.state == TrialState.COMPLETE:
            what = f"{key} {trial.value:.4g}" + ("  (default configuration)" if trial.user_attrs.get("default") else "")
        elif trial.state == TrialState.PRUNED:
            what = f"[yellow]{trial.user_attrs.get('stop_reason', 'pruned')}[/]"
        else:
            what = f"[red]failed[/]: {trial.user_attrs.get('failure_reason', 'see its run')}"
        best_text = f"best {best.value:.4g} (trial {best.number})" if best is not None else "no completed trial yet"
        pruned, failed = census.n(TrialState.PRUNED), census.n(TrialState.FAIL)
        self.console.print(f"[{len(census.counted)}/{self.total}] {plan.name} trial {trial.number}: {what}  · "
                           f"{best_text} · {pruned} pruned, {failed} failed", highlight=False)
        self.progress.update(self.sweep, completed=len(census.counted),
                             info=f"{best_text}, {pruned} pruned, {failed} failed")
        self.drop()
