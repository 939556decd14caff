"""Sizes checked before anything runs, so that a request this machine cannot hold is one line
and exit 2, before any data is generated or anything is written, rather than "can't allocate
memory" minutes later. ``--allow-large`` lets a request past these limits.

- Runs: model × task pairs × seeds, counted from the parsed seed ranges (a range is never
  expanded to count it).
- One run's memory: the data a generated task holds (the task declares it from its
  parameters: ``Task.data_shape``), the parameters with their gradients and AdamW's two
  moments (the model is built on torch's meta device: shapes only, no memory), and what one
  training batch keeps for the backward pass (batch × length × width × layers, with a
  rough factor per layer).

The estimates are rough on purpose: they are there to refuse the absurd at no cost. Not
counted: attention's (T × T) scores, evaluation batches (no gradients: nothing is kept),
and the inputs of a real-data task that are known only once it is read (text lengths).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError

log = logging.getLogger(__name__)

# More runs than this take days even in the quick profile (~10-60 s a run on a 2-core CPU):
# more likely a typo (--seeds 0-99999) than a plan. --allow-large plans them.
MAX_RUNS = 10_000
# Even with --allow-large: every run's resolved configuration is held in memory (~1.4 kB each,
# measured over 10,000: some 1.4 GB at this limit).
MAX_RUNS_AT_ALL = 1_000_000
# DataLoader worker processes beyond this only compete for the CPUs.
MAX_LOADER_WORKERS_PER_CPU = 4

DEPTH_KEYS = ("num_layers", "n_layers")  # hyper-parameters that repeat a layer
STATE_BYTES_PER_PARAMETER = 16  # float32 weights, gradients and AdamW's two moments
FLOAT_BYTES = 4
# Floats kept for the backward pass per step, per layer and unit of width: an LSTM keeps its
# four gates, cell and hidden state (6); a transformer block its norms, q/k/v, projections
# and feed-forward (~16 × d_model). 8 is in between: the estimate is for refusing the absurd.
ACTIVATION_FLOATS_PER_LAYER = 8


def check_run_count(pairs: int, seeds: int, seeds_spec: str, allow_large: bool) -> None:
    """Refuse a sweep of more than MAX_RUNS runs (MAX_RUNS_AT_ALL with --allow-large)."""
    runs = pairs * seeds
    what = (f"The sweep has {runs:,} runs ({pairs:,} model × task pair{'s' * (pairs != 1)} × {seeds:,} "
            f"seed{'s' * (seeds != 1)}, --seeds '{seeds_spec}')")
    if runs > MAX_RUNS_AT_ALL:
        raise BenchError(f"{what}: more than the {MAX_RUNS_AT_ALL:,} one sweep can plan, even with --allow-large "
                         "(every run's configuration is held in memory); ask for fewer seeds, models or tasks")
    if runs > MAX_RUNS and not allow_large:
        raise BenchError(f"{what}: more than {MAX_RUNS:,}; ask for fewer, or pass --allow-large to plan them all")


@dataclass(frozen=True)
class RunSize:
    """One run's memory, estimated before it starts."""

    data_bytes: int  # the generated splits
    parameters: int | None  # None where the model could not be built on the meta device
    activation_bytes: int  # kept for the backward pass of one training batch, its output included
    batch: int
    length: int
    width: int
    layers: int
    outputs: int  # a sample's output values (a forecast's steps × channels, a class score per step)

    @property
    def total_bytes(self) -> int:
        return self.data_bytes + STATE_BYTES_PER_PARAMETER * (self.parameters or 0) + self.activation_bytes

    def describe(self) -> str:
        parts = []
        if self.data_bytes:
            parts.append(f"generated data {human_bytes(self.data_bytes)}")
        if self.parameters is not None:
            parts.append(f"{self.parameters:,} parameters with their gradients and optimizer state "
                         f"{human_bytes(STATE_BYTES_PER_PARAMETER * self.parameters)}")
        if self.activation_bytes:
            shape = f"batch {self.batch:,} × length {self.length:,}"
            if self.width:
                shape += f" × width {self.width:,} × {self.layers:,} layer{'s' * (self.layers != 1)}"
            shape += f", {self.outputs:,} output values a sample"
            parts.append(f"one training batch {human_bytes(self.activation_bytes)} ({shape})")
        return "; ".join(parts)


def human_bytes(n: int) -> str:
    if n >= 10**21:  # past exabytes; also past what a float holds, for the absurd
        return f"10^{len(str(n)) - 1} bytes"
    x = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if x < 1000:
            return f"{x:.3g} {unit}"
        x /= 1000
    return f"{x:.3g} EB"


def available_bytes() -> int:
    """Memory the system can give a run now. Host memory only: on a GPU the model and its
    activations live in device memory, which this does not check."""
    import psutil

    return int(psutil.virtual_memory().available)


