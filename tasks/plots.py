"""Figures that tasks attach to their runs (forecast vs actual, confusion matrices).

matplotlib is imported on first use, with the file-only Agg backend."""

from __future__ import annotations

from typing import Any

import numpy as np


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_figure(confusion: np.ndarray, class_names: list[str], title: str) -> Any:
    """Rows: true class; columns: predicted class; cells: counts and row-normalised shares."""
    plt = pyplot()
    n = len(class_names)
    share = confusion / np.clip(confusion.sum(1, keepdims=True), 1, None)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f"{int(confusion[i, j])}\n{share[i, j]:.0%}", ha="center", va="center",
                    color="white" if share[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(n), class_names, rotation=30, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def forecast_figure(predict: Any, split: Any, horizon: int, unscale: Any, channel: int, title: str,
                    ylabel: str) -> Any:
    """Forecasts vs the actual values over a split, from back-to-back windows (every
    ``horizon``-th origin, so each step of the period is forecast once), in original units.

    ``predict(batch)`` -> (B, H, C); ``unscale(values, channel)`` -> original units."""
    import torch

    plt = pyplot()
    with torch.no_grad():
        batch = split.__getitems__(list(range(0, len(split), horizon)))
        forecast = unscale(predict(batch)[..., channel].double().numpy().reshape(-1), channel)
    actual = unscale(batch["y"][..., channel].double().numpy().reshape(-1), channel)
    steps = np.arange(len(actual))
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(steps, actual, color="black", linewidth=1.0, label="actual")
    ax.plot(steps, forecast, color="tab:red", linewidth=1.0, label=f"forecast ({horizon} steps at a time)")
    for start in range(0, len(actual), horizon):
        ax.axvline(start, color="grey", alpha=0.15, linewidth=0.8)
    ax.set_title(title)
    ax.set_xlabel("step of the test period")
    ax.set_ylabel(ylabel)
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig
