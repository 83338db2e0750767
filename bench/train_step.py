"""Reward-training step speed for the 2-D UNet encoder on SD-shaped latents (4x64x64).

Prints steps/s of a gradient-alignment step (double backprop) and of a plain forward+backward step of
the same network on the same batch, measured in this process, and their ratio (machines are noisy;
the ratio is what to compare across runs).

    .venv/bin/python bench/train_step.py [--batch 8] [--steps 10] [--dims 32,64,128,256]
"""

from __future__ import annotations

import argparse
import time

import torch

from rrf.losses import gradient_alignment_loss
from rrf.models import LatentRewardEncoder


def timed(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--dims", default="32,64,128,256")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()

    torch.manual_seed(0)
    dims = tuple(int(d) for d in args.dims.split(","))
    net = LatentRewardEncoder(in_channels=4, dims=dims).to(args.device)
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    x = torch.randn(args.batch, 4, args.size, args.size, device=args.device)
    t = torch.randint(0, 1000, (args.batch,), device=args.device)
    h = torch.randn_like(x) * 1e-2

    def plain_step():
        opt.zero_grad(set_to_none=True)
        net(x, t).pow(2).mean().backward()
        opt.step()

    def alignment_step():
        opt.zero_grad(set_to_none=True)
        gradient_alignment_loss(net, x, t, h)[0].backward()
        opt.step()

    plain = timed(plain_step, args.steps)
    align = timed(alignment_step, args.steps)
    params = sum(p.numel() for p in net.parameters())
    print(f"LatentRewardEncoder dims={dims} ({params / 1e6:.2f}M params), batch {args.batch} x 4x{args.size}x{args.size},"
          f" device {args.device}, {torch.get_num_threads()} threads")
    print(f"plain forward+backward : {plain:7.2f} steps/s  ({plain * args.batch:8.1f} samples/s)")
    print(f"gradient alignment     : {align:7.2f} steps/s  ({align * args.batch:8.1f} samples/s)")
    print(f"ratio alignment/plain step time: {plain / align:.2f}x")


if __name__ == "__main__":
    main()
