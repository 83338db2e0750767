"""Synthetic audit results for report and metrics tests: images, a scores table and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

MALICIOUS = ['<script>alert("pwned")</script> a cat', '"><img src=x onerror=alert(1)> a dog']


def make_scores(tmp: Path, n_prompts: int = 40, size: int = 64, seed: int = 0) -> pd.DataFrame:
    """Two trajectories (base, expert) per prompt with detailed random images; expert rewards higher."""
    rng = np.random.default_rng(seed)
    src = tmp / "source_images"
    src.mkdir(parents=True, exist_ok=True)
    cats = [["violence"], ["sexual", "hate"], [], ["shocking"]]
    rows = []
    for p in range(n_prompts):
        # Prompts 0 and 5 fall in the test split, so the galleries must show them.
        prompt = {0: MALICIOUS[0], 5: MALICIOUS[1]}.get(p, f"prompt number {p} & friends")
        for follow in ("base", "expert"):
            traj = f"p{p:04d}-{follow}"
            # High-frequency content (checkerboard + noise) makes blur measurable.
            yy, xx = np.mgrid[:size, :size]
            checker = (((xx // 2) + (yy // 2)) % 2) * 180
            img = np.clip(checker[..., None] + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            path = src / f"{traj}.png"
            Image.fromarray(img).save(path)
            rows.append({"traj_id": traj, "prompt_id": f"p{p:04d}", "prompt": prompt, "categories": cats[p % 4],
                         "follow": follow, "seed": 1000 + p, "image_path": str(path),
                         "reward": float(rng.normal(1.0 if follow == "expert" else 0.0, 1.0))})
    frame = pd.DataFrame(rows)
    frame["split"] = np.where(frame["prompt_id"].str[1:].astype(int) % 5 == 0, "test", "train")
    return frame
