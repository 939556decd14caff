"""NeuralForecast's LSTM against seqbench's ``lstm`` on airline, same configuration, back to back.

Not part of the test suite: it needs NeuralForecast, which is best kept in an environment
of its own (it brings Ray and its own Lightning requirements)::

    python3 -m venv .venv-nf && . .venv-nf/bin/activate && pip install torch==2.13.0 \\
      && pip install -c constraints.txt neuralforecast -e .
    python benchmarks/neuralforecast_airline.py --data-dir ../shared/data --seeds 1,2,3

The configuration is the one NeuralForecast users write for this series: input 24, horizon
12, encoder hidden 64, 2 layers, 500 steps, batch 32, Adam at 1e-3, the last 12 months as
the test window; NeuralForecast keeps its default robust scaler and MLP decoder, seqbench
its default recipe (per-window standard normalisation, warm-up and cosine schedule, a
linear head) and scores its final weights, as NeuralForecast does. For each seed the two fits
run one after the other in this process, so machine noise hits both. Fit time is the
library's training call alone (NeuralForecast ``fit``; seqbench's Lightning ``fit``,
``time/train_s``); the seqbench run's whole wall time, evaluation and MLflow writes
included, is printed beside it.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HORIZON, LOOKBACK = 12, 24


def neuralforecast_fit(series: pd.DataFrame, seed: int) -> tuple[float, float]:
    """(test MAE, fit seconds) of NeuralForecast's LSTM, trained on all but the last 12 months."""
    from neuralforecast import NeuralForecast
    from neuralforecast.models import LSTM

    train, test = series.iloc[:-HORIZON], series.iloc[-HORIZON:]
    model = LSTM(h=HORIZON, input_size=LOOKBACK, encoder_hidden_size=64, encoder_n_layers=2, max_steps=500,
                 batch_size=32, learning_rate=1e-3, random_seed=seed, enable_progress_bar=False,
                 enable_model_summary=False, logger=False, accelerator="cpu")
    nf = NeuralForecast(models=[model], freq="MS")
    t0 = time.perf_counter()
    nf.fit(df=train)
    fit_s = time.perf_counter() - t0
    forecast = nf.predict()["LSTM"].to_numpy()
    return float(np.abs(forecast - test["y"].to_numpy()).mean()), fit_s


def seqbench_fit(data_dir: Path, results: Path, seed: int) -> tuple[float, float, float]:
    """(test MAE, fit seconds, whole run seconds) of seqbench's lstm with the same settings."""
    from bench.catalog import load_catalog, parse_request, resolve
    from bench.runner import Runner
    from bench.tracking import Tracker, default_tracking_uri

    settings = ["model.hidden_size=64", "model.num_layers=2", "train.lr=0.001", "train.batch_size=32",
                "budget.max_steps=500", "budget.val_every_steps=500"]
    (config,) = resolve(parse_request("lstm", "airline", str(seed), "standard", settings, load_catalog()))
    runner = Runner(Tracker(default_tracking_uri(results), results), data_dir, rerun=True, accelerator="cpu")
    t0 = time.perf_counter()
    result = runner.run(config)
    wall_s = time.perf_counter() - t0
    if result.status != "finished":
        raise SystemExit(f"seqbench run {result.status}: {result.reason}")
    return result.metrics["test/mae"], result.metrics["time/train_s"], wall_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="where airline/airline-passengers.csv is")
    parser.add_argument("--seeds", default="1,2,3")
    args = parser.parse_args()
    data_dir = Path(args.data_dir).resolve()
    raw = pd.read_csv(data_dir / "airline" / "airline-passengers.csv")
    series = pd.DataFrame({"unique_id": "airline", "ds": pd.to_datetime(raw["Month"]),
                           "y": raw["Passengers"].astype(float)})
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="seqbench-vs-nf-") as tmp:
        for seed in seeds:
            nf_mae, nf_s = neuralforecast_fit(series, seed)
            sb_mae, sb_s, sb_wall = seqbench_fit(data_dir, Path(tmp), seed)
            rows.append((seed, nf_mae, nf_s, sb_mae, sb_s, sb_wall))
            print(f"seed {seed}: NeuralForecast MAE {nf_mae:6.2f} fit {nf_s:5.2f} s | "
                  f"seqbench MAE {sb_mae:6.2f} fit {sb_s:5.2f} s (whole run {sb_wall:5.2f} s)", flush=True)
    column = lambda i: [r[i] for r in rows]  # noqa: E731
    print(f"median over seeds {args.seeds}: NeuralForecast MAE {statistics.median(column(1)):.2f}, "
          f"fit {statistics.median(column(2)):.2f} s | seqbench MAE {statistics.median(column(3)):.2f}, "
          f"fit {statistics.median(column(4)):.2f} s (whole run {statistics.median(column(5)):.2f} s); "
          f"fit time ratio seqbench/NeuralForecast {statistics.median(column(4)) / statistics.median(column(2)):.2f}")


if __name__ == "__main__":
    main()
