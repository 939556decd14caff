"""Build, train, evaluate, measure and record one run; run a sweep of them.

``run(config)`` is the single entry point that the CLI, tuning and tests call. Each run
is isolated at the exception level inside one long-lived process (a fresh interpreter
per run would pay torch's and Lightning's import time every time): whatever goes wrong
(an exception, a non-finite loss, out of memory) is recorded as a failed run with its
reason, and the sweep goes on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

import bench
import models
import tasks
from bench.config import RunConfig
from bench.distributed import Shard, check_devices, processes
from bench.executor import RunnerSettings, new_sweep_id
from bench.gates import GateRecorder, gate_figure, gated, look_at_gates
from bench.memory import PeakMemory
from bench.meters import Throughput, inference_latency
from bench.module import CURVE, SeqModule
from bench.saved_model import MODEL_ERROR_TAG, MODEL_TAG, build_module, build_network, keeps_model, size_mb
from bench.saved_model import save as save_model
from bench.signals import Interrupted, requests
from bench.tracking import Claim, Heartbeat, SystemMetrics, Tracker
from tasks.batching import BucketBatchSampler, eval_loader
from tasks.published import Published, from_tags, to_tags
from tasks.registry import PaddedSplit, Splits, Task

ROOT = Path(__file__).resolve().parent.parent
log = logging.getLogger(__name__)

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*The number of training batches.*")
warnings.filterwarnings("ignore", message=r".*Checkpoint directory.*exists and is not empty.*")
warnings.filterwarnings("ignore", message=r".*LeafSpec.*")


class Listener(Protocol):
    """Receives live progress from a run (the CLI draws it; tests may ignore it)."""

    def on_start(self, config: RunConfig, max_steps: int) -> None: ...
    def on_step(self, step: int, loss: float) -> None: ...
    def on_validation(self, step: int, metrics: dict[str, float]) -> None: ...
    def on_evaluate(self) -> None: ...
    def on_wait(self, result: RunResult) -> None: ...  # waiting for another process's run (result.reason)


@dataclass
class RunResult:
    config: RunConfig
    # "finished" | "failed" | "cached" (finished earlier or elsewhere, not run again) | "refused" (cannot
    # serve) | "busy" (another process is training it: reason names it, run_id is its run)
    status: str
    metrics: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    run_id: str = ""
    references: dict[str, float] = field(default_factory=dict)
    published: list[Published] = field(default_factory=list)  # figures papers report for the task
    primary_metric: str = ""
    higher_is_better: bool = True
    wall_s: float = 0.0
    stop_reason: str = ""  # why training ended: max_steps, early stopping, max_time (the guard), ...


@dataclass
class Outcome:
    """What training and evaluating one run produced, before it is recorded."""

    metrics: dict[str, float]
    history: list[tuple[int, dict[str, float]]]  # (step, learning-curve values) per validation
    stop_reason: str
    references: dict[str, float]  # published figures for this task
    figures: dict[str, Any]  # name -> matplotlib figure
    module: SeqModule | None = None  # holding the best checkpoint's weights, where it is to be kept
    published: tuple[Published, ...] = ()  # figures papers report for the task


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment_tags(device: torch.device) -> dict[str, str]:
    import mlflow

    if device.type == "cuda":
        name = f"cuda: {torch.cuda.get_device_name(device)}"
    else:
        name = f"cpu: {platform.machine()}, {torch.get_num_threads()} threads"
    return {
        "device": name,
        "version.python": platform.python_version(),
        "version.torch": torch.__version__,
        "version.lightning": L.__version__,
        "version.mlflow": mlflow.__version__,
        "version.seqbench": bench.__version__,
        "git_commit": git_commit(),
        "host": platform.node(),
    }


def device_kind(device: torch.device) -> str:
    """What a run's speed depends on: 'cpu', or the GPU's name."""
    return f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda" else "cpu"


def model_files(module: Any) -> set[Path]:
    """A model family's file and those of the ``models`` modules it takes code from (a cell
    loop, a layer), recursively."""
    seen: set[str] = set()
    todo = [module.__name__]
    while todo:
        name = todo.pop()
        if name in seen or not name.startswith("models."):
            continue
        seen.add(name)
        for value in vars(sys.modules[name]).values():
            todo.append(value.__name__ if inspect.ismodule(value) else getattr(value, "__module__", "") or "")
    return {Path(inspect.getfile(sys.modules[name])) for name in seen}


def code_version(model: str, task: str) -> str:
    """A hash of the source files a (model, task) run's numbers depend on: the model's
    family file and the shared model code, the task's files (its class and base classes),
    and the training module and recipe. Editing any of them makes earlier runs of the pair
    no longer count as "recorded earlier"."""
    spec = models.get_model(model)
    task_cls = tasks.get_task(task)
    files = {ROOT / "models" / "registry.py", ROOT / "models" / "layers.py",
             ROOT / "tasks" / "registry.py", ROOT / "bench" / "module.py", ROOT / "bench" / "recipe.py"}
    files |= model_files(sys.modules[spec.build.__module__])
    files |= {Path(inspect.getfile(c)) for c in inspect.getmro(task_cls) if c.__module__.startswith("tasks.")}
    h = hashlib.sha256()
    for f in sorted(files):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:12]


def failure_reason(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    # CUDA's and Python's own, and the CPU allocator's RuntimeError ("can't allocate memory")
    if isinstance(e, torch.cuda.OutOfMemoryError | MemoryError) or "can't allocate memory" in text:
        return f"out of memory: {text or type(e).__name__}"[:500]
    if "could not create a primitive descriptor" in text:  # oneDNN, e.g. an LSTM in bf16 on most CPUs
        text = f"this CPU's oneDNN has no kernel for a layer at this precision (train.precision); {text}"
    return f"{type(e).__name__}: {text}"[:500]


class _Progress(L.Callback):
    def __init__(self, listener: Listener, every: int = 5) -> None:
        self.listener, self.every = listener, every

    def on_train_batch_end(self, trainer: L.Trainer, module: Any, out: Any, batch: Any, i: int) -> None:
        if trainer.global_step % self.every == 0:  # the last loss read, so as not to wait for the device
            self.listener.on_step(trainer.global_step, module.last_loss)

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.state.fn == "fit" and "val" in module.results:
            self.listener.on_validation(trainer.global_step, module.results["val"])


class Runner:
    def __init__(
        self,
        tracker: Tracker,
        data_dir: Path,
        sweep_id: str | None = None,
        listener: Listener | None = None,
        accelerator: str = "auto",
        rerun: bool = False,
        keep_model: bool | None = None,
        system_metrics_s: float | None = None,
        model_required: bool = False,
    ) -> None:
        """``keep_model``: whether leaderboard runs keep their model (None: their profile's
        default, ``bench.saved_model.KEEP_MODEL``); ``model_required``: a configuration recorded
        earlier without its model is trained again (the user asked for models explicitly).
        ``system_metrics_s``: sample MLflow's system metrics (CPU, GPU, memory) every this many
        seconds during each run (None: not at all)."""
        self.tracker = tracker
        self.data_dir = data_dir
        self.sweep_id = sweep_id or new_sweep_id()
        self.listener = listener
        self.accelerator = accelerator
        self.rerun = rerun
        self.keep_model = keep_model
        self.model_required = model_required
        self.system_metrics_s = system_metrics_s
        self.device = run_device(accelerator)
        self.env_tags = environment_tags(self.device)
        self.device_kind = device_kind(self.device)
        self._data: OrderedDict[str, tuple[Task, Splits]] = OrderedDict()
        self._records: dict[str, list[Any]] = {}  # the dataset records of the data kept in _data, by its key
        self._reaped: set[str] = set()  # tasks whose abandoned runs were looked for
        self.extra_tags: dict[str, str] = {}  # on every run from now on (a Ray worker: its node and task)

    @classmethod
    def from_settings(cls, s: RunnerSettings, tracker: Tracker | None = None,
                      listener: Listener | None = None) -> Runner:
        """A runner made of ``s`` (a Ray worker opens its own tracker on ``s.tracking_uri``)."""
        tracker = tracker or Tracker(s.tracking_uri, Path(s.results_dir))
        return cls(tracker, Path(s.data_dir), sweep_id=s.sweep_id, listener=listener, accelerator=s.accelerator,
                   rerun=s.rerun, keep_model=s.keep_model, system_metrics_s=s.system_metrics_s,
                   model_required=s.model_required)

    @property
    def runs_on(self) -> str:
        return self.env_tags["device"]

    def data(self, config: RunConfig) -> tuple[Task, Splits]:
        """The task and its splits; kept for the next runs that use the same data."""
        key = self._data_key(config)
        if key not in self._data:
            task = make_task(config, self.data_dir)
            self._data[key] = (task, task.setup())
            while len(self._data) > 4:
                dropped, _ = self._data.popitem(last=False)
                self._records.pop(dropped, None)
        self._data.move_to_end(key)
        return self._data[key]

    @staticmethod
    def _data_key(config: RunConfig) -> str:
        seeded = tasks.get_task(config.task.name).seeded_data
        seed = config.seed if seeded else None  # real data: one setup serves every seed
        return json.dumps([config.task.name, config.task_params, seed], sort_keys=True)

    def run(
        self,
        config: RunConfig,
        *,
        callbacks: tuple[L.Callback, ...] = (),
        tags: dict[str, str] | None = None,
        run_name: str = "",
        evaluate_test: bool = True,
    ) -> RunResult:
        """Train, evaluate and record one run.

        Tuning passes its pruning ``callbacks``, extra ``tags`` (the parent study run, the
        trial) and ``evaluate_test=False``: a trial is chosen on validation alone, and the test
        split is left for the tuned configuration's own runs. Such runs are never looked up as
        earlier results, nor claimed. A ``StoppingCallback`` that ends training gives the run's
        stop reason.

        A leaderboard run (kind "run") is claimed through the store: while another process's
        run of the same configuration is alive, the result is "busy" and nothing is written.
        """
        task_cls = tasks.get_task(config.task.name)
        result = RunResult(config, "finished", primary_metric=task_cls.primary_metric,
                           higher_is_better=task_cls.higher_is_better)
        kind = (tags or {}).get("kind", "run")
        code = code_version(config.model, config.task.name)
        cache_key = hashlib.sha256(f"{config.config_hash} {self.device_kind} {code}".encode()).hexdigest()[:16]
        task = config.task.name
        if task not in self._reaped:  # runs that processes killed without a word left RUNNING
            self.tracker.reap(task)
            self._reaped.add(task)
        claims = kind == "run"
        keep = claims and keeps_model(config.profile, self.keep_model)
        required = keep and self.model_required
        if claims and self._done_or_held(result, self.tracker.claim(task, cache_key), required):
            return result
        reason = self._incompatibility(config)
        if reason:
            result.status, result.reason = "refused", reason
            return result
        suffix = "" if config.task.label == config.task.name else f"[{config.task.label.split(':', 1)[1]}]-"
        tags = {
            **self.env_tags,
            "model": config.model,
            "task": task,
            "task_variant": config.task.label,
            "seed": str(config.seed),
            "profile": config.profile,
            "sweep_id": self.sweep_id,
            "config_hash": config.config_hash,
            "config_id": config.config_id,
            "cache_key": cache_key,
            "code_version": code,
            "device_kind": self.device_kind,
            "kind": kind,
            **self.extra_tags,
            **(tags or {}),
        }
        with self.tracker.claim_lock() if claims else contextlib.nullcontext(), requests.polled():
            if claims and self._done_or_held(result, self.tracker.claim(task, cache_key), required):
                return result  # finished or claimed by another process since the first look
            result.run_id = mine = self.tracker.start(task, run_name or f"{config.model}-{suffix}s{config.seed}",
                                                      config.flat(), tags)
        t0 = time.perf_counter()
        try:
            requests.check()  # a stop request that came while the run was being created
            if claims and not self.tracker.exclusive_claims:  # no lock across machines: look again
                claim = self.tracker.claim(task, cache_key, mine=mine)
                if self._done_or_held(result, claim, required):
                    self.tracker.give_way(mine, result.run_id)
                    return result
            self._log_datasets(config, mine, evaluate_test)
            with Heartbeat(self.tracker, result.run_id), SystemMetrics(self.tracker, mine, self.system_metrics_s):
                with PeakMemory(self.device) as memory:
                    outcome = self.fit_and_evaluate(config, result.run_id, callbacks, evaluate_test, keep)
                with requests.polled():  # a first Ctrl+C waits until the run is recorded
                    self._record(result, outcome, memory.metrics(), t0, code)
        except (KeyboardInterrupt, Interrupted):
            self._stopped(mine)
        except Exception as e:  # noqa: BLE001 - any failure is recorded and the sweep goes on
            if requests.pending is not None:  # caused by the stop request (e.g. loader workers it killed)
                self._stopped(mine)
            result.status, result.reason = "failed", failure_reason(e)
            result.run_id = mine
            with requests.polled():
                self.tracker.set_tags(mine, {"failure_reason": result.reason})
                self.tracker.log_text(mine, traceback.format_exc(), "error.txt")
                self.tracker.end(mine, "FAILED")
        finally:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        result.wall_s = time.perf_counter() - t0
        requests.raise_pending()  # a stop request that came while the run was being recorded
        return result

    def _stopped(self, run_id: str) -> None:
        """Record a run that Ctrl+C or SIGTERM stopped as KILLED, then stop the sweep."""
        with requests.polled():
            self.tracker.set_tags(run_id, {"failure_reason": requests.deliver()})
            self.tracker.end(run_id, "KILLED")
        raise KeyboardInterrupt from None

    def _log_datasets(self, config: RunConfig, run_id: str, evaluate_test: bool) -> None:
        """The run's splits as its dataset inputs (a run that never sees the test split, a
        tuning trial, does not list it)."""
        task, splits = self.data(config)
        key = self._data_key(config)
        if key not in self._records:
            self._records[key] = task.data_records(config.task.label, splits)
        records = [dataclasses.replace(r, name=config.task.label)  # (another label may name the same data)
                   for r in self._records[key] if evaluate_test or r.context != "test"]
        self.tracker.log_datasets(run_id, records)

    def _done_or_held(self, result: RunResult, claim: Claim, model_required: bool = False) -> bool:
        """Fill ``result`` when the configuration needs no run here: it finished earlier (the
        same configuration, on the same kind of device, with the same code; unless --rerun;
        and with its model kept, where a model is required), or another live process trains it
        (busy)."""
        done = claim.finished
        if done is not None and not self.rerun and (MODEL_TAG in done.data.tags or not model_required):
            self.fill_cached(result, claim.finished)
            return True
        if claim.holder is not None:
            result.status, result.run_id = "busy", claim.holder.run_id
            result.reason = f"being trained by {claim.holder.owner.split('/')[0]} (run {claim.holder.run_id})"
            return True
        return False

    @staticmethod
    def fill_cached(result: RunResult, done: Any) -> None:
        result.status, result.run_id, result.metrics = "cached", done.info.run_id, dict(done.data.metrics)
        result.references = {k.split(".", 1)[1]: float(v) for k, v in done.data.tags.items()
                             if k.startswith("reference.")}
        result.published = from_tags(done.data.tags)
        result.stop_reason, result.reason = done.data.tags.get("stop_reason", ""), ""

    def _record(self, result: RunResult, outcome: Outcome, memory: dict[str, float], t0: float,
                code_version: str) -> None:
        """Write a finished run's figures, model, metrics and tags, and end it FINISHED. Its
        learning curve is in the store already: it was written as the validations happened."""
        metrics = {**outcome.metrics, **memory}
        tags = {"stop_reason": outcome.stop_reason,
                **{f"reference.{k}": f"{v:.6g}" for k, v in outcome.references.items()}, **to_tags(outcome.published)}
        t_record = time.perf_counter()
        self._log_figures(result.run_id, outcome.figures)
        if outcome.module is not None:
            try:
                with tempfile.TemporaryDirectory(prefix="seqbench-model-") as tmp:
                    saved = save_model(outcome.module, result.config, self.data(result.config)[1], code_version,
                                       Path(tmp))
                    self.tracker.log_artifacts(result.run_id, saved)
                    metrics["model/artifact_mb"] = size_mb(saved)  # what keeping it costs the store
                tags[MODEL_TAG] = saved.name
            except Exception as e:  # noqa: BLE001 - the run's figures stand; it is recorded without its model
                tags[MODEL_ERROR_TAG] = failure_reason(e)
                log.warning("run %s: its model was not kept: %s", result.run_id, tags[MODEL_ERROR_TAG])
        metrics["time/record_s"] = time.perf_counter() - t_record  # figures, into the store
        metrics["time/total_s"] = time.perf_counter() - t0
        result.metrics, result.references, result.stop_reason = metrics, outcome.references, outcome.stop_reason
        result.published = list(outcome.published)
        self.tracker.log_metrics(result.run_id, metrics)
        self.tracker.set_tags(result.run_id, tags)
        self.tracker.end(result.run_id, "FINISHED")

    def wait(self, result: RunResult, every_s: float = 5.0) -> Any:
        """Wait until the run that kept ``result`` busy has ended, was abandoned or gave way;
        that run, as it is then."""
        run = self.tracker.client.get_run(result.run_id)
        while run.info.status == "RUNNING" and run.info.lifecycle_stage != "deleted":
            if self.tracker.abandoned(run):
                self.tracker.mark_abandoned(run)
            else:
                time.sleep(every_s)
                requests.raise_pending()
            run = self.tracker.client.get_run(result.run_id)
        return run

    def sweep(self, runs: list[tuple[RunConfig, dict[str, str]]], on_result: Any = None) -> list[RunResult]:
        """Run each (configuration, tags) in turn; return their results in the same order.

        A configuration that another process is training is put off to the end of the sweep,
        then waited for: if that run finished, its result counts here as recorded earlier; if
        it failed or was abandoned, it is trained here."""
        results: list[RunResult | None] = [None] * len(runs)
        deferred = []
        for i, (config, tags) in enumerate(runs):
            requests.raise_pending()
            result = self.run(config, tags=tags)
            if result.status == "busy":
                deferred.append((i, result))
                continue
            results[i] = result
            if on_result is not None:
                on_result(result)
        for i, busy in deferred:
            if self.listener is not None:
                self.listener.on_wait(busy)
            result = busy
            while result.status == "busy":  # (again, if a third process took it over in the meantime)
                done = self.wait(result)
                if done.info.status == "FINISHED" and done.info.lifecycle_stage != "deleted":
                    self.fill_cached(result, done)  # trained elsewhere during this sweep, --rerun or not
                else:
                    result = self.run(runs[i][0], tags=runs[i][1])
            results[i] = result
            if on_result is not None:
                on_result(result)
        return [r for r in results if r is not None]

    def loaders(self, config: RunConfig, splits: Splits) -> Loaders:
        """The run's data loaders. Evaluation loaders never shuffle and never drop the last,
        smaller batch; variable-length splits are batched by length (``tasks.batching``)."""
        return make_loaders(config, splits, self.device)

    def _incompatibility(self, config: RunConfig) -> str:
        """Why this model cannot be built for this data ('' if it can, or if the problem is
        another one: that is then recorded as the run's failure)."""
        try:
            task, splits = self.data(config)
            build_network(config, task, splits)
        except models.Incompatible as e:
            return str(e)
        except Exception:  # noqa: BLE001 - recorded by the run itself
            return ""
        return ""

    def _log_figures(self, run_id: str, figures: dict[str, Any]) -> None:
        import matplotlib.pyplot as plt

        for name, figure in figures.items():
            self.tracker.log_figure(run_id, figure, name)
            plt.close(figure)

    def fit_and_evaluate(
        self, config: RunConfig, run_id: str = "", extra: tuple[L.Callback, ...] = (), evaluate_test: bool = True,
        keep_model: bool = False,
    ) -> Outcome:
        """Train ``config``'s model and score its best checkpoint. Each validation during
        training is written to run ``run_id`` as it happens (the live learning curve). With
        ``keep_model``, the outcome holds the module with the checkpoint that was scored.

        With ``train.devices`` > 1 this process is rank 0 of the run's processes
        (``bench.distributed``): it alone writes, draws and measures; the others only train
        and score their shares, and the metrics are the whole splits' and the whole job's."""
        train = config.train
        L.seed_everything(config.seed, workers=True, verbose=False)
        task, splits = self.data(config)

        if train["precision"] == "16-mixed" and self.device.type != "cuda":
            raise ValueError("train.precision=16-mixed needs a GPU; on a CPU use bf16-mixed or 32")
        check_devices(train["devices"], self.device)
        writers = [_LiveCurve(self.tracker, run_id)] if run_id else []
        with tempfile.TemporaryDirectory(prefix="seqbench-ckpt-") as ckpt_dir, \
                processes(train["devices"], _other_rank, config, self.data_dir, self.accelerator, ckpt_dir,
                          evaluate_test) as shard:
            done = train_and_score(config, task, splits, self.device, self.accelerator, shard, ckpt_dir,
                                   (*extra, *writers), evaluate_test, self.listener)
        module, trainer = done.module, done.trainer
        mode = "max" if task.higher_is_better else "min"

        metrics: dict[str, float] = {f"val/{k}": v for k, v in module.results["val"].items()}
        metrics.update({f"test/{k}": v for k, v in module.results.get("test", {}).items()})
        metrics.update(done.throughput.metrics())
        # latency on the batches one process sees (a run over several: the whole splits' batches)
        whole = done.loaders if train["devices"] == 1 else make_loaders(config, splits, self.device)
        typical = middle_batch(whole.test if evaluate_test else whole.val)
        metrics.update(inference_latency(module, typical, self.device, precision=train["precision"]))
        metrics.update({
            "model/params": sum(p.numel() for p in module.parameters()),
            "train/steps": trainer.global_step,
            "train/epochs": trainer.global_step / max(done.steps_per_epoch, 1),
            "train/best_step": _best_step(module.history, CURVE + task.primary_metric, mode),
            "time/train_s": done.train_s,  # includes the validations and checkpoints during training
            "time/eval_s": done.eval_s,  # the best checkpoint scored: the test split (validation if not on record)
        })
        module.eval()

        def predict(batch: dict[str, torch.Tensor]) -> torch.Tensor:
            with torch.no_grad():
                return module(batch["x"].to(self.device), batch["mask"].to(self.device)).cpu()

        figures = task.figures(predict, splits, module.last_stats["test"]) if evaluate_test else {}
        if train["record_gates"] and gated(module) is not None:
            seen = look_at_gates(module, whole.val, keep_values=True)
            figure = gate_figure(seen, f"{config.label}: gates on validation, scored checkpoint")
            if figure is not None:
                figures["gates.png"] = figure
        stop = stop_reason(trainer, done.early, extra, config.budget, done.train_s, done.trainable)
        kept = module if keep_model and evaluate_test else None  # after test: the scored weights
        return Outcome(metrics, module.history, stop, task.references(), figures, kept, task.published)


def make_loaders(config: RunConfig, splits: Splits, device: torch.device, shard: Shard | None = None) -> Loaders:
    """The run's data loaders (of one rank's share, with ``shard``; ``tasks.batching``)."""
    shard = shard or Shard()
    train = config.train
    workers = train["loader_workers"]
    speed = {"num_workers": workers, "persistent_workers": workers > 0, "pin_memory": device.type == "cuda"}

    # The order depends on the seed and the epoch alone, whatever loads the batches.
    lengths = splits.train.lengths if isinstance(splits.train, PaddedSplit) else torch.ones(len(splits.train),
                                                                                             dtype=torch.long)
    batches = BucketBatchSampler(lengths, train["batch_size"], config.seed, rank=shard.rank, world=shard.world)
    return Loaders(DataLoader(splits.train, batch_sampler=batches, collate_fn=splits.train.collate, **speed),
                   eval_loader(splits.val, train["eval_batch_size"], shard.rank, shard.world, **speed),
                   eval_loader(splits.test, train["eval_batch_size"], shard.rank, shard.world, **speed))


@dataclass
class Trained:
    """What training and scoring produced in one process (of a run's ranks: the same
    metrics, history and step count in each)."""

    module: SeqModule  # holding the scored checkpoint's weights
    trainer: L.Trainer
    early: EarlyStopping
    throughput: Throughput
    loaders: Loaders  # this process's share of the batches
    steps_per_epoch: int
    trainable: bool
    train_s: float
    eval_s: float


def train_and_score(
    config: RunConfig, task: Task, splits: Splits, device: torch.device, accelerator: str, shard: Shard,
    ckpt_dir: str, extra: tuple[L.Callback, ...] = (), evaluate_test: bool = True, listener: Listener | None = None,
) -> Trained:
    """Train on this process's share of the batches, then score the best checkpoint (by the
    primary validation metric; the last weights if no validation ran). Every rank of a run
    calls it alike, seeded alike, with the same ``ckpt_dir`` (rank 0 writes the checkpoint,
    all read it); only rank 0 passes the callbacks that write or draw (``extra``, ``listener``)."""
    budget, train = config.budget, config.train
    loaders = make_loaders(config, splits, device, shard)
    train_loader, val_loader, test_loader = loaders.train, loaders.val, loaders.test
    steps_per_epoch = len(train_loader)
    total_steps = min(budget["max_steps"], budget["max_epochs"] * steps_per_epoch)
    module = build_module(config, task, splits, total_steps)
    net = module.backbone
    if train["compile"] and any(p.requires_grad for p in net.parameters()):
        module.backbone = torch.compile(net)
    monitor = f"val/{task.primary_metric}"
    mode = "max" if task.higher_is_better else "min"
    throughput = Throughput(budget["meter_warmup_steps"], task.tokens)
    early = _EarlyStopping(budget["min_steps"], monitor, mode=mode, patience=budget["patience"])
    # the gate statistics join each validation's record before ``extra`` writes it
    gates = [GateRecorder()] if train["record_gates"] and shard.rank == 0 else []
    callbacks: list[L.Callback] = [throughput, early, *gates, *extra, _StopCheck()]
    if listener is not None:
        listener.on_start(config, total_steps)
        callbacks.append(_Progress(listener))
    if shard.world > 1:
        callbacks.append(_StopTogether())

    best = ModelCheckpoint(dirpath=ckpt_dir, monitor=monitor, mode=mode, save_top_k=1, save_weights_only=True)
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=shard.world,
        strategy=shard.strategy(),
        use_distributed_sampler=False,  # the loaders are sharded already, evaluation without padding
        max_steps=budget["max_steps"],
        max_epochs=budget["max_epochs"],
        max_time={"seconds": budget["max_time_s"]},
        val_check_interval=budget["val_every_steps"],  # counted in steps, across epochs
        check_val_every_n_epoch=None,
        gradient_clip_val=train["grad_clip"] or None,
        precision=train["precision"],
        callbacks=[*callbacks, best],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        default_root_dir=ckpt_dir,
    )
    t_fit = time.perf_counter()
    if hasattr(net, "fit_data"):  # count-based baselines, on the whole training split in every rank
        net.fit_data(train_loader if shard.world == 1 else make_loaders(config, splits, device).train)
    trainable = any(p.requires_grad for p in module.parameters())
    if trainable:
        lightning_call(trainer, trainer.fit, module, train_loader, val_loader)
    train_s = time.perf_counter() - t_fit
    if listener is not None:
        listener.on_evaluate()
    ckpt = best.best_model_path or None
    t_eval = time.perf_counter()
    chosen = _validation_of(module.history, ckpt)  # (the same in every rank: the metrics are summed)
    if chosen is None:
        lightning_call(trainer, trainer.validate, module, val_loader, ckpt_path=ckpt, verbose=False)
    else:  # the validation that chose the checkpoint: the same weights, batches and metrics
        module.results["val"] = chosen
    if evaluate_test:
        lightning_call(trainer, trainer.test, module, test_loader, ckpt_path=ckpt, verbose=False)
    eval_s = time.perf_counter() - t_eval
    return Trained(module, trainer, early, throughput, loaders, steps_per_epoch, trainable, train_s, eval_s)


