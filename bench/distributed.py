"""One run over several processes (``train.devices`` > 1, ``train.strategy=ddp``).

The calling process is rank 0: it keeps everything a run writes (the live learning curve,
the listener, the store) and its module, history and meters, as a single-process run does.
``processes`` starts ranks 1..N-1 as fresh interpreters (spawned, so none inherits the
store's connections or threads); each rebuilds the same data and module from the run's
configuration and takes its shard of the batches. Lightning's own ``ddp`` launcher would
re-execute the whole command in each child, and ``ddp_spawn`` would send back only the
weights; here Lightning sees processes created externally and only sets up the group.

Evaluation stays exact: each rank scores a disjoint part of every split (no padding, unlike
torch's ``DistributedSampler``) and the task's additive statistics are summed over the
ranks (``summed``) before the metrics are computed, so every rank has the whole-split
figures.
"""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing as mp
import os
import signal
import socket
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from lightning.fabric.plugins.environments import ClusterEnvironment
from lightning.pytorch.strategies import DDPStrategy

# A rank that waits longer than this in a collective for the others fails the run (gloo
# fails at once when a rank's process dies; NCCL would wait this long).
TIMEOUT = datetime.timedelta(minutes=10)

# Split metrics are logged once all ranks hold the same summed figures: nothing to sync.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*")


@dataclass(frozen=True)
class Shard:
    """This process's place in a run: rank ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    port: int = 0  # rank 0's rendezvous port on this machine

    def strategy(self) -> Any:
        """What the Trainer is given: "auto" for one process, else DDP over the group."""
        if self.world == 1:
            return "auto"
        return DDPStrategy(cluster_environment=_Environment(self), timeout=TIMEOUT)


class _Environment(ClusterEnvironment):
    """Processes on this machine, started by ``processes`` rather than by Lightning."""

    def __init__(self, shard: Shard) -> None:
        super().__init__()
        self.shard = shard

    @property
    def creates_processes_externally(self) -> bool:
        return True

    @property
    def main_address(self) -> str:
        return "127.0.0.1"

    @property
    def main_port(self) -> int:
        return self.shard.port

    @staticmethod
    def detect() -> bool:
        return True

    def world_size(self) -> int:
        return self.shard.world

    def set_world_size(self, size: int) -> None:
        pass  # fixed by the shard

    def global_rank(self) -> int:
        return self.shard.rank

    def set_global_rank(self, rank: int) -> None:
        pass  # fixed by the shard

    def local_rank(self) -> int:
        return self.shard.rank

    def node_rank(self) -> int:
        return 0


def check_devices(devices: int, device: torch.device) -> None:
    """Refuse more processes than this machine has GPUs (on a GPU) or CPU cores (on a CPU)."""
    have = torch.cuda.device_count() if device.type == "cuda" else os.cpu_count() or 1
    if devices > have:
        what = "GPUs" if device.type == "cuda" else "CPU cores"
        raise ValueError(f"train.devices={devices} is more than this machine's {have} {what}")


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def summed(value: torch.Tensor) -> torch.Tensor:
    """``value`` summed over the ranks (itself in a single process). Every rank must call it,
    in the same order."""
    if world_size() == 1:
        return value
    total = value.clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _threads_per_rank(world: int) -> int | None:
    """Each rank's share of the CPU cores (as Lightning's own launchers give), unless
    OMP_NUM_THREADS says otherwise; None for one process."""
    if world == 1 or "OMP_NUM_THREADS" in os.environ:
        return None
    return max(1, (os.cpu_count() or 1) // world)


def _rank_main(target: Callable[..., None], shard: Shard, args: tuple[Any, ...], errors: Any) -> None:
    """A rank other than 0: run ``target(shard, *args)``; a failure goes to rank 0 as one line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 handles Ctrl+C, and ends this process
    threads = _threads_per_rank(shard.world)
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        target(shard, *args)
    except BaseException as e:  # noqa: BLE001 - reported to rank 0, which records the run's failure
        text = str(e).strip().splitlines()[0] if str(e).strip() else ""
        errors.put((shard.rank, f"{type(e).__name__}: {text}"[:500]))
        raise SystemExit(1) from None
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


class RankFailedError(RuntimeError):
    pass


@contextlib.contextmanager
def processes(world: int, target: Callable[..., None], *args: Any) -> Iterator[Shard]:
    """Rank 0's shard, while ranks 1..``world``-1 run ``target(shard, *args)`` in spawned
    processes (``target`` and ``args`` must pickle). On leaving, the other ranks are waited
    for (or ended, if rank 0 failed) and the process group is taken down, so that the next
    run can form its own. A failure in another rank is raised here, naming the rank."""
    if world == 1:
        yield Shard()
        return
    port = _free_port()
    context = mp.get_context("spawn")
    errors = context.SimpleQueue()
    ranks = [context.Process(target=_rank_main, args=(target, Shard(r, world, port), args, errors),
                             name=f"seqbench-rank-{r}") for r in range(1, world)]
    saved = {k: os.environ.get(k) for k in ("MASTER_ADDR", "MASTER_PORT")}
    threads, ours = torch.get_num_threads(), _threads_per_rank(world)
    try:
        for p in ranks:
            p.start()
        if ours is not None:
            torch.set_num_threads(ours)
        try:
            yield Shard(0, world, port)
            for p in ranks:
                p.join(TIMEOUT.total_seconds())
        except Exception as e:
            failed = _failure(errors)
            if failed:
                raise RankFailedError(failed) from e
            raise
        failed = _failure(errors) or next((f"rank {i + 1} exited with code {p.exitcode}"
                                           for i, p in enumerate(ranks) if p.exitcode != 0), "")
        if failed:
            raise RankFailedError(failed)
    finally:
        for p in ranks:
            if p.is_alive():
                p.terminate()
            p.join(10)
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        torch.set_num_threads(threads)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _failure(errors: Any) -> str:
    """The first failure another rank reported, as 'rank N: reason' ('' if none). A rank
    writes it before it exits, so before rank 0 can see the group broken."""
    if errors.empty():
        return ""
    rank, reason = errors.get()
    return f"rank {rank}: {reason}"
