"""Forecasting real series: a look-back window in, the next ``horizon`` values out.

Chronological splits (the last periods are validation and test), scaling fitted on the
training rows only, and metrics in the series' original units: MAE, RMSE, MAPE and
MASE (MAE divided by the in-sample MAE of the seasonal-naive forecast on the training
rows, Hyndman & Koehler 2006).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from tasks.data import DataFile, ensure
from tasks.plots import forecast_figure
from tasks.registry import WINDOW_NORM, Batch, DataShape, OutputSpec, Splits, Task, TensorSplit, register_task


@dataclass
class SeriesParams:
    lookback: int = 24  # L: past values the model sees
    horizon: int = 12  # H: future values it predicts at once

    def __post_init__(self) -> None:
        for k in ("lookback", "horizon"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}={getattr(self, k)} is invalid: it must be >= 1")


class SeriesTask(Task):
    """A univariate series with the last ``test_len`` rows as test, ``val_len`` before as validation."""

    file: ClassVar[DataFile]
    value_column: ClassVar[str]
    season: ClassVar[int]  # seasonal period, for MASE and the seasonal-naive reference
    val_len: ClassVar[int]
    test_len: ClassVar[int]
    lookbacks: ClassVar[tuple[int, ...]]  # look-backs tried when tuning
    batch_size: ClassVar[int] = 64  # windows per step; a short series gets smaller batches, so more steps an epoch
    Params = SeriesParams
    primary_metric = "mase"
    higher_is_better = False

    @classmethod
    def recipe(cls, params: Any, budget: dict[str, Any]) -> dict[str, Any]:
        return {"train.batch_size": cls.batch_size, "train.window_norm": WINDOW_NORM}

    def files(self) -> list[DataFile]:
        return [self.file]

    @classmethod
    def data_shape(cls, params: SeriesParams) -> DataShape:
        # The series is read from its file (a few thousand values); its windows are sized by it.
        return DataShape(n_features=1, season=cls.season, seq_len=params.lookback, max_len=params.lookback)

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        return {"task.lookback": trial.suggest_categorical("task.lookback", list(cls.lookbacks))}

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("forecast", shape=(self.params.horizon, 1))

    def load_series(self) -> np.ndarray:
        path = ensure(self.file, self.data_dir)
        return pd.read_csv(path)[self.value_column].to_numpy(dtype=np.float64)

    def borders(self, n: int) -> dict[str, tuple[int, int]]:
        """Row ranges whose values are *targets* of each split."""
        val_start, test_start = n - self.val_len - self.test_len, n - self.test_len
        return {"train": (0, val_start), "val": (val_start, test_start), "test": (test_start, n)}

    def windows(self, series: np.ndarray, start: int, end: int) -> tuple[np.ndarray, np.ndarray]:
        """Every window whose targets lie in [start, end); inputs may reach back before start."""
        L, H = self.params.lookback, self.params.horizon
        origins = np.arange(max(start, L), end - H + 1)
        if len(origins) == 0:
            raise ValueError(
                f"{self.name}: no window fits rows [{start}, {end}) with lookback={L}, horizon={H}"
            )
        x = np.stack([series[t - L : t] for t in origins])  # (N, L)
        y = np.stack([series[t : t + H] for t in origins])  # (N, H)
        return x, y

    def setup(self) -> Splits:
        raw = self.load_series()
        b = self.borders(len(raw))
        train_rows = raw[: b["train"][1]]
        self.mean, self.std = float(train_rows.mean()), float(train_rows.std())
        m = self.season
        self.mase_scale = float(np.abs(train_rows[m:] - train_rows[:-m]).mean())
        self.raw = raw
        scaled = (raw - self.mean) / self.std
        splits = {}
        for name, (start, end) in b.items():
            x, y = self.windows(scaled, start, end)
            splits[name] = TensorSplit(
                x=torch.tensor(x, dtype=torch.float32).unsqueeze(-1),  # (N, L, 1)
                y=torch.tensor(y, dtype=torch.float32).unsqueeze(-1),  # (N, H, 1)
            )
        return Splits(**splits, n_features=1, season=self.season, seq_len=self.params.lookback)

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(pred, batch["y"])  # on the scaled values

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        p = pred.double() * self.std + self.mean  # original units
        y = batch["y"].double() * self.std + self.mean
        err = p - y
        return {
            "abs_err": err.abs().sum(),
            "sq_err": (err**2).sum(),
            "abs_pct_err": (err.abs() / y.abs().clamp(min=1e-8)).sum(),
            "n": torch.tensor(err.numel()),
        }

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["n"])
        mae = float(s["abs_err"]) / n
        return {
            "mase": mae / self.mase_scale,
            "mae": mae,
            "rmse": (float(s["sq_err"]) / n) ** 0.5,
            "mape": 100.0 * float(s["abs_pct_err"]) / n,
        }

    def figures(self, predict: Any, splits: Splits, test_stats: dict[str, torch.Tensor]) -> dict[str, Any]:
        unscale = lambda values, channel: values * self.std + self.mean
        title = f"{self.name}: test forecasts"
        return {"forecast_test.png": forecast_figure(predict, splits.test, self.params.horizon, unscale, 0, title,
                                                     self.value_column)}

    def references(self) -> dict[str, float]:
        """The seasonal-naive forecast (the value one season earlier) scored on the test split."""
        if not hasattr(self, "raw"):
            return {}
        start, end = self.borders(len(self.raw))["test"]
        _, y = self.windows(self.raw, start, end)
        H, m = self.params.horizon, self.season
        origins = np.arange(max(start, self.params.lookback), end - H + 1)
        # the latest value of the same phase that is known at the origin t: t + h - m * ceil((h + 1) / m)
        lags = np.array([m * ((h // m) + 1) for h in range(H)])
        forecast = self.raw[origins[:, None] + np.arange(H)[None, :] - lags[None, :]]  # (N, H)
        mae = float(np.abs(forecast - y).mean())
        return {"mase": mae / self.mase_scale, "mae": mae, "rmse": float(np.sqrt(((forecast - y) ** 2).mean()))}


@register_task
class Airline(SeriesTask):
    """Box & Jenkins airline passengers, monthly 1949-1960; the last 12 months are the test set."""

    name = "airline"
    description = "Airline passengers (monthly, 144 values): forecast the next 12 months from 24"
    file = DataFile(
        "airline/airline-passengers.csv",
        "8cb51be753a718d9be5d76d7e238cc224792754676adc21faa59e954b0201621",
        "https://raw.githubusercontent.com/jbrownlee/Datasets/"
        "d20fcb6402ae34e653d4513b00f39257bb37ed7f/airline-passengers.csv",
        dataset="Airline passengers",
    )
    value_column = "Passengers"
    season = 12
    val_len = 12
    test_len = 12
    lookbacks = (12, 24, 36, 48)
    batch_size = 16  # 85 training windows: 6 steps an epoch


@dataclass
class SunspotsParams(SeriesParams):
    lookback: int = 144  # covers one ~132-month solar cycle
    horizon: int = 12


@register_task
class Sunspots(SeriesTask):
    """Zurich monthly sunspot numbers 1749-1983; the last 282 months (10%) are the test set.
    The season for MASE and the seasonal-naive reference is the ~11-year solar cycle."""

    name = "sunspots"
    description = "Monthly sunspots (2,820 values): forecast the next 12 months from 144"
    Params = SunspotsParams
    file = DataFile(
        "sunspots/monthly-sunspots.csv",
        "c4ec8cc57d9f6fb6ecdb3e1f37f25b6f4badd5124c55931052b0cd2fc3bc71f3",
        "https://raw.githubusercontent.com/jbrownlee/Datasets/"
        "d20fcb6402ae34e653d4513b00f39257bb37ed7f/monthly-sunspots.csv",
        dataset="Monthly sunspots",
    )
    value_column = "Sunspots"
    season = 132
    val_len = 282
    test_len = 282
    lookbacks = (66, 132, 144, 264)


@dataclass
class TemperaturesParams(SeriesParams):
    lookback: int = 30
    horizon: int = 7


@register_task
class Temperatures(SeriesTask):
    """Daily minimum temperatures in Melbourne 1981-1990; the last 365 days are the test set.
    (Two 31 Decembers are absent from the file; the series is used as given.)"""

    name = "temperatures"
    description = "Daily minimum temperatures, Melbourne (3,650 days): forecast the next 7 days from 30"
    Params = TemperaturesParams
    file = DataFile(
        "temperatures/daily-min-temperatures.csv",
        "8b9de63ed6789492bf497625e7f9beb96a63d367b4b0a21754006f749fa5e5da",
        "https://raw.githubusercontent.com/jbrownlee/Datasets/"
        "d20fcb6402ae34e653d4513b00f39257bb37ed7f/daily-min-temperatures.csv",
        dataset="Daily minimum temperatures",
    )
    value_column = "Temp"
    season = 365
    val_len = 365
    test_len = 365
    lookbacks = (14, 30, 60, 90)
