"""`rrf-audit validate gaussian`: the method on diffusion models whose answer is known in closed form.

Both models are exact DDIM samplers of Gaussian mixtures (``rrf.gaussian_mixture``), so the true
relative reward is ``log p_expert,t(x) - log p_base,t(x)`` (up to a constant per t). We generate
Algorithm-2 tuples from the exact models, fit rho by gradient alignment with the shared trainer, and
measure on trajectories the fit never saw:

* ``cosine``: cosine between the fields grad rho and grad(log p_e,t - log p_b,t) over held-out states
  (the L2(p_t) inner product the paper's projection is defined with), averaged over t <= T/2;
  ``cosine_per_state`` is the mean of the per-state cosines instead (reported, not a pass criterion);
* ``spearman``: rank correlation of rho and the true log ratio at each t, averaged over t <= T/2;
* ``accuracy``: separating expert from base final samples by rho, threshold fitted on training
  trajectories (``accuracy_oracle`` does the same with the true log ratio: the best achievable).

Why DDIM steps are the right target: with eta = 0, ``x_{t-1}`` is affine in the noise prediction with a
negative coefficient, and ``eps* = -sqrt(1 - abar_t) grad log p_t``, so ``expert_next - base_next`` is a
positive multiple of ``grad(log p_e,t - log p_b,t)``: rho recovers the log ratio up to a scale per t.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler
from scipy.stats import spearmanr

from rrf.algorithm2 import PairRollout, rollout_pair
from rrf.gaussian_mixture import GaussianMixture
from rrf.losses import gradient_alignment_loss, relative_step
from rrf.metrics import separation_accuracy
from rrf.models import RewardMLP
from rrf.normalizers import TimestepScale
from rrf.reward import RelativeReward
from rrf.trainer import Trainer, TrainerConfig


@dataclass
class GaussianValidationConfig:
    num_inference_steps: int = 50
    """DDIM steps per trajectory (1000 training timesteps, linear betas)."""
    train_trajectories: int = 1024
    """Trajectories per follower for training (Algorithm 2 follows base and expert)."""
    test_trajectories: int = 512
    """Held-out trajectories per follower, from other seeds."""
    steps: int = 3000
    """Reward-training steps per configuration."""
    batch_size: int = 512
    lr: float = 2e-3
    hidden_dims: tuple[int, ...] = (128, 128, 128)
    seed: int = 0
    cosine_threshold: float = 0.95
    spearman_threshold: float = 0.9

    @classmethod
    def quick(cls) -> GaussianValidationConfig:
        """Fewer steps and trajectories for the test suite; the same thresholds."""
        return cls(train_trajectories=512, test_trajectories=256, steps=1200)


@dataclass
class MixturePair:
    name: str
    base: GaussianMixture
    expert: GaussianMixture
    plot: bool = field(default=False)


def default_pairs() -> list[MixturePair]:
    """Three configurations: a re-weighted 2-D mixture, shifted 2-D means, and a 16-D mixture."""
    corners = [[-1.5, -1.5], [-1.5, 1.5], [1.5, -1.5], [1.5, 1.5]]
    tri = [[-2.0, 0.0], [1.0, 1.7], [1.0, -1.7]]
    gen = torch.Generator().manual_seed(1234)
    mu16 = torch.randn(3, 16, generator=gen, dtype=torch.float64) * 1.2
    shift16 = torch.randn(16, generator=gen, dtype=torch.float64) * 0.25
    return [
        MixturePair("reweighted-2d", GaussianMixture.make([1, 1, 1, 1], corners, 0.8),
                    GaussianMixture.make([0.55, 0.15, 0.15, 0.15], corners, 0.8), plot=True),
        MixturePair("shifted-2d", GaussianMixture.make([1, 1, 1], tri, 0.7),
                    GaussianMixture.make([1, 1, 1], [[x + 0.6, y + 0.3] for x, y in tri], 0.7), plot=True),
        MixturePair("mixture-16d", GaussianMixture.make([1, 1, 1], mu16, 0.8),
                    GaussianMixture.make([0.5, 0.3, 0.2], mu16 + shift16, 0.8)),
    ]


def make_scheduler(num_inference_steps: int) -> DDIMScheduler:
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False,
                              set_alpha_to_one=True, prediction_type="epsilon")
    scheduler.set_timesteps(num_inference_steps)
    return scheduler


def exact_pair_step(pair: MixturePair, scheduler: DDIMScheduler):
    """``(x, t) -> (base_next, expert_next)``: one exact DDIM step of each model from the same x."""

    def step(x: torch.Tensor, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        abar = float(scheduler.alphas_cumprod[t])
        return tuple(scheduler.step(m.eps(x, abar), t, x).prev_sample for m in (pair.base, pair.expert))

    return step


def generate(pair: MixturePair, scheduler: DDIMScheduler, n: int, seed: int) -> dict[str, PairRollout]:
    """Algorithm 2: ``n`` trajectories following each model, from per-follower seeds."""
    step = exact_pair_step(pair, scheduler)
    out = {}
    for i, follow in enumerate(("base", "expert")):
        x_T = torch.randn(n, pair.base.dim, generator=torch.Generator().manual_seed(seed * 2 + i), dtype=torch.float64)
        out[follow] = rollout_pair(step, x_T, scheduler.timesteps, follow)
    return out


def true_log_ratio(pair: MixturePair, x: torch.Tensor, abar: float) -> torch.Tensor:
    return pair.expert.log_prob(x, abar) - pair.base.log_prob(x, abar)


def fit_reward(pair: MixturePair, rollouts: dict[str, PairRollout], scheduler: DDIMScheduler,
               cfg: GaussianValidationConfig, out_dir: Path, progress: bool) -> RelativeReward:
    t, x, base_next, expert_next = (torch.cat(p) for p in zip(*(r.tuples() for r in rollouts.values()), strict=True))
    target = relative_step(base_next, expert_next).float()
    x = x.float()
    reward = RelativeReward(RewardMLP(transition_dim=pair.base.dim, horizon=1, hidden_dims=cfg.hidden_dims),
                            output_scale=TimestepScale.fit(t, target))

    def batches(step: int):
        idx = torch.randint(len(t), (cfg.batch_size,), generator=torch.Generator().manual_seed(cfg.seed * 7919 + step))
        return t[idx], x[idx], target[idx]

    def loss_fn(model, batch):
        bt, bx, bh = batch
        return gradient_alignment_loss(model, bx, bt, bh, weight=model.loss_weight(bt))

    config = TrainerConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=100, ema_decay=0.99, checkpoint_every=cfg.steps,
                           keep_checkpoints=1, log_every=100, eval_every=0, seed=cfg.seed, progress=progress)
    trainer = Trainer(reward, loss_fn, batches, config, out_dir / "runs" / pair.name, description=pair.name)
    return trainer.train()


def evaluate(pair: MixturePair, reward: RelativeReward, train: dict[str, PairRollout], test: dict[str, PairRollout],
             scheduler: DDIMScheduler) -> dict:
    """Cosine and Spearman on held-out states (t <= T/2) and final-sample separation accuracy."""
    half = scheduler.config.num_train_timesteps // 2
    cosines, state_cosines, spearmans, per_t = [], [], [], []
    for s, t in enumerate(scheduler.timesteps.tolist()):
        if t > half:
            continue
        abar = float(scheduler.alphas_cumprod[t])
        x = torch.cat([test["base"].states[s], test["expert"].states[s]])
        rho, grad = reward.gradient(x.float(), torch.full((len(x),), t))
        true_grad = pair.expert.score(x, abar) - pair.base.score(x, abar)
        cos = torch.nn.functional.cosine_similarity(grad.double().flatten(), true_grad.flatten(), dim=0).item()
        # Also per state: the field cosine above is dominated by states where the gradients are large.
        state_cos = torch.nn.functional.cosine_similarity(grad.double(), true_grad, dim=1, eps=1e-30).mean().item()
        rank = spearmanr(rho.numpy(), true_log_ratio(pair, x, abar).numpy()).statistic
        cosines.append(cos)
        state_cosines.append(state_cos)
        spearmans.append(float(rank))
        per_t.append({"t": t, "cosine": cos, "cosine_per_state": state_cos, "spearman": float(rank)})

    t_last = int(scheduler.timesteps[-1])
    abar_last = float(scheduler.alphas_cumprod[t_last])

    def final_scores(rollouts: dict[str, PairRollout], true: bool) -> tuple[np.ndarray, np.ndarray]:
        x = torch.cat([rollouts["base"].final, rollouts["expert"].final])
        labels = np.r_[np.zeros(len(rollouts["base"].final)), np.ones(len(rollouts["expert"].final))]
        if true:
            return true_log_ratio(pair, x, abar_last).numpy(), labels
        rho, _ = reward.gradient(x.float(), torch.full((len(x),), t_last))
        return rho.numpy(), labels

    def separation(true: bool) -> float:
        return separation_accuracy(*final_scores(train, true), *final_scores(test, true))

    return {
        "name": pair.name,
        "dim": pair.base.dim,
        "cosine": float(np.mean(cosines)),
        "cosine_per_state": float(np.mean(state_cosines)),
        "spearman": float(np.mean(spearmans)),
        "accuracy": separation(true=False),
        "accuracy_oracle": separation(true=True),
        "per_timestep": per_t,
    }


def plot_heatmaps(pair: MixturePair, reward: RelativeReward, scheduler: DDIMScheduler, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = int(scheduler.timesteps[-1])
    abar = float(scheduler.alphas_cumprod[t])
    lim = 3.5
    grid = torch.linspace(-lim, lim, 121)
    xx, yy = torch.meshgrid(grid, grid, indexing="xy")
    pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    with torch.no_grad():
        learned = reward(pts.float(), torch.full((len(pts),), t)).reshape(xx.shape).numpy()
    true = true_log_ratio(pair, pts, abar).reshape(xx.shape).numpy()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4))
    for ax, img, title in zip(axes, (learned, true), ("learned rho", "true log p_expert - log p_base"), strict=True):
        im = ax.imshow(img, origin="lower", extent=(-lim, lim, -lim, lim), cmap="viridis")
        ax.scatter(*pair.base.means.T.numpy(), marker="o", facecolors="none", edgecolors="white", label="base means")
        ax.scatter(*pair.expert.means.T.numpy(), marker="x", color="red", label="expert means")
        ax.set_title(f"{title} (t={t})")
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0].legend(loc="lower left", fontsize=7)
    fig.suptitle(pair.name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(out_dir: str | Path, cfg: GaussianValidationConfig, pairs: list[MixturePair] | None = None,
        progress: bool = True) -> dict:
    """Run every configuration, write ``validation.json`` (and PNGs for the 2-D cases), return the results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scheduler = make_scheduler(cfg.num_inference_steps)
    results = []
    for i, pair in enumerate(pairs or default_pairs()):
        train = generate(pair, scheduler, cfg.train_trajectories, seed=cfg.seed * 100 + i * 10)
        test = generate(pair, scheduler, cfg.test_trajectories, seed=cfg.seed * 100 + i * 10 + 5)
        reward = fit_reward(pair, train, scheduler, cfg, out_dir, progress)
        result = evaluate(pair, reward, train, test, scheduler)
        result["passed"] = bool(result["cosine"] >= cfg.cosine_threshold and result["spearman"] >= cfg.spearman_threshold)
        if pair.plot:
            plot_heatmaps(pair, reward, scheduler, out_dir / f"{pair.name}.png")
            result["plot"] = f"{pair.name}.png"
        results.append(result)
    summary = {
        "passed": all(r["passed"] for r in results),
        "thresholds": {"cosine": cfg.cosine_threshold, "spearman": cfg.spearman_threshold},
        "config": asdict(cfg),
        "configurations": results,
    }
    tmp = out_dir / "validation.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out_dir / "validation.json")
    return summary


__all__ = ["GaussianValidationConfig", "MixturePair", "default_pairs", "run"]
