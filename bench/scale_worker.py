"""What the worker process of ``bench scale`` runs: one point measured at a time.

A point is (model, length L, batch size B): the model's default backbone with a
class-per-sequence head, fed random token ids of fixed length L (vocabulary 64). It runs
in two phases. Memory: build the model and AdamW, two training steps and one inference
pass, with the peak memory measured (``PeakMemory``). Speed: ``warmup_steps`` untimed
steps, then ``steps`` timed steps of forward + backward + AdamW, then as many untimed and
timed forward passes in eval mode under ``torch.no_grad``. The device is synchronised at
the two ends of each timed stretch only.

The worker imports torch once and measures the points it is sent one after another; a
failure of any kind becomes that point's result. Torch is imported inside the functions,
so the parent (and ``bench report``) can import the data types without it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.memory import MB, PeakMemory, libc, proc_bytes, release_free_memory

VOCAB = 64  # token ids 1..63 (0 is padding)
N_CLASSES = 2
LR = 1e-3
METRICS = ("train_samples_per_s", "train_tokens_per_s", "infer_samples_per_s", "peak_memory_mb")
KILL_GRACE_S = 2.0  # past the point timeout, room for the worker to stop between two steps before it is killed
OOM_TEXT = re.compile(r"can't allocate memory|cannot allocate memory|out of memory|failed to allocate", re.I)


@dataclass(frozen=True)
class Point:
    model: str
    length: int
    batch_size: int


@dataclass
class PointResult:
    point: Point
    status: str  # ok | oom | timeout | failed | skipped
    reason: str = ""  # one line, for every status but ok
    train_samples_per_s: float | None = None
    train_tokens_per_s: float | None = None
    infer_samples_per_s: float | None = None
    peak_memory_mb: float | None = None  # see PeakMemory

    def metrics(self) -> dict[str, float]:
        return {f"scale/{k}": v for k in METRICS if (v := getattr(self, k)) is not None}

    @classmethod
    def from_run(cls, params: dict[str, str], tags: dict[str, str], metrics: dict[str, float]) -> PointResult:
        point = Point(params["model"], int(params["length"]), int(params["batch_size"]))
        values = {k: metrics.get(f"scale/{k}") for k in METRICS}
        return cls(point, tags.get("status", "failed"), tags.get("failure_reason", ""), **values)


@dataclass(frozen=True)
class Settings:
    steps: int = 5
    warmup_steps: int = 2
    point_timeout_s: float = 60.0
    memory_limit_mb: float | None = None
    accelerator: str = "auto"
    kill_grace_s: float = KILL_GRACE_S


class PointTimeout(Exception):
    pass


def _allocator(lean: bool) -> None:
    """glibc's thresholds. Lean: blocks from 64 KiB up are mmapped and go back to the OS
    when freed, so the resident set tracks what tensors hold. Otherwise the values glibc's
    own adaptive thresholds climb to (mmap 32 MiB, trim 64 MiB): freed blocks are kept for
    reuse, as in any PyTorch program on a CPU. Lean costs up to 2x in speed, hence the
    two phases of a point."""
    try:
        c = libc()
        c.mallopt(-3, 64 * 1024 if lean else 32 * MB)  # M_MMAP_THRESHOLD
        c.mallopt(-1, 128 * 1024 if lean else 64 * MB)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: memory is measured less sharply
        pass


def _limit_memory(limit_mb: float | None) -> Callable[[], None]:
    """On CPU: cap the worker's data segment at its present size plus the limit (by default
    90% of the memory available now), so that an allocation past it fails with a real
    allocation error rather than waking the kernel's OOM killer; returns what lifts the cap."""
    import resource

    now, available = proc_bytes("VmData"), proc_bytes("MemAvailable", "/proc/meminfo")
    if now is None or (limit_mb is None and available is None):
        return lambda: None
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = now + (int(limit_mb * MB) if limit_mb is not None else int(0.9 * available))
    resource.setrlimit(resource.RLIMIT_DATA, (cap if hard == resource.RLIM_INFINITY else min(cap, hard), hard))
    return lambda: resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def _measure(point: Point, s: Settings, device: Any, deadline: float, meter: PeakMemory) -> tuple[float, float]:
    """(training seconds, inference seconds) over ``s.steps`` timed steps each."""
    import torch
    import torch.nn.functional as F

    import models
    from bench.module import Head
    from tasks.registry import OutputSpec

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def in_time() -> None:  # called between steps: the cooperative end of a point out of time
        if time.monotonic() > deadline:
            raise PointTimeout

    _allocator(lean=True)
    meter.start()
    torch.manual_seed(0)
    spec = models.get_model(point.model)
    B, L = point.batch_size, point.length
    backbone = spec.instantiate(models.InputSpec(vocab_size=VOCAB, seq_len=L), spec.make_hparams(), False,
                                models.OutputShape("class_per_sequence", N_CLASSES, ()))
    head = Head(OutputSpec("class_per_sequence", n_classes=N_CLASSES), backbone.step_dim, backbone.summary_dim)
    net = torch.nn.ModuleDict({"backbone": backbone, "head": head}).to(device)
    x = torch.randint(1, VOCAB, (B, L), device=device)  # (B, L)
    mask = torch.ones(B, L, dtype=torch.bool, device=device)  # (B, L): every step real
    y = torch.randint(0, N_CLASSES, (B,), device=device)  # (B,)
    opt = torch.optim.AdamW(net.parameters(), lr=LR)

    def forward() -> torch.Tensor:
        return head(*backbone(x, mask))  # (B, C)

    def train_step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(forward(), y).backward()
        opt.step()

    def timed(step: Callable[[], Any]) -> float:
        t0 = 0.0
        for i in range(s.warmup_steps + s.steps):
            in_time()
            if i == s.warmup_steps:
                sync()
                t0 = time.perf_counter()
            step()
        sync()
        return time.perf_counter() - t0

    for _ in range(2):  # the memory phase: the second step is the first with AdamW's state in place
        in_time()
        train_step()
    net.eval()
    with torch.no_grad():
        in_time()
        forward()
    sync()
    meter.stop()
    _allocator(lean=False)  # the timed phase
    net.train()
    train_s = timed(train_step)
    net.eval()
    with torch.no_grad():
        return train_s, timed(forward)


