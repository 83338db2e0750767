"""Relative reward functions extracted from pairs of diffusion models (Nuti et al., NeurIPS 2023).

This package is domain-free: it knows about states ``x_t``, diffusion timesteps ``t`` and the
one-step predictions of a base and an expert model, never about images, prompts or environments
(those live in ``audit/`` and ``rrf/decision/``).
"""

from rrf.errors import UserError
from rrf.losses import gradient_alignment_loss, relative_step
from rrf.normalizers import MinMaxNormalizer, StreamingMoments, TimestepStandardScaler
from rrf.reward import RelativeReward

__all__ = [
    "MinMaxNormalizer",
    "RelativeReward",
    "StreamingMoments",
    "TimestepStandardScaler",
    "UserError",
    "gradient_alignment_loss",
    "relative_step",
]
