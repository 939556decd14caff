"""A run's trained model, kept in the store and loaded back without the harness's run loop.

A finished leaderboard run may keep its best checkpoint (the weights its test metrics were
computed with) as the run artifact ``model/``:

    model/weights.pt   the state dict of the scored module (backbone, head, normalisation);
                       plain tensors, read with ``torch.load(..., weights_only=True)``
    model/model.json   everything needed to build the module again: the model and its
                       hyper-parameters, the task and its parameters, the seed, the recipe,
                       the input and output dimensions, versions

``load(run_id)`` builds the module from the registries, loads the weights and sets up the
task's data (a text task's vocabulary and a forecasting task's scaling come from it);
``LoadedModel.evaluate`` scores a split with a plain loop, and ``bench load RUN_ID`` prints
that beside what the run recorded.

Whether a run keeps its model is a per-profile default (``KEEP_MODEL``), overridden with
``--keep-model`` / ``--no-keep-model``: see the README for the sizes behind the choice.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

import models
import tasks
from bench.config import RunConfig, TaskRef, family_neutral
from bench.errors import BenchError
from bench.meters import autocast_dtype
from bench.module import SeqModule
from tasks.batching import eval_loader
from tasks.registry import Splits, Task

ARTIFACT = "model"  # the artifact directory of a run's model
MODEL_TAG = "seqbench.model"  # set on a run whose model is kept: the artifact directory
MODEL_ERROR_TAG = "seqbench.model_error"  # why a run that was to keep its model could not
FORMAT = 1  # of model.json; bumped when its meaning changes

# Quick and tiny sweeps are for looking at numbers, and are run again and again: keeping
# their models would make the store grow about six times as fast (measured on the quick
# sweep's 54 runs: 0.11 MB a run without, 0.68 MB with; lstm x imdb alone is 5.5 MB) for
# weights that are rarely loaded. Standard and full runs are worth keeping; --tuned and
# bench reproduce keep theirs whatever the profile (bench.cli).
KEEP_MODEL = {"tiny": False, "quick": False, "standard": True, "full": True}


def keeps_model(profile: str, choice: bool | None) -> bool:
    """Whether a run of ``profile`` keeps its model: the explicit choice, else the profile's default."""
    return KEEP_MODEL.get(profile, True) if choice is None else choice


def input_spec(splits: Splits) -> models.InputSpec:
    return models.InputSpec(vocab_size=splits.vocab_size, n_features=splits.n_features, season=splits.season,
                            seq_len=splits.seq_len, frame=splits.frame)


def build_network(config: RunConfig, task: Task, splits: Splits) -> Any:
    """The model's network for ``config`` (a backbone, or a baseline's predictor), untrained;
    ``models.Incompatible`` where it cannot serve this data."""
    spec = models.get_model(config.model)
    out = task.output
    return spec.instantiate(input_spec(splits), spec.make_hparams(**config.model_params), task.causal,
                            models.OutputShape(out.kind, out.n_classes, out.shape))


def build_module(config: RunConfig, task: Task, splits: Splits, total_steps: int = 1) -> SeqModule:
    """The run's module (the network and the head the task's output needs), untrained."""
    predictor = models.get_model(config.model).predictor
    return SeqModule(build_network(config, task, splits), task, config.train, predictor=predictor,
                     total_steps=total_steps)


def save(module: SeqModule, config: RunConfig, splits: Splits, code_version: str, where: Path) -> Path:
    """Write ``module``'s weights and what rebuilds it into directory ``where``/model."""
    out = where / ARTIFACT
    out.mkdir(parents=True, exist_ok=True)
    # (a compiled backbone's weights are those of the module it wraps: saved under their own names)
    state = {k.replace("._orig_mod.", "."): v.detach().cpu() if isinstance(v, torch.Tensor) else v
             for k, v in module.state_dict().items()}
    if not state and hasattr(module.backbone, "fit_data"):  # a fitted baseline whose state is elsewhere
        raise ValueError(f"{config.model} keeps what it fitted outside its state dict: it cannot be saved")
    torch.save(state, out / "weights.pt")
    spec = {
        "format": FORMAT,
        "model": config.model,
        "model_params": config.model_params,
        "task": config.task.name,
        "task_variant": config.task.label,
        "task_ref": {"variant": config.task.variant, "params": config.task.params},  # as named on the CLI
        "task_params": config.task_params,
        "task_version": config.task_version,
        "seed": config.seed,
        "profile": config.profile,
        "train": config.train,
        "budget": config.budget,
        "input": dataclasses.asdict(input_spec(splits)),
        "output": dataclasses.asdict(module.task.output),
        "code_version": code_version,
        "torch": torch.__version__,
    }
    (out / "model.json").write_text(json.dumps(spec, indent=1, sort_keys=True, default=str))
    return out


