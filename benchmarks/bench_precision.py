"""Time one training step in fp32 and in bf16 autocast (``--set precision=bf16``) on this machine and print both.

    python benchmarks/bench_precision.py [--model efficientnet_lite0] [--image-size 192] [--steps 10] [--rounds 2]

The step is training's, built as ``train`` builds it from the default ``TrainConfig`` (its model, trainable stages,
optimiser and batch size; no ImageNet weights): channels-last input, one batch of random images (speed does not
depend on the pixels). The two precisions alternate for ``--rounds`` rounds, each
model fresh, and each round's first three steps are not timed. bf16 pays only on a CPU that does it natively
(AVX512-BF16 or AMX: the flags printed first); elsewhere it is emulated and slower.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pneumoscan.data.tasks import get_task
from pneumoscan.models import registry
from pneumoscan.training.engine import autocast
from pneumoscan.training.config import TrainConfig
from pneumoscan.training.distributed import Dist
from pneumoscan.training.train import build_model, recipe

NATIVE_BF16 = ("avx512_bf16", "amx_bf16")


def cpu_flags() -> list[str]:
    """The CPU's native bf16 flags (Linux's /proc/cpuinfo; none elsewhere)."""
    info = Path("/proc/cpuinfo")
    flags = set(info.read_text().split()) if info.exists() else set()
    return [f for f in NATIVE_BF16 if f in flags]


def step_ms(model_name: str, size: int, precision: str, steps: int) -> float:
    """Mean milliseconds of one training step after three untimed ones."""
    cfg = TrainConfig(model=model_name, image_size=size, pretrained=False, precision=precision)
    model = build_model(cfg, get_task(cfg.task), Dist())[0].to(memory_format=torch.channels_last).train()
    # what train trains from ImageNet weights (the default, which these fresh ones stand in for): the last stages,
    # or the whole model where it has no stages (simple_cnn, mlp)
    registry.set_trainable(model, cfg.trainable_stages if hasattr(model, "group_matcher") else None)
    optimizer = recipe(cfg, [p for p in model.parameters() if p.requires_grad], cfg.lr, steps, None)[0]
    x = torch.randn(cfg.batch_size, 1, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (cfg.batch_size,))
    amp = autocast(torch.device("cpu"), cfg.precision)

    def step() -> None:
        with amp:
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    print(f"{args.model} at {args.image_size} px, batch {TrainConfig.batch_size}, {torch.get_num_threads()} threads; "
          f"native bf16 flags: {', '.join(cpu_flags()) or 'none'}")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(args.rounds):
        for precision, runs in times.items():
            runs.append(step_ms(args.model, args.image_size, precision, args.steps))
            print(f"  {precision}: {runs[-1]:.0f} ms/step", flush=True)
    fp32, bf16 = min(times["fp32"]), min(times["bf16"])
    print(f"best of {args.rounds}: fp32 {fp32:.0f} ms/step, bf16 {bf16:.0f} ms/step, bf16 {fp32 / bf16:.2f}x as fast")


if __name__ == "__main__":
    main()
