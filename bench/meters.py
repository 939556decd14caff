"""Speed and memory meters.

- Training throughput in steady state: wall time over the training steps (batch loading,
  forward, backward, optimizer step, the trainer's own work), the first
  ``meter_warmup_steps`` and every validation left out. Samples/s and real (unpadded)
  time steps/s, of the whole run: in a run over several processes, every process's samples.
- Inference latency: the median wall time of a forward pass over one evaluation batch.
- Peak memory: see ``bench.memory``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import lightning as L
import torch

from bench.distributed import summed


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Throughput(L.Callback):
    """Steady-state training throughput, and where a run's training time goes.

    The clock runs over the training steps after the first ``meter_warmup_steps``, and
    stops for each validation and what follows it (checkpointing, early stopping) until the
    next training step starts. The device is synchronised only where a timed stretch starts
    or stops, never at every step, and sample and token counts are summed on the device.
    """

    def __init__(self, meter_warmup_steps: int, tokens_of: Any) -> None:
        self.meter_warmup_steps = meter_warmup_steps
        self.tokens_of = tokens_of
        self.seconds = 0.0
        self.samples = 0
        self.steps = 0
        self.validation_s = 0.0  # validations during training
        self.after_validation_s = 0.0  # from each validation's end to the next step: checkpointing
        self._tokens: Any = 0
        self._t0: float | None = None  # the running stretch of steps, if any
        self._paused_at: float | None = None  # when the clock stopped for a validation

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, i: int) -> None:
        if self._paused_at is not None:
            self.after_validation_s += self._since(module, self._paused_at)
            self._paused_at = None
        if trainer.global_step < self.meter_warmup_steps:
            return
        if self._t0 is None:
            _sync(module.device)
            self._t0 = time.perf_counter()
        self.samples += len(batch["y"])
        self._tokens = self._tokens + self.tokens_of(batch)
        self.steps += 1

    def _stop(self, module: L.LightningModule) -> None:
        if self._t0 is not None:
            _sync(module.device)
            self.seconds += time.perf_counter() - self._t0
            self._t0 = None

    def _since(self, module: L.LightningModule, t0: float) -> float:
        _sync(module.device)
        return time.perf_counter() - t0

    def on_validation_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._stop(module)
            self._paused_at = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and self._paused_at is not None:
            self.validation_s += self._since(module, self._paused_at)
            self._paused_at = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._stop(module)
        if self._paused_at is not None:
            self.after_validation_s += self._since(module, self._paused_at)
            self._paused_at = None
        # The processes step together, so the clock of one is the run's, and its samples
        # are all of theirs. (Every process ends training here, at the same step.)
        counts = summed(torch.tensor([self.samples, float(self._tokens)], dtype=torch.float64,
                                     device=module.device))
        self.samples, self._tokens = int(counts[0]), float(counts[1])

    def metrics(self) -> dict[str, float]:
        out = {"time/validation_s": self.validation_s, "time/checkpoint_s": self.after_validation_s}
        if not self.steps or self.seconds <= 0:
            return out  # the budget ended inside the warm-up: no steady state to report
        return {
            **out,
            "perf/train_samples_per_s": self.samples / self.seconds,
            "perf/train_tokens_per_s": float(self._tokens) / self.seconds,
            "perf/train_step_ms": 1000 * self.seconds / self.steps,
        }


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype a mixed ``train.precision`` computes in (None: full precision)."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


@torch.no_grad()
def inference_latency(
    module: torch.nn.Module, batch: dict[str, torch.Tensor], device: torch.device, repeats: int = 10,
    precision: str = "32",
) -> dict[str, float]:
    """Median forward time of one batch on ``device``, after two warm-up passes, in the
    run's precision (autocast for the mixed ones, as in training)."""
    was_training = module.training
    module.eval()
    module.to(device)  # Lightning moves the module back to the CPU when testing ends
    x, mask = batch["x"].to(device), batch["mask"].to(device)
    times = []
    mixed = autocast_dtype(precision)
    for i in range(repeats + 2):
        _sync(device)
        t0 = time.perf_counter()
        with torch.autocast(device.type, dtype=mixed, enabled=mixed is not None):
            module(x, mask)
        _sync(device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    module.train(was_training)
    ms = 1000 * statistics.median(times)
    return {
        "perf/infer_batch_ms": ms,
        "perf/infer_samples_per_s": len(x) / (ms / 1000),
        "perf/infer_batch_size": len(x),
    }
