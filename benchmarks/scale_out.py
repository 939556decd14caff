"""What spreading a sweep costs besides training: Ray's start-up and dispatch, and the store.

    python benchmarks/scale_out.py                                   # local Ray, SQLite store
    python benchmarks/scale_out.py --tracking-uri http://127.0.0.1:5000   # and an MLflow server

Prints, each measured here in this process:

- ``ray.init`` of a local instance, and a worker's warm-up: its first task imports what a run
  needs (torch, Lightning, MLflow: ``bench.runner``), which a warm worker never pays again;
- Ray's dispatch per run: the round trip of an empty task on a warm worker, one at a time,
  and the rate of many submitted at once;
- the store's cost per run: what a run writes besides its learning curve (start with its
  params and tags, its metrics in one batch, its closing tags, its end), timed over
  ``--runs`` runs, and the rate of single tag writes (each heartbeat is one).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def warm_up() -> int:
    import bench.runner  # noqa: F401 - torch, Lightning and MLflow, as a run's worker imports them

    return os.getpid()


def nothing() -> int:
    return 0


def measure_ray(n: int) -> None:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    t = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    print(f"ray.init (local, {ray.cluster_resources().get('CPU', 0):g} CPUs): {time.perf_counter() - t:.1f} s")
    slots = int(ray.cluster_resources().get("CPU", 1))
    warm = ray.remote(warm_up).options(num_cpus=1)
    t = time.perf_counter()
    pids = ray.get([warm.remote() for _ in range(slots)])
    print(f"first task on {slots} fresh workers at once (imports bench.runner): {time.perf_counter() - t:.1f} s "
          f"(workers {sorted(set(pids))})")
    t = time.perf_counter()
    ray.get([warm.remote() for _ in range(slots)])
    print(f"the same on the warm workers: {1000 * (time.perf_counter() - t):.0f} ms")
    empty = ray.remote(nothing).options(num_cpus=1)
    rounds = []
    for _ in range(n):
        t = time.perf_counter()
        ray.get(empty.remote())
        rounds.append(time.perf_counter() - t)
    print(f"dispatch, one empty task at a time ({n}): median {1000 * statistics.median(rounds):.1f} ms, "
          f"max {1000 * max(rounds):.1f} ms")
    t = time.perf_counter()
    ray.get([empty.remote() for _ in range(10 * n)])
    print(f"dispatch, {10 * n} empty tasks at once: {10 * n / (time.perf_counter() - t):.0f} tasks/s")
    ray.shutdown()


def measure_store(uri: str, results: Path, n: int) -> None:
    from bench.tracking import Tracker

    tracker = Tracker(uri, results).connect()
    params = {f"group.key{i}": i for i in range(40)}
    tags = {f"tag{i}": "value" for i in range(20)}
    metrics = {f"test/metric{i}": float(i) for i in range(30)}
    tracker.experiment_id("scale-out-probe")
    per_run = []
    ids = []
    for i in range(n):
        t = time.perf_counter()
        run = tracker.start("scale-out-probe", f"probe-{i}", params, {**tags, "kind": "probe"})
        tracker.log_metrics(run, metrics)
        tracker.set_tags(run, {"stop_reason": "max_steps"})
        tracker.end(run, "FINISHED")
        per_run.append(time.perf_counter() - t)
        ids.append(run)
    print(f"{uri.split('://')[0]} store, a run's writes ({n} runs): median {1000 * statistics.median(per_run):.0f} ms,"
          f" max {1000 * max(per_run):.0f} ms")
    t = time.perf_counter()
    for i in range(5 * n):
        tracker.client.set_tag(ids[i % len(ids)], "seqbench.heartbeat", str(i))
    print(f"{uri.split('://')[0]} store, single tag writes: {5 * n / (time.perf_counter() - t):.0f} /s")
    for run in ids:
        tracker.delete(run)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=40, help="runs (and empty tasks) to time (default: 40)")
    p.add_argument("--tracking-uri", help="also time this store (an MLflow server, PostgreSQL)")
    p.add_argument("--no-ray", action="store_true", help="time the stores only")
    args = p.parse_args()
    if not args.no_ray:
        measure_ray(args.runs)
    with tempfile.TemporaryDirectory() as tmp:
        measure_store(f"sqlite:///{tmp}/mlflow.db", Path(tmp), args.runs)
        if args.tracking_uri:
            measure_store(args.tracking_uri, Path(tmp), args.runs)


if __name__ == "__main__":
    main()
