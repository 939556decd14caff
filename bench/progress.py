"""Live progress of a sweep: the overall count, the current run's steps, its loss and
latest validation score, and one line per finished run."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


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
        self.current: Any = None
        self.primary = ""

    def __enter__(self) -> SweepProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    # Listener protocol (called by the runner)
    def on_start(self, config: Any, max_steps: int) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.primary = ""
        self.current = self.progress.add_task(f"  {config.label}", total=max_steps, info="")

    def on_step(self, step: int, loss: float) -> None:
        shown = f"loss {loss:.4g}" if loss == loss else "loss …"  # nan: not read yet
        self.progress.update(self.current, completed=step, info=f"{shown}{self.primary}")

    def on_validation(self, step: int, metrics: dict[str, float]) -> None:
        name, value = next(iter(metrics.items()))
        self.primary = f"  val/{name} {value:.4g}"

    def on_evaluate(self) -> None:
        self.progress.update(self.current, info=f"evaluating the best checkpoint{self.primary}")

    def on_wait(self, result: Any) -> None:
        if self.current is not None:
            self.progress.remove_task(self.current)
        self.current = self.progress.add_task(f"  {result.config.label}", total=None,
                                              info=f"waiting: {result.reason}")

    def finished(self, result: Any) -> None:
        self.done += 1
        self.progress.update(self.sweep, completed=self.done)
        key = f"test/{result.primary_metric}"
        if result.status == "failed":
            line = f"[red]failed[/]   {result.config.label}: {result.reason}"
        elif result.status == "refused":
            line = f"[yellow]refused[/]  {result.config.label}: {result.reason}"
        else:
            score = result.metrics.get(key)
            text = f"{key} {score:.4g}" if score is not None else ""
            state = "[green]done[/]  " if result.status == "finished" else "[cyan]cached[/]"
            line = f"{state}   {result.config.label}: {text}  ({result.metrics.get('time/total_s', 0):.1f} s)"
        self.console.print(f"[{self.done}/{self.total}] {line}", highlight=False)
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None


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
        if self.current is not None:
            self.progress.remove_task(self.current)
            self.current = None
