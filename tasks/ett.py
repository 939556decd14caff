"""Electricity Transformer Temperature (ETT), the long-horizon forecasting protocol of
Informer (Zhou et al. 2021) and the papers that followed it, exactly:

- chronological borders of 12/4/4 months: ETTh train rows [0, 8640), validation
  [8640 - L, 11520), test [11520 - L, 14400); ETTm the same times 4 (15-minute rows);
- standardisation fitted on the training rows only;
- sliding windows (stride 1) of look-back L = 96 and horizon H in {96, 192, 336, 720};
- multivariate by default (all seven columns in and out), univariate on ``OT`` with
  ``features=S``;
- MSE and MAE on the standardised values, over every window of the split.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from tasks.data import DataFile, ensure
from tasks.plots import forecast_figure
from tasks.registry import WINDOW_NORM, Batch, DataShape, OutputSpec, Splits, Task, register_task

COLUMNS = ["HUFL", "HULL", "MUFL", "MULL", "LUFL", "LULL", "OT"]
HOURS_PER_MONTH = 30 * 24


class WindowSplit(Dataset):
    """Windows over one series, cut out per batch (never materialised: at H=720 the
    training windows of ETTm would take gigabytes)."""

    def __init__(self, series: torch.Tensor, origins: torch.Tensor, lookback: int, horizon: int) -> None:
        self.series, self.origins = series, origins  # (N, C), (W,) first target row of each window
        self.back = torch.arange(-lookback, 0)
        self.ahead = torch.arange(horizon)

    def __len__(self) -> int:
        return len(self.origins)

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])

    def __getitems__(self, idx: list[int]) -> Batch:
        t = self.origins[torch.as_tensor(idx)].unsqueeze(1)  # (B, 1)
        x = self.series[t + self.back]  # (B, L, C)
        y = self.series[t + self.ahead]  # (B, H, C)
        return {"x": x, "mask": torch.ones(x.shape[:2], dtype=torch.bool), "y": y}

    def content(self) -> dict[str, list[torch.Tensor]]:
        """The series and the windows cut from it (tasks.registry.content_digest)."""
        return {"series": [self.series], "origins": [self.origins], "back": [self.back], "ahead": [self.ahead]}

    @staticmethod
    def collate(batch: Batch) -> Batch:
        return batch


@dataclass
class ETTParams:
    lookback: int = 96
    horizon: int = 96
    features: str = "M"  # M: all seven columns in and out; S: OT only

    def __post_init__(self) -> None:
        if self.lookback < 1 or self.horizon < 1:
            raise ValueError("lookback and horizon must be >= 1")
        if self.features not in ("M", "S"):
            raise ValueError(f"features='{self.features}' is invalid: it must be M or S")


class ETTTask(Task):
    file: ClassVar[DataFile]
    rows_per_hour: ClassVar[int]
    Params = ETTParams
    variants = {
        **{f"h{h}": {"horizon": h} for h in (96, 192, 336, 720)},
        **{f"S-h{h}": {"horizon": h, "features": "S"} for h in (96, 192, 336, 720)},
    }
    primary_metric = "mse"
    higher_is_better = False

    @classmethod
    def recipe(cls, params: Any, budget: dict[str, Any]) -> dict[str, Any]:
        # batch 32: the Informer/DLinear protocol's.
        recipe: dict[str, Any] = {"train.batch_size": 32, "train.window_norm": WINDOW_NORM}
        if cls.rows_per_hour > 1:  # ETTm validates on 11,520 windows: half as often
            recipe["budget.val_every_steps"] = 2 * budget["val_every_steps"]
        return recipe

    def files(self) -> list[DataFile]:
        return [self.file]

    @classmethod
    def search_space(cls, trial: Any) -> dict[str, Any]:
        # The look-backs most often compared on ETT; test windows are the same for all of them.
        return {"task.lookback": trial.suggest_categorical("task.lookback", [48, 96, 192, 336])}

    @property
    def n_channels(self) -> int:
        return len(COLUMNS) if self.params.features == "M" else 1

    @classmethod
    def data_shape(cls, params: ETTParams) -> DataShape:
        # Windows are views into the series read from its file: nothing is generated.
        return DataShape(n_features=len(COLUMNS) if params.features == "M" else 1, season=24 * cls.rows_per_hour,
                         seq_len=params.lookback, max_len=params.lookback)

    @property
    def output(self) -> OutputSpec:
        return OutputSpec("forecast", shape=(self.params.horizon, self.n_channels))

    def borders(self) -> dict[str, tuple[int, int]]:
        """Rows whose values are targets of each split (inputs reach L rows further back)."""
        month = HOURS_PER_MONTH * self.rows_per_hour
        return {"train": (0, 12 * month), "val": (12 * month, 16 * month), "test": (16 * month, 20 * month)}

    def setup(self) -> Splits:
        p = self.params
        frame = pd.read_csv(ensure(self.file, self.data_dir))
        values = frame[COLUMNS if p.features == "M" else ["OT"]].to_numpy(dtype=np.float64)
        b = self.borders()
        train_rows = values[: b["train"][1]]
        self.mean, self.std = train_rows.mean(0), train_rows.std(0)
        series = torch.tensor((values - self.mean) / self.std, dtype=torch.float32)
        splits = {}
        for name, (start, end) in b.items():
            origins = torch.arange(max(start, p.lookback), end - p.horizon + 1)
            if len(origins) == 0:
                raise ValueError(f"{self.name}: no window fits {name} with lookback={p.lookback}, horizon={p.horizon}")
            splits[name] = WindowSplit(series, origins, p.lookback, p.horizon)
        daily = 24 * self.rows_per_hour  # the season of the seasonal-naive baseline
        return Splits(**splits, n_features=self.n_channels, season=daily, seq_len=p.lookback)

    def loss(self, pred: torch.Tensor, batch: Batch) -> torch.Tensor:
        return F.mse_loss(pred, batch["y"])

    def figures(self, predict: Any, splits: Splits, test_stats: dict[str, torch.Tensor]) -> dict[str, Any]:
        """Oil temperature (OT, the last column), forecast vs actual over the test months."""
        unscale = lambda values, channel: values * self.std[channel] + self.mean[channel]
        title = f"{self.name}: OT, test forecasts (look-back {self.params.lookback})"
        return {"forecast_test.png": forecast_figure(predict, splits.test, self.params.horizon, unscale,
                                                     self.n_channels - 1, title, "OT (°C)")}

    def batch_stats(self, pred: torch.Tensor, batch: Batch) -> dict[str, torch.Tensor]:
        err = (pred - batch["y"]).double()
        return {"sq_err": (err**2).sum(), "abs_err": err.abs().sum(), "n": torch.tensor(err.numel())}

    def finalize(self, s: dict[str, torch.Tensor]) -> dict[str, float]:
        n = float(s["n"])
        return {"mse": float(s["sq_err"]) / n, "mae": float(s["abs_err"]) / n}


def _file(stem: str, sha256: str) -> DataFile:
    url = f"https://raw.githubusercontent.com/zhouhaoyi/ETDataset/1d16c8f4f943005d613b5bc962e9eeb06058cf07/ETT-small/{stem}.csv"
    return DataFile(f"ett/{stem}.csv", sha256, url, dataset=stem)


@register_task
class ETTh1(ETTTask):
    name = "etth1"
    description = "ETTh1 (hourly, 17,420 rows x 7): forecast 96-720 hours from 96; 12/4/4-month split"
    rows_per_hour = 1
    file = _file("ETTh1", "f18de3ad269cef59bb07b5438d79bb3042d3be49bdeecf01c1cd6d29695ee066")


@register_task
class ETTh2(ETTTask):
    name = "etth2"
    description = "ETTh2 (hourly, 17,420 rows x 7): forecast 96-720 hours from 96; 12/4/4-month split"
    rows_per_hour = 1
    file = _file("ETTh2", "a3dc2c597b9218c7ce1cd55eb77b283fd459a1d09d753063f944967dd6b9218b")


@register_task
class ETTm1(ETTTask):
    name = "ettm1"
    description = "ETTm1 (15-minute, 69,680 rows x 7): forecast 96-720 steps from 96; 12/4/4-month split"
    rows_per_hour = 4
    file = _file("ETTm1", "6ce1759b1a18e3328421d5d75fadcb316c449fcd7cec32820c8dafda71986c9e")


@register_task
class ETTm2(ETTTask):
    name = "ettm2"
    description = "ETTm2 (15-minute, 69,680 rows x 7): forecast 96-720 steps from 96; 12/4/4-month split"
    rows_per_hour = 4
    file = _file("ETTm2", "db973ca252c6410a30d0469b13d696cf919648d0f3fd588c60f03fdbdbadd1fd")
