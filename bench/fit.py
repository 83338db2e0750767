"""Reward fitting on SD-shaped latents (4x64x64): steps/s, time waiting for data, peak memory vs data size.

Builds two synthetic stores with the real writer (random latents: the data values do not change
the cost) at 1x and 10x the number of trajectories, runs `audit.fit.fit` on each in a fresh process
(the streaming scaler pass over all training data included), and prints for each: steps/s, the share
of step time spent waiting for data (from the trainer's own metrics), and peak RSS; then the ratios
10x / 1x. Goals (issue 5): data wait <= 10% of step time, 10x data < +10% peak RSS.

    .venv/bin/python bench/fit.py [--trajectories 24] [--steps 30] [--batch 64] [--work /tmp/rrf-bench-fit]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from audit.store import StoreWriter

SHAPE = (4, 64, 64)
STEPS = 50


def build_store(root: Path, n_trajectories: int, seed: int = 0) -> None:
    """A store of ``n_trajectories`` (half base-, half expert-followed, two per prompt) with random latents."""
    if (root / "manifest.json").is_file():
        return
    writer = StoreWriter(root, "fp16")
    gen = torch.Generator().manual_seed(seed)
    timesteps = list(range(981, 0, -20))[:STEPS]
    trajectories, per_shard = [], 8
    for k, start in enumerate(range(0, n_trajectories, per_shard)):
        ids = list(range(start, min(start + per_shard, n_trajectories)))
        states = torch.randn(len(ids), STEPS + 1, *SHAPE, generator=gen)
        steps = torch.randn(len(ids), STEPS, *SHAPE, generator=gen) * 1e-2
        images = [Image.fromarray(np.full((8, 8, 3), i % 255, dtype=np.uint8)) for i in ids]
        writer.write_shard(k, ids, states, steps, images)
        for i in ids:
            trajectories.append({"traj_id": i, "prompt_id": str(i // 2), "prompt": f"prompt {i // 2}",
                                 "categories": [["violence", "sexual", "hate"][(i // 2) % 3]],
                                 "follow": "base" if i % 2 == 0 else "expert", "seed": i, "image": f"images/{i:06d}.png"})
    manifest = {"format": "rrf-audit-latents", "version": 1, "config": {"store_dtype": "fp16"},
                "models": {"base": {"name": "synthetic"}, "expert": {"name": "synthetic"}},
                "pair": {"unet_evaluations_per_step": 4}, "timesteps": timesteps, "latent_shape": list(SHAPE),
                "trajectories": trajectories}
    writer.finalize(manifest, k + 1)


def run_fit(store: Path, run: Path, steps: int, batch: int) -> dict:
    """Fit in a fresh process; return its peak RSS and the trainer's timing metrics."""
    shutil.rmtree(run, ignore_errors=True)
    code = (
        "from audit.fit import FitConfig, fit;"
        f"fit({str(store)!r}, {str(run)!r}, FitConfig(steps={steps}, batch_size={batch}, eval_every=0,"
        f" checkpoint_every={steps}, val_tuples=64), device='cpu', progress=False)"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    subprocess.run([sys.executable, "-c", code], check=True)
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    if peak_kib <= before:
        raise RuntimeError("run the sizes from small to large: ru_maxrss of children only grows")
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["split"] == "train"][1:] or [x for x in lines if x["split"] == "train"]
    sec = float(np.mean([x["seconds_per_step"] for x in train]))
    return {"peak_rss_mb": peak_kib / 1024, "steps_per_s": 1 / sec, "data_fraction": float(np.mean([x["data_fraction"] for x in train]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trajectories", type=int, default=24, help="trajectories of the 1x store")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--work", type=Path, default=Path("/tmp/rrf-bench-fit"))
    args = parser.parse_args()

    results = {}
    for factor in (1, 10):
        store = args.work / f"store-{factor}x"
        build_store(store, args.trajectories * factor)
        results[factor] = run_fit(store, args.work / f"run-{factor}x", args.steps, args.batch)
        r = results[factor]
        gb = sum(p.stat().st_size for p in (store / "shards").glob("*.safetensors")) / 1e9
        print(f"{factor:>2}x data ({args.trajectories * factor} trajectories, {gb:.2f} GB): {r['steps_per_s']:.2f} steps/s"
              f" at batch {args.batch}, data wait {r['data_fraction']:.1%} of step time, peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"ratio 10x/1x: peak RSS {results[10]['peak_rss_mb'] / results[1]['peak_rss_mb']:.3f}, "
          f"steps/s {results[10]['steps_per_s'] / results[1]['steps_per_s']:.3f}")


if __name__ == "__main__":
    main()
