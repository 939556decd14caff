"""Speed of every registered backbone against ``nn.LSTM``'s (the lstm family), and of the
parallel-scan models in their parallel and sequential forms, at several sequence lengths.

    python benchmarks/recurrent_speed.py --lengths 128,512,2048 --batch 16 --width 64

Each measurement is one training step's work on real features: forward, a loss over both
outputs, backward; the median of --repeats timed runs after one untimed warm-up, every model
at the same width (hidden_size, d_model) and one layer where the family has layers. Models
run one after the other in this process, so machine noise hits all of them. Printed as a
Markdown table: milliseconds per step and the ratio to lstm at the same length.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import torch

import models


def width_overrides(spec: Any, width: int) -> dict[str, Any]:
    """The same width and depth for every family, by whichever names its settings have."""
    fields = {f.name for f in dataclasses.fields(spec.hparams)}
    out: dict[str, Any] = {}
    for name in ("hidden_size", "d_model"):
        if name in fields:
            out[name] = width
    for name in ("num_layers", "n_layers"):
        if name in fields:
            out[name] = 1
    return out


def scan_modules(backbone: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules with a parallel and a sequential form (a ``parallel`` switch; None, where a
    module has it, picks the form by device)."""
    return [m for m in backbone.modules() if hasattr(type(m), "parallel")]


def step_ms(backbone: torch.nn.Module, x: torch.Tensor, repeats: int) -> float:
    mask = torch.ones(x.shape[:2], dtype=torch.bool)

    def once() -> None:
        steps, summary = backbone(x, mask)
        (steps.square().mean() + summary.square().mean()).backward()

    once()  # warm-up: first-call allocations
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        once()
        times.append(time.perf_counter() - t0)
    backbone.zero_grad(set_to_none=True)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", default="128,512,2048")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--features", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--models", default="", help="comma-separated; default: every backbone reading features")
    args = parser.parse_args()
    lengths = [int(v) for v in args.lengths.split(",")]
    names = args.models.split(",") if args.models else [
        n for n in models.MODELS
        if not models.get_model(n).predictor and "features" in models.get_model(n).inputs]
    rows: list[tuple[str, list[float]]] = []
    for name in names:
        spec = models.get_model(name)
        torch.manual_seed(0)
        backbone = spec.build(models.InputSpec(n_features=args.features),
                              spec.make_hparams(**width_overrides(spec, args.width)), False).train()
        switches = scan_modules(backbone)
        forms = [(" (parallel)", True), (" (sequential)", False)] if switches else [("", True)]
        for label, parallel in forms:
            for m in switches:
                m.parallel = parallel
            times = [step_ms(backbone, torch.randn(args.batch, T, args.features), args.repeats) for T in lengths]
            rows.append((name + label, times))
            print(f"{name + label}: " + ", ".join(f"{t:.1f} ms" for t in times), flush=True)
    base = dict(rows)["lstm"] if "lstm" in dict(rows) else None
    print(f"\nbatch {args.batch}, width {args.width}, {torch.get_num_threads()} threads; ms per training step"
          + (" (x lstm)" if base else ""))
    print("| model | " + " | ".join(f"T={T}" for T in lengths) + " |")
    print("|---|" + "---|" * len(lengths))
    for name, times in rows:
        cells = [f"{t:.1f}" + (f" ({t / b:.2f}x)" if base else "") for t, b in zip(times, base or times, strict=True)]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