def _other_rank(shard: Shard, config: RunConfig, data_dir: Path, accelerator: str, ckpt_dir: str,
                evaluate_test: bool) -> None:
    """A rank other than 0 (in its own process): the same data and module, its share of the
    batches; it writes nothing (``bench.distributed.processes`` starts it)."""
    L.seed_everything(config.seed, workers=True, verbose=False)
    task = make_task(config, data_dir)
    train_and_score(config, task, task.setup(), run_device(accelerator, shard.rank), accelerator, shard, ckpt_dir,
                    evaluate_test=evaluate_test)


def make_task(config: RunConfig, data_dir: Path) -> Task:
    """The run's task, with its parameters and seed (its data is read by ``setup``)."""
    task_cls = tasks.get_task(config.task.name)
    return task_cls(task_cls.make_params(**config.task_params), data_dir, config.seed)


def run_device(accelerator: str, index: int = 0) -> torch.device:
    """Where a run's process trains: GPU ``index`` when the accelerator allows one and there is one."""
    use_cuda = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
    return torch.device("cuda", index) if use_cuda else torch.device("cpu")


class _EarlyStopping(EarlyStopping):
    """Lightning's early stopping, watching the validations from step ``min_steps`` on: one
    before it neither stops training nor counts towards the patience or the best score."""

    def __init__(self, min_steps: int, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.min_steps = min_steps

    def _should_skip_check(self, trainer: L.Trainer) -> bool:
        return super()._should_skip_check(trainer) or trainer.global_step < self.min_steps


class _StopTogether(L.Callback):
    """Training ends in every rank when one decides it (tuning's pruner, which only rank 0
    has): the ranks step together, and one that went on alone would wait for the others."""

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.state.fn == "fit":
            trainer.should_stop = trainer.strategy.reduce_boolean_decision(trainer.should_stop, all=False)


class StoppingCallback(L.Callback):
    """A callback that may end training early (tuning's pruner) says why here; that becomes the
    run's stop reason."""

    stop_reason: str = ""


def stop_reason(trainer: L.Trainer, early: EarlyStopping, extra: tuple[L.Callback, ...], budget: dict[str, Any],
                train_s: float, trainable: bool) -> str:
    """Why training ended: a stopping callback's reason, or the first budget limit reached."""
    stopped_by = [cb.stop_reason for cb in extra if isinstance(cb, StoppingCallback) and cb.stop_reason]
    if stopped_by:
        return stopped_by[0]
    if not trainable:
        return "nothing to train"
    if early.stopped_epoch > 0 or early.wait_count >= early.patience:
        return "early stopping"
    if trainer.global_step >= budget["max_steps"]:
        return "max_steps"
    if train_s >= budget["max_time_s"]:
        return "max_time"
    return "max_epochs"


def lightning_call(trainer: L.Trainer, call: Any, *args: Any, **kwargs: Any) -> Any:
    """``trainer.fit``, ``validate`` or ``test``, where a stop request waits for the next batch
    boundary (``_StopCheck``). Lightning turns a KeyboardInterrupt that does land inside into
    ``sys.exit(1)`` and ignores Ctrl+C from then on: that becomes a KeyboardInterrupt again, and
    Ctrl+C is handled as before; any other exit inside Lightning is a failure of the run."""
    previous = signal.getsignal(signal.SIGINT)
    try:
        with requests.polled():
            return call(*args, **kwargs)
    except SystemExit as e:
        if trainer.interrupted:
            raise KeyboardInterrupt from None
        raise RuntimeError(f"Lightning exited (code {e.code}) during {call.__name__}") from None
    finally:
        requests.restore(previous)


class _StopCheck(L.Callback):
    """Raise a pending stop request at batch boundaries, inside Lightning's loops."""

    def on_train_batch_end(self, *args: Any) -> None:
        requests.check()

    def on_validation_batch_end(self, *args: Any) -> None:
        requests.check()

    def on_test_batch_end(self, *args: Any) -> None:
        requests.check()


class _LiveCurve(L.Callback):
    """Write each validation of training (its metrics, the training loss and learning rate
    since the last one) to the run as it happens, so that a long run's curve can be watched
    in the UI and a run that fails or is stopped keeps it."""

    def __init__(self, tracker: Tracker, run_id: str) -> None:
        self.tracker, self.run_id = tracker, run_id

    def on_validation_end(self, trainer: L.Trainer, module: Any) -> None:
        if trainer.state.fn == "fit" and module.history:
            self.tracker.log_history(self.run_id, module.history[-1:])


def middle_batch(loader: DataLoader) -> dict[str, torch.Tensor]:
    """The loader's middle batch: a typical one where evaluation batches go by length."""
    batches = list(loader.batch_sampler)
    middle = batches[(len(batches) - 1) // 2]
    return next(iter(DataLoader(loader.dataset, batch_sampler=[middle], collate_fn=loader.collate_fn)))


def _validation_of(history: list[tuple[int, dict[str, float]]], ckpt: str | None) -> dict[str, float] | None:
    """The metrics of the validation after which checkpoint ``ckpt`` was saved (its file
    name holds the step), or None: then the checkpoint is validated again."""
    found = re.search(r"step=(\d+)", Path(ckpt).name) if ckpt else None
    for step, values in history:
        if found and step == int(found.group(1)):
            return {k[len(CURVE):]: v for k, v in values.items() if k.startswith(CURVE)}
    return None


def _best_step(history: list[tuple[int, dict[str, float]]], key: str, mode: str) -> float:
    scored = [(values[key], step) for step, values in history if key in values and math.isfinite(values[key])]
    if not scored:
        return float("nan")
    return float((max if mode == "max" else min)(scored)[1])
