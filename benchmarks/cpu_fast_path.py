"""Training-step speed of medres's ResNet-18 on this CPU: fp32 vs channels-last vs bf16.

Decides the CPU fast path of ``medres.train`` (channels-last always; bf16 autocast only
where the CPU has native bf16); ``--every-tap`` also measures what 3D models gain from
convolving without the kernel taps that read only zero padding (mode "channels_last,
every tap" puts plain ``nn.Conv3d`` back in place of ``models.PaddingAwareConv3d``).
Ratios are against the first of ``--modes`` measured in the same run, interleaved, best
of ``--repeats``. Writes ``benchmarks/results/cpu_fast_path.md`` or ``--out``.

Usage::

    python benchmarks/cpu_fast_path.py
    python benchmarks/cpu_fast_path.py --modes channels_last --every-tap
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import torch

from medres.models import PaddingAwareConv3d, create_model

CASES = [  # (label, spatial size, batch, stem stride); 64 is medres train's default batch
    ("2D 28 px", (28, 28), 64, 2),
    ("3D 28³", (28, 28, 28), 16, 4),
    ("3D 28³", (28, 28, 28), 64, 4),
]
EVERY_TAP = "channels_last, every tap"  # plain nn.Conv3d: the padding-aware convs' baseline
MODES = {  # (channels_last, bf16, every tap)
    "fp32": (False, False, False),
    "channels_last": (True, False, False),
    "channels_last+bf16": (True, True, False),
    EVERY_TAP: (True, False, True),
}
FAST_PATH_MODES = [mode for mode, flags in MODES.items() if not flags[2]]


def step_time(size, batch, stride, channels_last, bf16, every_tap, steps) -> float:
    """Seconds per training step (forward, backward, AdamW update)."""
    torch.manual_seed(0)
    dims = len(size)
    model = create_model(
        "resnet18", in_channels=1, num_classes=2, spatial_dims=dims, stem_stride=stride
    )
    for conv in model.modules():
        if every_tap and isinstance(conv, PaddingAwareConv3d):
            conv.__class__ = torch.nn.Conv3d  # back to the plain convolution, same weights
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
        "--modes",
        nargs="+",
        choices=FAST_PATH_MODES,  # every tap: --every-tap, 3D cases only
        default=FAST_PATH_MODES,
        help="the first is the baseline of the ratios; default: the three fast-path modes",
    )
    parser.add_argument("--every-tap", action="store_true", help=f'also "{EVERY_TAP}" (3D cases)')
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
        f"Command: `python {shlex.join(['benchmarks/cpu_fast_path.py', *sys.argv[1:]])}`; best of "
        f"{args.repeats} interleaved repeats of {args.steps} steps.",
        "",
        f"| case | batch | mode | s/step | speed vs {args.modes[0]} |",
        "|---|---|---|---|---|",
    ]
    for label, size, batch, stride in CASES:
        extra = [EVERY_TAP] if args.every_tap and len(size) == 3 else []
        modes = {m: MODES[m] for m in [*args.modes, *extra]}
        best = {m: float("inf") for m in modes}
        for _ in range(args.repeats):
            for mode, flags in modes.items():
                best[mode] = min(best[mode], step_time(size, batch, stride, *flags, args.steps))
        baseline = best[args.modes[0]]
        for mode, seconds in best.items():
            lines.append(
                f"| {label} | {batch} | {mode} | {seconds:.3f} | {baseline / seconds:.2f}× |"
            )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
