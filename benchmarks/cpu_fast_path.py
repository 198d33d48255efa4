"""Training-step speed of medres's ResNet-18 on this CPU: fp32 vs channels-last vs bf16.

Decides the CPU fast path of ``medres.train`` (channels-last always; bf16 autocast only
where the CPU has native bf16). Ratios are against fp32 / default layout measured in the
same run, interleaved, best of ``--repeats``. Writes ``benchmarks/results/cpu_fast_path.md``.

Usage::

    python benchmarks/cpu_fast_path.py
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

from medres.models import create_model

CASES = [  # (label, spatial size, batch, stem stride); 64 is medres train's default batch
    ("2D 28 px", (28, 28), 64, 2),
    ("3D 28³", (28, 28, 28), 16, 4),
    ("3D 28³", (28, 28, 28), 64, 4),
]
MODES = {"fp32": (False, False), "channels_last": (True, False), "channels_last+bf16": (True, True)}


def step_time(size, batch, stride, channels_last, bf16, steps) -> float:
    """Seconds per training step (forward, backward, AdamW update)."""
    torch.manual_seed(0)
    dims = len(size)
    model = create_model(
        "resnet18", in_channels=1, num_classes=2, spatial_dims=dims, stem_stride=stride
    )
    x, y = torch.randn(batch, 1, *size), torch.randint(0, 2, (batch,))
    if channels_last:
        layout = torch.channels_last if dims == 2 else torch.channels_last_3d
        model, x = model.to(memory_format=layout), x.to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters())
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).parent / "results" / "cpu_fast_path.md"
    )
    args = parser.parse_args()
    native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    lines = [
        "# CPU fast path: ResNet-18 training step",
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}, native bf16: {native}.",
        f"Command: `{' '.join(['python benchmarks/cpu_fast_path.py', *sys.argv[1:]])}`; best of "
        f"{args.repeats} interleaved repeats of {args.steps} steps.",
        "",
        "| case | batch | mode | s/step | speed vs fp32 |",
        "|---|---|---|---|---|",
    ]
    for label, size, batch, stride in CASES:
        best = {m: float("inf") for m in MODES}
        for _ in range(args.repeats):
            for mode, (cl, bf16) in MODES.items():
                best[mode] = min(best[mode], step_time(size, batch, stride, cl, bf16, args.steps))
        for mode, seconds in best.items():
            lines.append(
                f"| {label} | {batch} | {mode} | {seconds:.3f} | {best['fp32'] / seconds:.2f}× |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
