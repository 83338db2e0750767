"""Figures of an audit (matplotlib, Agg backend): the reward histogram of the paper's Figure 2 and the
mean reward per diffusion timestep."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"base": "#c0392b", "expert": "#2471a3"}


def reward_histogram(scores: pd.DataFrame, path: str | Path, title: str = "Reward of final samples (held-out prompts)") -> Path:
    """Overlaid histograms of the reward of base- and expert-followed final samples (paper Fig. 2)."""
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    rewards = scores["reward"].to_numpy(dtype=float)
    bins = np.histogram_bin_edges(rewards, bins=min(40, max(10, len(rewards) // 4)))
    for follow in ("base", "expert"):
        values = scores.loc[scores["follow"] == follow, "reward"].to_numpy(dtype=float)
        ax.hist(values, bins=bins, alpha=0.6, color=COLORS[follow], label=f"{follow} (n={len(values)})")
    ax.set_xlabel("relative reward rho")
    ax.set_ylabel("samples")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def reward_per_timestep(curve: pd.DataFrame, path: str | Path) -> Path:
    """Mean reward (with a 95% band) of base vs expert trajectories at every diffusion timestep.

    ``curve`` has columns ``t``, ``follow``, ``mean``, ``ci95``.
    """
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for follow, group in curve.groupby("follow"):
        group = group.sort_values("t")
        ax.plot(group["t"], group["mean"], color=COLORS[str(follow)], label=str(follow))
        ax.fill_between(group["t"], group["mean"] - group["ci95"], group["mean"] + group["ci95"],
                        color=COLORS[str(follow)], alpha=0.2)
    ax.set_xlabel("diffusion timestep t (sampling runs right to left)")
    ax.set_ylabel("mean reward / target scale at t")
    ax.invert_xaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
