"""The one LightningModule that trains every (model, task) pair.

It joins a backbone to the head that the task's output needs and owns only the
training concerns: optimisation, a finite-loss check, and exact split metrics from the
task's additive statistics.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import nn

from tasks.registry import Batch, OutputSpec, Task


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
    def __init__(self, backbone: nn.Module, task: Task, train: dict[str, Any], predictor: bool = False) -> None:
        super().__init__()
        self.backbone = backbone
        # A predictor (a baseline) gives the task's output itself; a backbone needs a head.
        self.head = None if predictor else Head(task.output, backbone.step_dim, backbone.summary_dim)
        self.task = task
        self.train_cfg = train
        self.stats: dict[str, torch.Tensor] = {}
        self.results: dict[str, dict[str, float]] = {}  # last computed metrics per stage
        self.last_stats: dict[str, dict[str, torch.Tensor]] = {}  # their summed statistics
        self.history: list[tuple[int, dict[str, float]]] = []  # (step, metrics) per validation
        self._loss_sum, self._loss_n = 0.0, 0

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.head is None:
            return self.backbone(x, mask)
        steps, summary = self.backbone(x, mask)
        return self.head(steps, summary)

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = self.task.loss(self(batch["x"], batch["mask"]), batch)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"training loss became {loss.item()} at step {self.global_step}")
        self._loss_sum += loss.item()
        self._loss_n += 1
        return loss

    def _eval_step(self, batch: Batch) -> None:
        pred = self(batch["x"], batch["mask"])
        for k, v in self.task.batch_stats(pred, batch).items():
            self.stats[k] = self.stats[k] + v.detach() if k in self.stats else v.detach()

    def _eval_end(self, stage: str) -> dict[str, float]:
        self.last_stats[stage] = {k: v.cpu() for k, v in self.stats.items()}
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
            record = {f"val/{k}": v for k, v in metrics.items()}
            if self._loss_n:
                record["train/loss"] = self._loss_sum / self._loss_n
                self._loss_sum, self._loss_n = 0.0, 0
            self.history.append((self.global_step, record))

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.train_cfg["lr"], weight_decay=self.train_cfg["weight_decay"]
        )
