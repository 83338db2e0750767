"""Relative reward functions extracted from pairs of diffusion models (Nuti et al., NeurIPS 2023).

This package is domain-free: it knows about states ``x_t``, diffusion timesteps ``t`` and the
one-step predictions of a base and an expert model, never about images, prompts or environments
(those live in ``audit/`` and ``rrf/decision/``).

The names below are imported on first use (PEP 562), so that importing a light submodule such as
``rrf.errors`` (which the CLI does before parsing arguments) does not load torch and diffusers.
"""

from importlib import import_module

_EXPORTS = {
    "MinMaxNormalizer": "rrf.normalizers",
    "RelativeReward": "rrf.reward",
    "StreamingMoments": "rrf.normalizers",
    "TimestepStandardScaler": "rrf.normalizers",
    "UserError": "rrf.errors",
    "gradient_alignment_loss": "rrf.losses",
    "relative_step": "rrf.losses",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'rrf' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)
