"""The discriminator baseline of the paper's Table 1: classifier guidance toward the expert's data.

A classifier ``f(x_t, t)`` (the reward's architecture, ``TemporalRewardEncoder``) learns to tell
noised windows of the expert's dataset (label 1) from noised windows of the base's dataset (label 0),
with balanced batches so that ``sigmoid(f) = P(expert | x_t)``. The noisy windows are made the way
the planner sees them at sampling time: forward-diffused in the planners' normalised space, with
the clean start observation written in.

Guidance uses ``grad log P(expert | x_t)`` through ``rrf.guidance.RewardGuide``, scaled per step by
``c_t = beta_t / sqrt(alpha_t)``, the factor that turns a score into a shift of the DDPM posterior
mean (``mu = (x_t + beta_t grad log p_t(x_t)) / sqrt(alpha_t)``). With it, omega means the same for
both guides: by Bayes, ``c_t grad log P(e | x_t) = (1 - P(e | x_t)) (mu_expert - mu_base)`` for exact
models, while the relative reward's gradient is fitted to ``mu_expert - mu_base`` itself; the
classifier's push fades where it is already sure a window looks like the expert's.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rrf.decision.datasets import Trajectories, WindowDataset
from rrf.decision.diffusion import GaussianDiffusion
from rrf.manifest import provenance, write_json_atomic
from rrf.models import TemporalRewardEncoder
from rrf.trainer import Trainer, TrainerConfig


@dataclass
class DiscriminatorConfig:
    model_kwargs: dict = field(default_factory=lambda: {"dims": (64, 64, 128, 128)})
    """``TemporalRewardEncoder`` arguments besides transition_dim (the reward's architecture)."""
    steps: int = 2000
    batch_size: int = 128
    """Windows per step, half from each dataset."""
    lr: float = 2e-4
    ema_decay: float = 0.995


def score_to_mean_scale(planner: GaussianDiffusion) -> Tensor:
    """(T,) ``c_t = beta_t / sqrt(alpha_t)``: d(posterior mean) / d(score) of the planner's DDPM step."""
    abar = planner.alphas_cumprod.double()
    abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype, device=abar.device), abar[:-1]])
    alpha = abar / abar_prev
    return ((1 - alpha) / alpha.sqrt()).float()


class DiscriminatorReward(nn.Module):
    """``c_t * log sigmoid(f(x_t, t))``: the reward whose gradient is the scaled classifier guidance."""

    def __init__(self, classifier: nn.Module, scale: Tensor):
        super().__init__()
        self.classifier = classifier
        self.register_buffer("scale", scale)

    def logits(self, x: Tensor, t: Tensor) -> Tensor:
        return self.classifier(x, t)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, H, D) normalised noisy windows, t (B,) step indices -> (B,)."""
        return self.scale[t] * F.logsigmoid(self.classifier(x, t))


def noisy_windows(planner: GaussianDiffusion, windows: Tensor) -> tuple[Tensor, Tensor]:
    """Raw windows (B, H, D) -> (x_t, t) as the guided sampler sees them (clean start observation)."""
    x0 = planner.normalize(windows)
    t = torch.randint(0, planner.num_timesteps, (x0.shape[0],), device=x0.device)
    x_t = planner.q_sample(x0, t, torch.randn_like(x0))
    d = planner.observation_dim
    x_t[:, 0, :d] = x0[:, 0, :d]
    return x_t, t


def train_discriminator(planner: GaussianDiffusion, base: Trajectories, expert: Trajectories,
                        cfg: DiscriminatorConfig, out_dir: str | Path, seed: int,
                        progress: bool = False) -> DiscriminatorReward:
    """Fit the classifier (resuming; a finished ``out_dir/model`` is loaded) and return the guidance reward."""
    out_dir = Path(out_dir)
    final = out_dir / "model"
    scale = score_to_mean_scale(planner)
    if (final / "config.json").is_file():
        return DiscriminatorReward(TemporalRewardEncoder.from_pretrained(final), scale).eval()
    half = cfg.batch_size // 2
    data = [WindowDataset(d, planner.horizon, half, seed=seed * 2 + k) for k, d in enumerate((base, expert))]
    labels = torch.cat([torch.zeros(half), torch.ones(half)])

    def batches(step: int) -> Tensor:
        return torch.cat([d.batch(step) for d in data])

    def loss_fn(model: nn.Module, windows: Tensor) -> tuple[Tensor, dict[str, float]]:
        x_t, t = noisy_windows(planner, windows)
        logits = model(x_t, t)
        loss = F.binary_cross_entropy_with_logits(logits, labels)
        return loss, {"loss": loss.item(), "accuracy": ((logits > 0).float() == labels).float().mean().item()}

    torch.manual_seed(seed)
    net = TemporalRewardEncoder(transition_dim=planner.transition_dim, **cfg.model_kwargs)
    trainer_cfg = TrainerConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(100, cfg.steps // 10),
                                ema_decay=cfg.ema_decay, checkpoint_every=max(500, cfg.steps // 2),
                                keep_checkpoints=1, log_every=100, eval_every=0, seed=seed, progress=progress)
    trainer = Trainer(net, loss_fn, batches, trainer_cfg, out_dir, description="discriminator")
    net = trainer.train()
    tmp = out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    net.save_pretrained(tmp)
    write_json_atomic(tmp / "manifest.json", {"discriminator": asdict(cfg), "seed": seed, "provenance": provenance()})
    tmp.rename(final)
    shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
    return DiscriminatorReward(net, scale).eval()