def size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e6


@dataclass
class LoadedModel:
    """A run's model, built again and holding its best weights, with its task and data."""

    run_id: str
    config: RunConfig
    task: Task
    splits: Splits
    module: SeqModule  # in eval mode, on ``device``
    device: torch.device

    def predict(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The model's output for a batch: token ids (B, T) or features (B, T, F), with a
        (B, T) mask of real steps (all real if omitted)."""
        if mask is None:
            mask = torch.ones(x.shape[:2], dtype=torch.bool)
        mixed = autocast_dtype(self.config.train["precision"])
        with torch.no_grad(), torch.autocast(self.device.type, dtype=mixed, enabled=mixed is not None):
            return self.module(x.to(self.device), mask.to(self.device)).float().cpu()

    def evaluate(self, split: str = "test", batch_size: int | None = None) -> dict[str, float]:
        """The task's metrics of one split ("train", "val", "test"), every sample once."""
        data = getattr(self.splits, split)
        stats: dict[str, torch.Tensor] = {}
        for batch in eval_loader(data, batch_size or self.config.train["eval_batch_size"]):
            pred = self.predict(batch["x"], batch["mask"])
            for k, v in self.task.batch_stats(pred, batch).items():
                stats[k] = stats[k] + v if k in stats else v
        return self.task.finalize(stats)


def config_of(spec: dict[str, Any]) -> RunConfig:
    task_cls = tasks.get_task(spec["task"])
    ref = TaskRef(task_cls.name, spec["task_ref"]["variant"], spec["task_ref"]["params"])
    return RunConfig(spec["model"], ref, int(spec["seed"]), spec["profile"],
                     spec["model_params"], spec["task_params"], spec["train"], spec["budget"],
                     int(spec.get("task_version", task_cls.version)), family_neutral(models.get_model(spec["model"])))


def load_dir(path: Path, data_dir: Path | None = None, run_id: str = "", device: str = "cpu") -> LoadedModel:
    """A model saved by ``save`` in directory ``path`` (holding model.json and weights.pt)."""
    try:
        spec = json.loads((path / "model.json").read_text())
    except (OSError, ValueError) as e:
        raise BenchError(f"{path} holds no readable model.json: {e}") from None
    if spec.get("format") != FORMAT:
        raise BenchError(f"{path}/model.json is format {spec.get('format')}; this version reads format {FORMAT}")
    config = config_of(spec)
    task_cls = tasks.get_task(config.task.name)
    if task_cls.version != config.task_version:
        raise BenchError(f"run {run_id or path} was trained on version {config.task_version} of task "
                         f"{config.task.name}; this code has version {task_cls.version}, whose data may differ")
    task = task_cls(task_cls.make_params(**config.task_params), data_dir, config.seed)
    splits = task.setup()
    saved = models.InputSpec(**spec["input"])
    if input_spec(splits) != saved:
        raise BenchError(f"the data of {config.task.label} now gives inputs {input_spec(splits)}, but the model "
                         f"was trained on {saved}")
    module = build_module(config, task, splits)
    state = torch.load(path / "weights.pt", map_location="cpu", weights_only=True)
    module.load_state_dict(state, strict=True)
    target = torch.device(device)
    module.to(target).eval()
    return LoadedModel(run_id, config, task, splits, module, target)


def load(run_id: str, tracker: Any, data_dir: Path | None = None, device: str = "cpu") -> LoadedModel:
    """The model that run ``run_id`` kept, from the store ``tracker`` opens."""
    run = tracker.get_run(run_id)
    if MODEL_TAG not in run.data.tags:
        raise BenchError(f"run {run_id} kept no model (runs keep one with --keep-model, or by their profile's "
                         "default: standard and full)")
    with tempfile.TemporaryDirectory(prefix="seqbench-model-") as tmp:
        local = tracker.download(run_id, run.data.tags[MODEL_TAG], Path(tmp))
        return load_dir(local, data_dir, run_id, device)
