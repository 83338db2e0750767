"""Extract the relative reward of a (base, expert) planner pair: Algorithm 2, then gradient alignment.

1. ``pair_tuples``: roll out ``trajectories`` samples following the base and as many following the
   expert (``rrf.algorithm2.rollout_pair``), recording both planners' steps from every state.
2. ``fit_reward``: fit ``rho(x_t, t)`` (a ``rrf.models`` network in a ``RelativeReward``) so that
   ``grad rho`` matches ``h_t = expert step - base step`` with the shared trainer. The reward works
   in the planners' normalised window space, the space guidance shifts.

The per-timestep output scale (``TimestepScale``, the RMS of ``h_t``) with the matching loss weight
``1 / scale_t^2`` makes every timestep count at unit scale. Planner steps shrink by orders of
magnitude toward t = 0, and without it the small-t reward, which the evaluations read, is fitted worst.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from rrf.algorithm2 import rollout_pair
from rrf.decision.diffusion import GaussianDiffusion, pair_stepper
from rrf.decision.runs import finished_model, save_finished
from rrf.errors import UserError
from rrf.losses import gradient_alignment_loss, relative_step
from rrf.models import REWARD_MODELS
from rrf.normalizers import TimestepScale
from rrf.reward import RelativeReward
from rrf.trainer import Trainer, TrainerConfig


@dataclass
class RewardConfig:
    model: str = "RewardMLP"
    """Reward network class in ``rrf.models`` (RewardMLP, TemporalRewardEncoder)."""
    model_kwargs: dict = field(default_factory=lambda: {"horizon": 4, "hidden_dims": (128, 64, 32)})
    """Constructor arguments besides transition_dim (paper Table 2 for Maze2D)."""
    trajectories: int = 128
    """Algorithm-2 samples per follower (base and expert), each recorded at every diffusion step."""
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    ema_decay: float = 0.99


@dataclass
class PairTuples:
    t: Tensor  # (N,) step index of x
    x: Tensor  # (N, H, D) normalised noisy windows
    target: Tensor  # (N, H, D) h_t = expert step - base step

    def __len__(self) -> int:
        return len(self.t)


def pair_tuples(base: GaussianDiffusion, expert: GaussianDiffusion, trajectories: int, seed: int) -> PairTuples:
    """Algorithm 2 (no dataset access): ``trajectories`` samples following each model from x_T ~ N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    step = pair_stepper(base, expert, gen)
    timesteps = torch.arange(base.num_timesteps - 1, -1, -1)
    shape = (trajectories, base.horizon, base.transition_dim)
    parts = [rollout_pair(step, torch.randn(shape, generator=gen), timesteps, follow).tuples()
             for follow in ("base", "expert")]
    t, x, base_next, expert_next = (torch.cat(p) for p in zip(*parts, strict=True))
    return PairTuples(t, x, relative_step(base_next, expert_next))


def alignment_by_timestep(reward: RelativeReward, tuples: PairTuples) -> dict:
    """Cosine and explained fraction of ``grad rho`` against ``h_t`` per diffusion step and over all of ``tuples``.

    Given tuples the reward was not fitted on, this is its generalisation: on HalfCheetah (recipe 3, 512
    trajectories, 4000 steps), with the explained fraction averaged over steps, the training tuples gave
    0.84 and fresh ones 0.67 (0.12 at the noisiest step).
    """
    steps = sorted(tuples.t.unique().tolist(), reverse=True)
    count, cosine, explained, energy = [], [], [], []  # one gradient pass per step; the totals are derived
    for t in steps:
        m = tuples.t == t
        _, info = gradient_alignment_loss(reward, tuples.x[m], tuples.t[m], tuples.target[m])
        count.append(int(m.sum()))
        cosine.append(info["cosine"])
        explained.append(info["explained"])
        energy.append(float(tuples.target[m].flatten(1).pow(2).mean(dim=1).sum()))  # the loss's denominator
    return {"tuples": len(tuples), "cosine": sum(n * c for n, c in zip(count, cosine, strict=True)) / len(tuples),
            "explained": 1 - sum((1 - e) * w for e, w in zip(explained, energy, strict=True)) / max(sum(energy), 1e-30),
            "t": steps, "cosine_by_t": cosine, "explained_by_t": explained}


def build_reward(cfg: RewardConfig, transition_dim: int, tuples: PairTuples) -> RelativeReward:
    if cfg.model not in REWARD_MODELS:
        raise UserError(f"unknown reward model {cfg.model!r}; choose from {', '.join(REWARD_MODELS)}")
    net = REWARD_MODELS[cfg.model](transition_dim=transition_dim, **cfg.model_kwargs)
    return RelativeReward(net, output_scale=TimestepScale.fit(tuples.t, tuples.target))


def fit_reward(tuples: PairTuples, cfg: RewardConfig, out_dir: str | Path, seed: int,
               progress: bool = False) -> RelativeReward:
    """Fit ``rho`` on the tuples; a finished ``out_dir/model`` is loaded instead, an interrupted run resumes."""
    out_dir = Path(out_dir)
    if final := finished_model(out_dir, "config.json"):
        return RelativeReward.from_pretrained(final)
    reward = build_reward(cfg, tuples.x.shape[-1], tuples)

    def batches(step: int) -> tuple[Tensor, Tensor, Tensor]:
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(len(tuples), (cfg.batch_size,), generator=gen)
        return tuples.t[idx], tuples.x[idx], tuples.target[idx]

    def loss_fn(model: RelativeReward, batch: tuple[Tensor, Tensor, Tensor]):
        t, x, h = batch
        return gradient_alignment_loss(model, x, t, h, weight=model.loss_weight(t))

    trainer_cfg = TrainerConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(100, cfg.steps // 10),
                                ema_decay=cfg.ema_decay, checkpoint_every=max(500, cfg.steps // 2),
                                keep_checkpoints=1, log_every=100, eval_every=0, seed=seed, progress=progress)
    trainer = Trainer(reward, loss_fn, batches, trainer_cfg, out_dir, description=f"reward {out_dir.parent.name}")
    reward = trainer.train()
    save_finished(trainer, reward, {"reward": asdict(cfg), "seed": seed, "tuples": len(tuples)})
    return reward
