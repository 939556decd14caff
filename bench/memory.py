"""Peak memory of a stretch of code: a run (``bench run``) or a point (``bench scale``).

- GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``: the most
  memory tensors held on the device at once (parameters, gradients, optimizer state,
  activations, batches), without the caching allocator's spare or the CUDA context.
- CPU, and the host side of a GPU run: the process's peak resident set over the stretch
  minus its resident set at the start. On Linux the kernel keeps the peak itself (VmHWM,
  reset by writing 5 to /proc/self/clear_refs): nothing samples, nothing competes with the
  training thread. Elsewhere a thread samples the resident set every 5 ms (a short peak may
  be missed). glibc's free lists are handed back to the system first, so what earlier code
  freed does not hide this stretch's growth.

Torch is imported inside the functions: ``bench scale``'s parent process reads none of it.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

MB = 1024**2


def libc() -> Any:
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def proc_bytes(key: str, path: str = "/proc/self/status") -> int | None:
    """A size from /proc (VmRSS, VmHWM, VmData; MemAvailable in /proc/meminfo), None off Linux."""
    try:
        match = re.search(rf"^{key}:\s+(\d+) kB", Path(path).read_text(), re.M)
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def release_free_memory(device: Any) -> None:
    """Free what earlier code left: Python garbage, the CUDA cache, glibc's free lists."""
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    try:
        libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is only less sharp
        pass


def _rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


class PeakMemory:
    """``start()``/``stop()``, or a ``with`` block; then ``peak_mb`` (device memory on a GPU,
    resident memory added on a CPU) and ``metrics()``."""

    def __init__(self, device: Any) -> None:
        self.device = device
        self.start_rss = self.peak_rss = 0
        self.peak_mb = 0.0
        self._sampler: threading.Thread | None = None
        self._halt = threading.Event()
        self._running = False

    def start(self) -> None:
        import torch

        release_free_memory(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        self.start_rss = self.peak_rss = _rss()
        self._running = True
        try:
            Path("/proc/self/clear_refs").write_text("5")  # the kernel's peak starts again from now
        except OSError:
            self._halt.clear()
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()

    def _sample(self) -> None:
        while not self._halt.wait(0.005):
            self.peak_rss = max(self.peak_rss, _rss())

    def stop(self) -> None:
        """Ends the stretch; a second call changes nothing."""
        import torch

        if not self._running:
            return
        self._running = False
        if self._sampler is not None:
            self._halt.set()
            self._sampler.join()
            self._sampler = None
            self.peak_rss = max(self.peak_rss, _rss())
        else:
            self.peak_rss = max(proc_bytes("VmHWM") or 0, self.start_rss)
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / MB
        else:
            self.peak_mb = (self.peak_rss - self.start_rss) / MB

    def __enter__(self) -> PeakMemory:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def metrics(self) -> dict[str, float]:
        return {
            "perf/peak_rss_mb": self.peak_rss / MB,
            "perf/run_rss_added_mb": (self.peak_rss - self.start_rss) / MB,
            "perf/peak_memory_mb": self.peak_mb,
        }
