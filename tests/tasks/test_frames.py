"""moving-shapes: the generator (determinism, shapes inside the frame, bouncing, splits) and
the frames path through the harness (conv-lstm reads frames, other models flat vectors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.catalog import load_catalog, parse_request
from bench.cli import main
from bench.module import SeqModule
from bench.tracking import Tracker, default_tracking_uri
from models import Incompatible, InputSpec, get_model
from tasks.frames import MovingShapes, bounce

SMALL = {"size": 12, "n_train": 40, "n_val": 16, "n_test": 16}


def make(seed: int = 0, **params: object) -> MovingShapes:
    return MovingShapes(MovingShapes.make_params(**{**SMALL, **params}), seed=seed)


def test_generation_is_exactly_repeatable_and_only_training_follows_the_seed() -> None:
    a, b, c = make().setup(), make().setup(), make(seed=1).setup()
    for split in ("train", "val", "test"):
        for key in ("x", "y"):
            assert torch.equal(getattr(a, split).tensors[key], getattr(b, split).tensors[key])
    assert not torch.equal(a.train.tensors["x"], c.train.tensors["x"])
    assert torch.equal(a.test.tensors["x"], c.test.tensors["x"])  # every seed is scored on the same test
    assert torch.equal(a.val.tensors["y"], c.val.tensors["y"])


def test_splits_share_no_sequence() -> None:
    splits = make(n_train=200, n_val=100, n_test=100).setup()
    seen = {}
    for split in ("train", "val", "test"):
        for row in splits.__getattribute__(split).tensors["x"].flatten(1):
            key = row.numpy().tobytes()
            assert seen.setdefault(key, split) == split, f"a {split} sequence is also in {seen[key]}"


def test_frames_and_shapes() -> None:
    p = MovingShapes.make_params(**SMALL)
    splits = make().setup()
    x, y = splits.train.tensors["x"], splits.train.tensors["y"]
    assert x.shape == (40, p.input_frames, 144) and y.shape == (40, p.predict_frames, 144)
    assert splits.frame == (12, 12) and splits.n_features == 144 and splits.seq_len == p.input_frames
    assert set(torch.unique(torch.cat([x.flatten(), y.flatten()])).tolist()) == {0.0, 1.0}
    frames = torch.cat([x, y], 1).view(40, -1, 12, 12)
    covered = frames.sum((2, 3))  # pixels on per frame: at least one shape (radius >= 2: 9+ pixels)
    assert covered.min() >= 9
    assert covered.max() <= 2 * 49  # two squares of radius 3 at most
    moved = (frames[:, 1:] != frames[:, :-1]).flatten(2).any(-1)  # (N, T-1): shapes move every frame or so
    assert moved.float().mean() > 0.8


def test_bounce_reflects_at_the_walls_and_keeps_speed() -> None:
    start = torch.tensor([[2.0, 5.0]], dtype=torch.float64)
    velocity = torch.tensor([[-1.0, 2.0]], dtype=torch.float64)
    lo, hi = torch.full((1, 2), 1.0, dtype=torch.float64), torch.full((1, 2), 8.0, dtype=torch.float64)
    path = bounce(start, velocity, lo, hi, 12)[0]  # (12, 2)
    assert path[:, 0].tolist()[:5] == [2.0, 1.0, 2.0, 3.0, 4.0]  # down to the wall, then back
    assert path[:, 1].tolist()[:5] == [5.0, 7.0, 7.0, 5.0, 3.0]  # up to 9 -> reflected to 7
    assert (path >= 1.0).all() and (path <= 8.0).all()
    steps = (path[1:] - path[:-1]).abs()
    assert ((steps[:, 0] - 1.0).abs() < 1e-9).all()  # no step is longer than the speed


def test_the_reference_repeats_the_last_frame() -> None:
    task = make()
    splits = task.setup()
    x, y = splits.test.tensors["x"], splits.test.tensors["y"]
    mse = float(((x[:, -1:] - y) ** 2).mean())
    assert task.references()["mse"] == pytest.approx(mse)
    assert 0.0 < task.references()["iou"] < 1.0


def test_only_frame_readers_and_flat_readers_serve_it() -> None:
    catalog = load_catalog()
    request = parse_request("conv-lstm,lstm,transformer", "moving-shapes,copy", "0", "tiny", [], catalog)
    pairs = {(m, t.name) for m, t in request.pairs()}
    assert {("conv-lstm", "moving-shapes"), ("lstm", "moving-shapes"), ("transformer", "moving-shapes")} <= pairs
    assert ("conv-lstm", "copy") not in pairs
    assert any(m == "conv-lstm" and "reads frames only" in reason for m, _, reason in request.refused)
    with pytest.raises(Incompatible, match="image frames"):
        spec = get_model("conv-lstm")
        spec.build(InputSpec(n_features=4), spec.make_hparams(), False)


def test_conv_lstm_forecasts_frames_with_its_own_head() -> None:
    task = make()
    splits = task.setup()
    spec = get_model("conv-lstm")
    backbone = spec.build(InputSpec(n_features=144, frame=(12, 12)), spec.make_hparams(hidden_size=4), False)
    module = SeqModule(backbone, task, {})
    assert isinstance(module.head.conv, torch.nn.Conv2d)  # a convolution, not a linear map of whole frames
    batch = splits.val.tensors
    out = module(batch["x"][:3], batch["mask"][:3])
    assert out.shape == (3, task.params.predict_frames, 144)
    lstm = get_model("lstm")
    flat = SeqModule(lstm.build(InputSpec(n_features=144), lstm.make_hparams(hidden_size=8), False), task, {})
    assert flat(batch["x"][:3], batch["mask"][:3]).shape == (3, task.params.predict_frames, 144)


@pytest.mark.slow
def test_a_run_on_frames_is_recorded_with_its_figure(results_dir: Path, data_dir: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", "--models", "conv-lstm", "--tasks", "moving-shapes:size=12:n_train=64:n_val=32:n_test=32",
                 "--profile", "tiny", "--set", "model.hidden_size=4",
                 "--data-dir", str(data_dir), "--results", str(results_dir)])
    assert code == 0, capsys.readouterr().err
    tracker = Tracker(default_tracking_uri(results_dir), results_dir)
    runs = {r.data.tags["model"]: r for r in tracker.client.search_runs([tracker.experiment_id("moving-shapes")])}
    assert runs["conv-lstm"].info.status == "FINISHED"
    assert "last-value" in runs  # repeating the last frame is on the board as a baseline
    for model in ("conv-lstm", "last-value"):
        assert 0.0 <= runs[model].data.metrics["test/mse"] <= 1.0
    assert "frames_test.png" in [a.path for a in tracker.client.list_artifacts(runs["conv-lstm"].info.run_id)]