def one_line(e: BaseException) -> str:
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    text = re.sub(r"^\[enforce fail at [^\]]*\] (err == 0\. )?", "", text)  # torch's C++ location
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def measure_point(point: Point, s: Settings, device: Any) -> PointResult:
    deadline = time.monotonic() + s.point_timeout_s
    meter = PeakMemory(device)
    lift = _limit_memory(s.memory_limit_mb) if device.type == "cpu" else (lambda: None)
    try:
        train_s, infer_s = _measure(point, s, device, deadline, meter)
    except PointTimeout:
        return PointResult(point, "timeout", f"stopped between steps: past the {s.point_timeout_s:g} s point timeout")
    except Exception as e:  # noqa: BLE001 - any failure is this point's result, never the sweep's end
        oom = isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or bool(OOM_TEXT.search(str(e)))
        return PointResult(point, "oom" if oom else "failed", one_line(e))
    finally:
        lift()
        meter.stop()  # (a no-op if it stopped already)
        release_free_memory(device)
    n = point.batch_size * s.steps
    return PointResult(point, "ok", "", n / train_s, n * point.length / train_s, n / infer_s, meter.peak_mb)


def worker_main(conn: Any, s: Settings) -> None:
    """The worker: reports ("ready", device), then for each point it is sent ("started", None)
    and ("result", PointResult); None ends it."""
    _allocator(lean=True)  # before torch is imported: its own blocks are mmapped too
    try:
        import platform
        import warnings

        warnings.filterwarnings("ignore")
        import torch

        import bench.module  # noqa: F401 - imported once here, not inside the first point's time
        if s.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
            conn.send(("error", f"--accelerator {s.accelerator}: no GPU is visible to torch"))
            return
        device = torch.device("cuda" if s.accelerator != "cpu" and torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and s.memory_limit_mb:
            total = torch.cuda.get_device_properties(device).total_memory
            torch.cuda.set_per_process_memory_fraction(min(1.0, s.memory_limit_mb * MB / total), device)
        name = (f"cuda: {torch.cuda.get_device_name(device)}" if device.type == "cuda"
                else f"cpu: {platform.machine()}, {torch.get_num_threads()} threads")
        conn.send(("ready", name))
        primed: set[str] = set()
        while (msg := conn.recv()) is not None:
            point = Point(**msg)
            if point.model not in primed:  # one-time set-up (imports, kernels) is not the first point's cost
                primed.add(point.model)
                measure_point(Point(point.model, 4, 1), Settings(steps=1, warmup_steps=0), device)
            conn.send(("started", None))
            conn.send(("result", measure_point(point, s, device)))
    except (KeyboardInterrupt, EOFError, BrokenPipeError):
        pass
