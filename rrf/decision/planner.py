"""Build and train a ``GaussianDiffusion`` planner from plain-data settings with the shared trainer.

Every environment (Maze2D, locomotion) is a ``PlannerConfig`` value, not a code path. A planner run
directory holds the trainer's checkpoints while it trains and ``model/`` (``save_pretrained``) once it
is done; a finished directory is loaded instead of retrained, an interrupted one resumes.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rrf.decision.datasets import Trajectories, WindowDataset
from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.runs import finished_model, save_finished
from rrf.decision.temporal import DENOISERS
from rrf.errors import UserError
from rrf.normalizers import MinMaxNormalizer
from rrf.trainer import Trainer, TrainerConfig


@dataclass
class PlannerConfig:
    denoiser: Literal["MLPDenoiser", "TemporalUnet"] = "MLPDenoiser"
    """Denoiser class (``rrf.decision.temporal``): the fast MLP or Diffuser's temporal UNet."""
    denoiser_kwargs: dict = field(default_factory=lambda: {"hidden_dims": (512, 512, 512)})
    """Constructor arguments of the denoiser besides transition_dim and horizon."""
    horizon: int = 32
    """Window length H of the planned trajectories."""
    num_timesteps: int = 100
    """Diffusion steps T."""
    prediction_type: Literal["epsilon", "sample"] = "epsilon"
    """What the denoiser predicts."""
    steps: int = 3000
    """Training steps of a planner trained from scratch (the base)."""
    finetune_steps: int = 1000
    """Training steps of a planner fine-tuned from another (an expert from the base)."""
    batch_size: int = 256
    lr: float = 2e-4
    ema_decay: float = 0.995


def build_planner(cfg: PlannerConfig, normalizer: MinMaxNormalizer, observation_dim: int) -> GaussianDiffusion:
    if cfg.denoiser not in DENOISERS:
        raise UserError(f"unknown denoiser {cfg.denoiser!r}; choose from {', '.join(DENOISERS)}")
    transition_dim = int(normalizer.mins.shape[0])
    denoiser = DENOISERS[cfg.denoiser](transition_dim=transition_dim, horizon=cfg.horizon, **cfg.denoiser_kwargs)
    return GaussianDiffusion(denoiser, normalizer, observation_dim, num_timesteps=cfg.num_timesteps,
                             prediction_type=cfg.prediction_type)


def train_planner(data: Trajectories, cfg: PlannerConfig, out_dir: str | Path, seed: int,
                  init: GaussianDiffusion | None = None, progress: bool = False) -> GaussianDiffusion:
    """Train on the windows of ``data``; ``init`` fine-tunes a copy of that planner (keeping its normaliser).

    From scratch, the normaliser is fitted on ``data`` (Diffuser's min-max over the clean dataset).
    """
    out_dir = Path(out_dir)
    if final := finished_model(out_dir, "diffusion.json"):
        return GaussianDiffusion.from_pretrained(final)
    if init is None:
        normalizer = MinMaxNormalizer.fit(torch.from_numpy(data.transitions))
        model, steps = build_planner(cfg, normalizer, data.observations.shape[1]), cfg.steps
    else:
        model, steps = copy.deepcopy(init).train(), cfg.finetune_steps
    windows = WindowDataset(data, cfg.horizon, cfg.batch_size, seed=seed)
    trainer_cfg = TrainerConfig(steps=steps, lr=cfg.lr, warmup_steps=min(100, steps // 10), ema_decay=cfg.ema_decay,
                                checkpoint_every=max(500, steps // 4), keep_checkpoints=1, log_every=100,
                                eval_every=0, seed=seed, progress=progress)
    trainer = Trainer(model, lambda m, batch: m.loss(batch), windows.batch, trainer_cfg, out_dir,
                      description=f"planner {out_dir.name}")
    planner = trainer.train()
    save_finished(trainer, planner, {"planner": asdict(cfg), "seed": seed, "fine_tuned": init is not None,
                                     "windows": len(windows)})
    return planner