def check_run(spec: Any, hp: Any, task_cls: Any, params: Any, train: Any, who: str) -> None:
    """Refuse one (model, task) pair that this machine cannot hold; ``who`` names it and the
    settings the user gave. ``train`` is the resolved TrainConfig."""
    cpus = os.cpu_count() or 1
    if train.loader_workers > MAX_LOADER_WORKERS_PER_CPU * cpus:
        raise BenchError(f"{who}: train.loader_workers={train.loader_workers} starts that many processes on a "
                         f"machine with {cpus} CPUs (at most {MAX_LOADER_WORKERS_PER_CPU * cpus} make sense); "
                         "make it smaller, or pass --allow-large to try anyway")
    shape = task_cls.data_shape(params)
    if shape is None:  # a task that declares nothing is sized by its own run
        return
    limit = available_bytes()
    task = task_cls(params)
    # What needs no model: the data, and one batch's input and output (a lower bound). A request
    # absurd already here is refused without building anything.
    size = estimate(shape, task.output, train.batch_size, parameters=None, width=0, layers=0)
    if size.total_bytes <= limit:
        parameters, width, layers = count_parameters(spec, hp, task, shape, who)
        size = estimate(shape, task.output, train.batch_size, parameters, width, layers)
    if size.total_bytes > limit:
        raise BenchError(f"{who} would need about {human_bytes(size.total_bytes)} of memory ({size.describe()}), "
                         f"more than the {human_bytes(limit)} available; make it smaller, or pass --allow-large "
                         "to try anyway")


def estimate(shape: Any, output: Any, batch_size: int, parameters: int | None, width: int, layers: int) -> RunSize:
    B = min(batch_size, shape.n_train or batch_size)  # a loader never gives more than the split holds
    T = shape.max_len or 0  # 0: not known before the data is read; no activations are counted
    if output.kind == "class_per_step":
        out = T * output.n_classes
    elif output.kind == "class_per_sequence":
        out = output.n_classes
    else:
        out = math.prod(output.shape)
    # the input and output of the batch, then what each layer keeps per step
    floats = B * (T * max(shape.n_features or 1, 1) + out + T * width * (ACTIVATION_FLOATS_PER_LAYER * layers + 1))
    return RunSize(shape.generated_bytes, parameters, FLOAT_BYTES * floats, B, T, width, layers, out)


def count_parameters(spec: Any, hp: Any, task: Any, shape: Any, who: str) -> tuple[int | None, int, int]:
    """(parameters, width of the per-step vectors, layers) of the model and its head, built on
    torch's meta device. A deep model is built with one and two layers and its count
    extrapolated (exact where every layer after the first is alike, as in every family here):
    building 10,000 layers, even on meta, takes half a minute."""
    values = dataclasses.asdict(hp)
    depth_key = next((k for k in DEPTH_KEYS if isinstance(values.get(k), int)), None)
    layers = values[depth_key] if depth_key else 1
    if layers <= 2:
        one = build_and_count(spec, hp, task, shape, who)
        return one[0], one[1], layers
    first = build_and_count(spec, dataclasses.replace(hp, **{depth_key: 1}), task, shape, who)
    second = build_and_count(spec, dataclasses.replace(hp, **{depth_key: 2}), task, shape, who)
    if first[0] is None or second[0] is None:
        return None, first[1], layers
    return first[0] + (layers - 1) * (second[0] - first[0]), first[1], layers


def build_and_count(spec: Any, hp: Any, task: Any, shape: Any, who: str) -> tuple[int | None, int]:
    import torch

    import models

    out = task.output
    inp = models.InputSpec(vocab_size=shape.vocab_size, n_features=shape.n_features, season=shape.season,
                           seq_len=shape.seq_len, frame=shape.frame)
    try:
        with torch.device("meta"):
            module = spec.instantiate(inp, hp, task.causal, models.OutputShape(out.kind, out.n_classes, out.shape))
    except models.Incompatible:
        return None, 0  # the pair is refused when it runs, with the reason
    except Exception as e:  # noqa: BLE001 - an estimate only; the run reports its own failure
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]  # torch appends a C++ trace
        if "overflow" in reason.lower():  # sizes past int64: torch cannot even describe the tensors
            raise BenchError(f"{who}: the model is too large to build ({reason}); make it smaller") from None
        # A builder that reads values (seasonal-naive's offsets) cannot run on meta tensors: its
        # size is left to the run, like any other failure to build.
        log.debug("%s: not sized on the meta device: %s", who, reason)
        return None, 0
    n = sum(p.numel() for p in module.parameters())
    if spec.predictor:  # gives the task's output itself: no head, nothing per step
        return n, 0
    if isinstance(module, models.registry.HeadMaker):  # a head of its own for some outputs (bench.module)
        with torch.device("meta"):
            own = module.make_head(models.OutputShape(out.kind, out.n_classes, out.shape))
        if own is not None:
            return n + sum(p.numel() for p in own.parameters()), module.step_dim
    # bench.module.Head: one linear map from the step or the summary vector to the output
    dim = module.step_dim if out.kind == "class_per_step" else module.summary_dim
    n_out = out.n_classes if out.kind.startswith("class") else math.prod(out.shape)
    return n + (dim + 1) * n_out, module.step_dim
