"""Gate introspection (``--set train.record_gates=true``): what a gated recurrent model's
gates do on the validation set while it trains.

At every validation during training, on about ``GATE_SEQUENCES`` validation sequences spread
over the split (real steps only), per layer and gate:

    gates/<layer>/<gate>/mean        the mean activation over units and steps
    gates/<layer>/<gate>/saturated   the fraction of activations below 0.05 or above 0.95

are added to the run's learning curve (MLflow metrics over steps). After training, the
scored (best) checkpoint's activations are drawn as one histogram per gate and layer
(``gates.png``). An LSTM's forget gate near 1 keeps its memory; near 0 it forgets at every
step. Models without gates (``models.registry.Gated`` says which have them) record nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import lightning as L
import torch

from models.registry import Gated
from tasks.plots import pyplot

SATURATED = (0.05, 0.95)  # an activation outside this range is saturated
GATE_SEQUENCES = 512  # validation sequences looked at each time: plenty for a mean, and cheap
HISTOGRAM_SAMPLES = 100_000  # activations per gate kept for the histogram (an even subsample)
BINS = 50


@dataclass
class GateSummary:
    """Summed statistics of each gate's activations, and (``keep_values``, for the figure) an
    even subsample of them."""

    keep_values: bool = False
    total: dict[str, float] = field(default_factory=dict)
    saturated: dict[str, float] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def add(self, name: str, real: torch.Tensor) -> None:
        """real: the activations on real steps, every unit."""
        lo, hi = SATURATED
        self.total[name] = self.total.get(name, 0.0) + float(real.sum())
        self.saturated[name] = self.saturated.get(name, 0.0) + float(((real < lo) | (real > hi)).sum())
        self.count[name] = self.count.get(name, 0) + real.numel()
        if self.keep_values:  # at most HISTOGRAM_SAMPLES / 8 from each batch: memory stays small
            flat = real.flatten()
            stride = max(1, flat.numel() * 8 // HISTOGRAM_SAMPLES)
            self.values.setdefault(name, []).append(flat[::stride].float().cpu())

    def metrics(self) -> dict[str, float]:
        out = {}
        for name, n in self.count.items():
            out[f"gates/{name}/mean"] = self.total[name] / max(n, 1)
            out[f"gates/{name}/saturated"] = self.saturated[name] / max(n, 1)
        return out

    def sample(self, name: str) -> torch.Tensor:
        values = torch.cat(self.values[name])
        step = max(1, values.numel() // HISTOGRAM_SAMPLES)
        return values[::step]


def gated(module: Any) -> Gated | None:
    """The run's backbone if it has gates (through torch.compile's wrapper), else None."""
    backbone = getattr(module.backbone, "_orig_mod", module.backbone)
    return backbone if isinstance(backbone, Gated) else None


def look_at_gates(module: Any, loader: Any, sequences: int = GATE_SEQUENCES,
                  keep_values: bool = False) -> GateSummary:
    """The gates' activations on about ``sequences`` sequences of ``loader``, seen as the
    backbone sees its input (after the recipe's window normalisation). The batches looked at
    are spread evenly over the loader: an evaluation loader orders variable-length sequences
    by length, so its first batches would be the shortest."""
    summary = GateSummary(keep_values)
    backbone = gated(module)
    if backbone is None:
        return summary
    batches, total = len(loader), len(loader.dataset) if hasattr(loader, "dataset") else 0
    needed = max(1, -(-batches * sequences // total)) if total else batches  # batches holding `sequences`
    stride = max(1, batches // needed)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for i, batch in enumerate(loader):
            if i % stride:
                continue
            x, mask = batch["x"].to(module.device), batch["mask"].to(module.device)
            if module.window_norm is not None:
                x, _ = module.window_norm.normalise(x)
            for name, act in backbone.gate_activations(x, mask).items():
                summary.add(name, act[mask])  # (N_real, units)
    module.train(was_training)
    return summary


class GateRecorder(L.Callback):
    """Adds the gate statistics to each validation's learning-curve record (before it is
    written to the store)."""

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.state.fn == "fit" and module.history:
            module.history[-1][1].update(look_at_gates(module, trainer.val_dataloaders).metrics())


def gate_figure(summary: GateSummary, title: str) -> Any:
    """One histogram per gate (columns) and layer (rows), with the mean and the saturated
    fraction in each panel's title; None when the model has no gates (a vanilla RNN)."""
    names = sorted(summary.count)
    if not names:
        return None
    plt = pyplot()
    layers = sorted({n.split("/")[0] for n in names})
    gates = list(dict.fromkeys(n.split("/")[1] for n in names))
    fig, axes = plt.subplots(len(layers), len(gates), figsize=(3.2 * len(gates), 2.4 * len(layers)),
                             squeeze=False, sharex=True)
    stats = summary.metrics()
    for r, layer in enumerate(layers):
        for c, gate in enumerate(gates):
            ax = axes[r][c]
            name = f"{layer}/{gate}"
            if name not in summary.count:
                ax.set_visible(False)
                continue
            ax.hist(summary.sample(name).numpy(), bins=BINS, range=(0.0, 1.0), color="tab:blue")
            for edge in SATURATED:
                ax.axvline(edge, color="grey", linewidth=0.8, linestyle=":")
            ax.set_title(f"{name}: mean {stats[f'gates/{name}/mean']:.2f}, "
                         f"sat. {stats[f'gates/{name}/saturated']:.0%}", fontsize=8)
            ax.set_yticks([])
    for ax in axes[-1]:
        ax.set_xlabel("activation")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
