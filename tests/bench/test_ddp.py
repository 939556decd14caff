"""One run over several processes (train.devices=2, train.strategy=ddp; gloo on this CPU):
the shards of a split hold every sample once, a fixed checkpoint scores the same over two
processes as over one, the settings are checked, and the CLI records exactly one run."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from bench.catalog import load_catalog, parse_request, resolve
from bench.cli import main
from bench.config import RunConfig
from bench.distributed import Shard, processes
from bench.errors import BenchError
from bench.runner import make_loaders
from bench.saved_model import build_module
from tasks.batching import BucketBatchSampler, eval_loader
from tasks.registry import PaddedSplit, TensorSplit

# The split metrics are logged once every process has the summed figures: nothing to sync.
pytestmark = pytest.mark.filterwarnings("ignore:.*sync_dist=True.*")

# Splits whose sizes are not multiples of 2 processes x the evaluation batch (8): the
# distributed sampler's padding would repeat samples here.
COPY_PARAMS = {"delay": 5, "n_train": 64, "n_val": 37, "n_test": 29}


def indices(loader: Any) -> list[int]:
    return [i for batch in loader.batch_sampler for i in batch]


@pytest.mark.parametrize("n", [2, 3, 29, 37, 64])
@pytest.mark.parametrize("world", [2, 3])
def test_evaluation_shards_hold_every_sample_once(n: int, world: int) -> None:
    fixed = TensorSplit(x=torch.zeros(n, 4, 1), y=torch.zeros(n))  # batched in order
    variable = PaddedSplit([torch.ones(1 + i % 7, dtype=torch.long) for i in range(n)], torch.zeros(n))  # by length
    for split in (fixed, variable):
        if n < world:
            continue
        shares = [indices(eval_loader(split, 8, rank, world)) for rank in range(world)]
        assert all(shares)  # every rank scores something (or it would wait for the others' sums)
        assert sorted(i for share in shares for i in share) == list(range(n))  # disjoint and complete
        assert sorted(indices(eval_loader(split, 8))) == list(range(n))


def test_evaluation_split_smaller_than_the_processes_is_refused() -> None:
    split = PaddedSplit([torch.ones(3, dtype=torch.long)], torch.zeros(1))
    with pytest.raises(ValueError, match="train.devices=2"):
        eval_loader(split, 8, 0, 2)


def test_training_shares_are_equal_and_cover_every_batch() -> None:
    lengths = torch.ones(100, dtype=torch.long)  # 13 batches of 8: one rank repeats one
    whole = list(BucketBatchSampler(lengths, 8, seed=3))
    shares = [list(BucketBatchSampler(lengths, 8, seed=3, rank=r, world=2)) for r in range(2)]
    assert len(shares[0]) == len(shares[1]) == len(BucketBatchSampler(lengths, 8, seed=3, world=2)) == 7
    assert shares[0] + shares[1] != whole  # (interleaved, not halves)
    assert sorted(map(tuple, shares[0] + shares[1][:-1])) == sorted(map(tuple, whole))
    assert shares[1][-1] == whole[0]  # the repeated batch: the first of the epoch


@pytest.mark.parametrize(("settings", "message"), [
    (["train.devices=2"], "train.devices=2 needs train.strategy=ddp"),
    (["train.strategy=ddp"], "train.strategy=ddp needs train.devices >= 2"),
    (["train.devices=0"], "train.devices=0 is invalid"),
    (["train.devices=2", "train.strategy=horovod"], "train.strategy='horovod' is invalid: choose from auto, ddp"),
])
def test_settings_are_checked(settings: list[str], message: str) -> None:
    with pytest.raises(BenchError, match=message):
        resolve(parse_request("lstm", "copy", "0", "tiny", settings, load_catalog()))


# --- a fixed checkpoint scored by one and by two processes ---------------------------------


def _score(shard: Shard, config: RunConfig, weights: Path, out: dict[str, Any] | None = None) -> None:
    """Score ``weights`` on this process's share of both evaluation splits (every rank runs it)."""
    import tasks

    task_cls = tasks.get_task(config.task.name)
    task = task_cls(task_cls.make_params(**config.task_params), None, config.seed)
    splits = task.setup()
    module = build_module(config, task, splits, 1)
    module.load_state_dict(torch.load(weights))
    loaders = make_loaders(config, splits, torch.device("cpu"), shard)
    trainer = L.Trainer(accelerator="cpu", devices=shard.world, strategy=shard.strategy(),
                        use_distributed_sampler=False, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.validate(module, loaders.val, verbose=False)
    trainer.test(module, loaders.test, verbose=False)
    if out is not None:
        out.update(results=module.results, stats=module.last_stats)


@pytest.mark.slow
def test_fixed_checkpoint_scores_the_same_over_two_processes(make_config: Any, tmp_path: Path) -> None:
    config = make_config("lstm", "copy", COPY_PARAMS, model_overrides={"hidden_size": 16},
                         train_overrides={"eval_batch_size": 8})
    import tasks

    task_cls = tasks.get_task("copy")
    task = task_cls(task_cls.make_params(**config.task_params), None, config.seed)
    torch.manual_seed(7)
    weights = tmp_path / "weights.pt"
    torch.save(build_module(config, task, task.setup(), 1).state_dict(), weights)

    scored = {}
    for world in (1, 2):
        out: dict[str, Any] = {}
        with processes(world, _score, config, weights) as shard:
            _score(shard, config, weights, out)
        scored[world] = out
    one, two = scored[1], scored[2]
    for split, n in (("val", 37), ("test", 29)):
        assert int(one["stats"][split]["sequences"]) == int(two["stats"][split]["sequences"]) == n
        assert one["results"][split].keys() == two["results"][split].keys()
        for key, value in one["results"][split].items():
            assert math.isfinite(value)
            assert two["results"][split][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (split, key)


# --- the CLI ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_run_over_two_processes_is_recorded_once(results_dir: Path, mlflow_runs: Any,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    # 8 training batches: 4 steps a process per epoch, 8 in all, the first 2 out of the throughput
    argv = ["run", "--no-baselines", "--models", "lstm", "--tasks", "copy:delay=5:n_train=512:n_val=37:n_test=29",
            "--profile", "tiny", "--set", "model.hidden_size=16", "--set", "train.devices=2",
            "--set", "train.strategy=ddp", "--results", str(results_dir), "--accelerator", "cpu"]
    assert main(argv) == 0, capsys.readouterr().err
    assert "1 finished" in capsys.readouterr().out

    (run,) = mlflow_runs(results_dir)
    metrics = run.data.metrics
    assert run.info.status == "FINISHED"
    assert run.data.params["train.devices"] == "2" and run.data.params["train.strategy"] == "ddp"
    assert math.isfinite(metrics["test/ce"]) and math.isfinite(metrics["val/ce"])
    assert metrics["perf/train_samples_per_s"] > 0
    assert metrics["train/steps"] == 8 and metrics["train/epochs"] == 2
