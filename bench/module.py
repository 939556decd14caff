"""The one LightningModule that trains every (model, task) pair.

It joins a backbone to the head that the task's output needs and owns only the
training concerns: the recipe (per-window normalisation of forecasting inputs, parameter
groups, the learning-rate schedule; see ``bench.recipe``), a finite-loss check, and exact
split metrics from the task's additive statistics. In a run over several processes, each
scores its share of a split and the statistics (and the running training loss) are summed
over them, so that every process holds the whole run's figures (``bench.distributed``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from bench.distributed import summed, world_size
from bench.recipe import WindowNorm, optimizer_and_schedule
from models.registry import HeadMaker, OutputShape
from tasks.registry import Batch, OutputSpec, Task

# The running training loss is read (which waits for the device) only every this many
# steps, at each validation and at the end of training, never at every step: that is
# where a non-finite loss fails the run, and what the live progress shows.
LOSS_READ_EVERY = 25

# Each validation during training is recorded under this prefix (a learning curve);
# ``val/<metric>`` is kept for the best checkpoint's values alone.
CURVE = "val_curve/"


class NonFiniteLossError(RuntimeError):
    pass


class Head(nn.Module):
    """Backbone vectors -> the task's output: (B, C), (B, T, C) or (B, *shape)."""

    def __init__(self, output: OutputSpec, step_dim: int, summary_dim: int) -> None:
        super().__init__()
        self.kind = output.kind
        if output.kind == "class_per_step":
            self.proj = nn.Linear(step_dim, output.n_classes)
        elif output.kind == "class_per_sequence":
            self.proj = nn.Linear(summary_dim, output.n_classes)
        else:
            self.shape = output.shape
            self.proj = nn.Linear(summary_dim, math.prod(output.shape))

    def forward(self, steps: torch.Tensor, summary: torch.Tensor) -> torch.Tensor:
        if self.kind == "class_per_step":
            return self.proj(steps)  # (B, T, C)
        out = self.proj(summary)  # (B, C) or (B, prod(shape))
        return out if self.kind == "class_per_sequence" else out.view(-1, *self.shape)


class SeqModule(L.LightningModule):
    def __init__(self, backbone: nn.Module, task: Task, train: dict[str, Any], predictor: bool = False,
                 total_steps: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        # A predictor (a baseline) gives the task's output itself; a backbone needs a head: its
        # own for the outputs it has one for (models.registry.HeadMaker), else a linear one.
        out = task.output
        self.head: nn.Module | None = None
        if not predictor:
            if isinstance(backbone, HeadMaker):
                self.head = backbone.make_head(OutputShape(out.kind, out.n_classes, out.shape))
            if self.head is None:
                self.head = Head(out, backbone.step_dim, backbone.summary_dim)
        # Forecasting: the model sees each window normalised and predicts in that space; its
        # output is mapped back before the loss and the metrics.
        norm = train.get("window_norm", "none")
        if norm != "none" and task.output.kind != "forecast":
            raise ValueError(f"window_norm={norm} applies to forecasting tasks only")
        self.window_norm = WindowNorm(norm, task.output.shape[-1]) if norm != "none" else None
        self.task = task
        self.train_cfg = train
        self.total_steps = total_steps  # the step budget the learning-rate schedule spans
        self.stats: dict[str, torch.Tensor] = {}
        self.results: dict[str, dict[str, float]] = {}  # last computed metrics per stage
        self.last_stats: dict[str, dict[str, torch.Tensor]] = {}  # their summed statistics
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, metrics) per validation
        self._loss_sum: torch.Tensor | None = None  # summed on the device since the last read
        self._loss_n = 0
        self.last_loss = math.nan  # the mean training loss at the last read

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.window_norm is not None:
            z, stats = self.window_norm.normalise(x)  # x (B, L, C)
            return self.window_norm.denormalise(self._predict(z, mask), stats)  # (B, H, C)
        return self._predict(x, mask)

    def _predict(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.backbone(x, mask)
        steps, summary = self.backbone(x, mask)
        return self.head(steps, summary)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self(batch["x"], batch["mask"]), batch)
        self._loss_sum = loss.detach() if self._loss_sum is None else self._loss_sum + loss.detach()
        self._loss_n += 1
        if self._loss_n % LOSS_READ_EVERY == 0:
            self.read_loss(reset=False)
        return loss

    def read_loss(self, reset: bool) -> float:
        """The mean training loss since the last reset (over every process's batches: they
        all read it at the same steps); a non-finite one fails the run in every process."""
        if self._loss_n:
            self.last_loss = float(summed(self._loss_sum)) / (self._loss_n * world_size())
            if not math.isfinite(self.last_loss):
                raise NonFiniteLossError(f"training loss became {self.last_loss} by step {self.global_step}")
        if reset:
            self._loss_sum, self._loss_n = None, 0
        return self.last_loss

    def on_train_end(self) -> None:
        self.read_loss(reset=False)

    def _eval_step(self, batch: Batch) -> None:
        pred = self(batch["x"], batch["mask"])
        for k, v in self.task.batch_stats(pred, batch).items():
            self.stats[k] = self.stats[k] + v.detach() if k in self.stats else v.detach()

    def _eval_end(self, stage: str) -> dict[str, float]:
        self.last_stats[stage] = {k: summed(v).cpu() for k, v in self.stats.items()}
        metrics = self.task.finalize(self.last_stats[stage])
        self.stats = {}
        self.results[stage] = metrics
        for k, v in metrics.items():
            self.log(f"{stage}/{k}", v, batch_size=1)
        return metrics

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        metrics = self._eval_end("val")
        if self.trainer.state.fn == "fit":
            record = {f"{CURVE}{k}": v for k, v in metrics.items()}
            if self._loss_n:
                record["train/loss"] = self.read_loss(reset=True)
            record["train/lr"] = self.trainer.optimizers[0].param_groups[0]["lr"]
            self.history.append((self.global_step, record))

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> dict[str, Any]:
        return optimizer_and_schedule(self, self.train_cfg, self.total_steps)
