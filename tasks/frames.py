"""Spatio-temporal forecasting: shapes moving and bouncing in small frames.

Generated like copy and adding (``tasks.synthetic``): the training set from the run's seed,
validation and test from fixed seeds, so every model and seed is scored on the same sequences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from tasks.plots import pyplot
from tasks.registry import Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, register_task
from tasks.synthetic import TEST_SEED, VAL_SEED, check_positive, split_seed, training_seed

IOU_THRESHOLD = 0.5  # a predicted pixel above this counts as foreground


@dataclass
class MovingShapesParams:
    size: int = 16  # frames are size x size pixels
    n_shapes: int = 2  # squares and discs per sequence, each 2 or 3 pixels in radius
    input_frames: int = 10  # frames the model sees
    predict_frames: int = 5  # K: the frames that follow, predicted at once
    max_speed: float = 1.5  # pixels per frame; each shape's speed is uniform in [0.5, max_speed]
    n_train: int = 4_000
    n_val: int = 500
    n_test: int = 500

    def __post_init__(self) -> None:
        check_positive(size=self.size, n_shapes=self.n_shapes, input_frames=self.input_frames,
                       predict_frames=self.predict_frames, n_train=self.n_train, n_val=self.n_val,
                       n_test=self.n_test)
        if self.size < 8:
            raise ValueError(f"size={self.size} is invalid: it must be >= 8 (shapes are up to 7 pixels wide)")
        if not 0.5 <= self.max_speed <= self.size / 4:
            raise ValueError(f"max_speed={self.max_speed} is invalid: it must be in [0.5, size/4]")


def bounce(start: torch.Tensor, velocity: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
           steps: int) -> torch.Tensor:
    """Positions over ``steps`` frames of points moving at constant speed and reflected by the
    walls [lo, hi]: start, velocity, lo, hi (..., 2) -> (..., steps, 2)."""
    span = hi - lo
    t = torch.arange(steps, dtype=start.dtype).view(*([1] * (start.dim() - 1)), steps, 1)  # (1.., T, 1)
    free = (start - lo).unsqueeze(-2) + velocity.unsqueeze(-2) * t  # unfolded path from lo
    folded = torch.remainder(free, 2 * span.unsqueeze(-2))  # a triangle wave: reflection at both walls
    return lo.unsqueeze(-2) + torch.where(folded > span.unsqueeze(-2), 2 * span.unsqueeze(-2) - folded, folded)


@register_task
class MovingShapes(Task):
    """Moving shapes: predict the next K frames of squares and discs bouncing in a small frame
    (in the spirit of Moving MNIST, Srivastava et al. 2015, at a size a CPU trains on).

    Each sequence has n_shapes shapes (a square or a disc, radius 2 or 3), each with its own
    start, direction and speed, reflected by the frame's edges; a pixel is 1 where any shape
    covers it, else 0. Input: input_frames frames; target: the next predict_frames frames. Each
    step's features are the frame's pixels row by row (size x size), so a model for images
    (conv-lstm) reads them as frames and any other sequence model as flat vectors. Scored per
    pixel: MSE (primary), MAE, and the IoU of the foreground (pixels above 0.5). Reference:
    repeating the last frame (also the last-value baseline's forecast).
    """

    name = "moving-shapes"
    description = "Moving shapes: predict the next 5 frames of shapes bouncing in 16x16 frames from 10"
    Params = MovingShapesParams
    variants = {"S32": {"size": 32, "n_train": 2_000}}
    primary_metric = "mse"
    higher_is_better = False
    causal = False  # the input is the past only; a model may read all of it before forecasting
    frames = True
    seeded_data = True

    def data_seed(self, split: str) -> int:
        return split_seed(split, self.seed)

    @classmethod
    def data_shape(cls, params: MovingShapesParams) -> DataShape:
        T = params.input_frames + params.predict_frames
        n = params.n_train + params.n_val + params.n_test
        return DataShape(n_features=params.size**2, seq_len=params.input_frames, max_len=params.input_frames,
                         frame=(params.size, params.size), n_train=params.n_train,
                         generated_bytes=8 * n * T * params.size**2)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("forecast", shape=(self.params.predict_frames, self.params.size**2))

    def generate(self, n: int, seed: int) -> TensorSplit:
        p = self.params
        g = torch.Generator().manual_seed(seed)
        T, S, k = p.input_frames + p.predict_frames, p.size, p.n_shapes
        radius = torch.randint(2, 4, (n, k), generator=g).double()  # (n, k)
        disc = torch.rand(n, k, generator=g) < 0.5  # (n, k): a disc, else a square
        lo = radius.unsqueeze(-1).expand(n, k, 2)  # centres stay in [r, S - 1 - r]
        hi = S - 1 - lo
        start = lo + torch.rand(n, k, 2, generator=g, dtype=torch.float64) * (hi - lo)
        angle = torch.rand(n, k, generator=g, dtype=torch.float64) * 2 * torch.pi
        speed = 0.5 + torch.rand(n, k, generator=g, dtype=torch.float64) * (p.max_speed - 0.5)
        velocity = torch.stack([angle.cos(), angle.sin()], -1) * speed.unsqueeze(-1)  # (n, k, 2)
        centres = bounce(start, velocity, lo, hi, T)  # (n, k, T, 2)
        grid = torch.arange(S, dtype=torch.float64)
        dy = grid.view(1, 1, 1, S, 1) - centres[..., 0, None, None]  # (n, k, T, S, 1)
        dx = grid.view(1, 1, 1, 1, S) - centres[..., 1, None, None]  # (n, k, T, 1, S)
        r = radius.view(n, k, 1, 1, 1)
        inside_disc = dy**2 + dx**2 <= r**2
        inside_square = (dy.abs() <= r) & (dx.abs() <= r)
        covered = torch.where(disc.view(n, k, 1, 1, 1), inside_disc, inside_square).any(1)  # (n, T, S, S)
        frames = covered.float().flatten(2)  # (n, T, S*S)
        return TensorSplit(x=frames[:, : p.input_frames].contiguous(), y=frames[:, p.input_frames :].contiguous())

    def setup(self) -> Splits:
        p = self.params
        return Splits(
            train=self.generate(p.n_train, training_seed(self.seed)),
            val=self.generate(p.n_val, VAL_SEED),
            test=self.generate(p.n_test, TEST_SEED),
            n_features=p.size**2,
            seq_len=p.input_frames,
            frame=(p.size, p.size),
        )

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(pred, batch["y"])  # pred (B, K, S*S)

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        err = pred.double() - batch["y"].double()
        fg_pred, fg_true = pred > IOU_THRESHOLD, batch["y"] > IOU_THRESHOLD
        return {
            "sq_err": (err**2).sum(),
            "abs_err": err.abs().sum(),
            "intersection": (fg_pred & fg_true).sum(),
            "union": (fg_pred | fg_true).sum(),
            "n": torch.tensor(err.numel()),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["n"])
        return {"mse": float(s["sq_err"]) / n, "mae": float(s["abs_err"]) / n,
                "iou": float(s["intersection"]) / max(float(s["union"]), 1.0)}

    def references(self) -> dict[str, float]:
        """Repeating the last input frame, scored on the test split."""
        p = self.params
        test = self.generate(p.n_test, TEST_SEED)
        x, y = test.tensors["x"], test.tensors["y"]
        return self.finalize(self.batch_stats(x[:, -1:].expand_as(y), {"y": y}))

    def figures(self, predict: Any, splits: Splits, test_stats: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Three test sequences (or as many as there are): the last input frames, then the true next frames (upper row)
        and the predicted ones (lower row, under them)."""
        test = splits.test.tensors
        p, rows = self.params, min(3, len(test["x"]))
        batch = {"x": test["x"][:rows], "mask": torch.ones(rows, p.input_frames, dtype=torch.bool)}
        pred = predict(batch).clamp(0, 1).view(rows, p.predict_frames, p.size, p.size)
        x = batch["x"].view(rows, p.input_frames, p.size, p.size)
        y = test["y"][:rows].view(rows, p.predict_frames, p.size, p.size)
        shown = min(3, p.input_frames)
        plt = pyplot()
        cols = shown + p.predict_frames
        fig, axes = plt.subplots(2 * rows, cols, figsize=(1.1 * cols, 2.3 * rows), squeeze=False)
        for r in range(rows):
            upper, lower = axes[2 * r], axes[2 * r + 1]
            for j in range(shown):
                upper[j].imshow(x[r, p.input_frames - shown + j].numpy(), cmap="gray", vmin=0, vmax=1)
                upper[j].set_title(f"input t-{shown - 1 - j}", fontsize=6)
                lower[j].set_visible(False)
            for j in range(p.predict_frames):
                upper[shown + j].imshow(y[r, j].numpy(), cmap="gray", vmin=0, vmax=1)
                upper[shown + j].set_title(f"true +{j + 1}", fontsize=6)
                lower[shown + j].imshow(pred[r, j].numpy(), cmap="gray", vmin=0, vmax=1)
                lower[shown + j].set_title(f"predicted +{j + 1}", fontsize=6)
        for ax in axes.flat:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"{self.name}: test sequences", fontsize=8)
        fig.tight_layout()
        return {"frames_test.png": fig}
