"""Safe Latent Diffusion (Schramowski et al., CVPR 2023) as pure functions over three noise predictions.

diffusers' ``StableDiffusionPipelineSafe`` is deprecated; this is our own implementation of the same
guidance, so that a "safe" model is just the base UNet plus a different way of combining its outputs,
and a base/SLD pair shares every UNet evaluation (``audit.pairing``). ``tests/test_sld_parity.py``
checks it against the deprecated pipeline to 1e-4.

Notation (paper -> here), for one denoising step ``i`` (0-based) of the sampling loop:

================================  =================================================================
paper                             here
================================  =================================================================
eps(z_t)                          ``eps_uncond``: prediction for the empty prompt
eps(z_t, c_p)                     ``eps_prompt``: prediction for the user's prompt
eps(z_t, c_S)                     ``eps_concept``: prediction for the safety-concept text
s_g                               ``guidance_scale``: classifier-free guidance scale
s_S                               ``sld.guidance_scale``
lambda                            ``sld.threshold``
s_m, beta_m                       ``sld.momentum_scale``, ``sld.momentum_beta``
delta                             ``sld.warmup_steps``: safety guidance is applied from step ``i >= delta``
nu_t                              ``SLDState.momentum`` (built up during warm-up too)
================================  =================================================================

One step (equation numbers of the SLD paper)::

    phi    = where(eps_prompt - eps_concept >= lambda, 0, clamp(s_S * |eps_prompt - eps_concept|, max=1))   # (6)
    gamma  = phi * (eps_concept - eps_uncond) + s_m * nu_t                                                   # (4), (7)
    nu_t+1 = beta_m * nu_t + (1 - beta_m) * gamma                                                            # (8)
    eps    = eps_uncond + s_g * (eps_prompt - eps_uncond - [i >= delta] * gamma)                             # (3)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Literal

import torch
from torch import Tensor

SLDPreset = Literal["weak", "medium", "strong", "max"]

#: The safety concept of the SLD paper and of diffusers' pipeline (the I2P categories, spelled out).
DEFAULT_SAFETY_CONCEPT = (
    "an image showing hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
    "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, "
    "brutality, cruelty"
)


@dataclass(frozen=True)
class SLDConfig:
    """Hyper-parameters of safety guidance; the presets of the SLD paper are ``SLDConfig.preset(name)``."""

    warmup_steps: int = 10
    """Safety guidance is applied from this denoising step on (momentum builds up before)."""
    guidance_scale: float = 1000.0
    """s_S: scale of the element-wise safety guidance; <= 1 disables SLD."""
    threshold: float = 0.01
    """lambda: coordinates where the prompt's prediction exceeds the concept's by this much are left alone."""
    momentum_scale: float = 0.3
    """s_m: how much of the accumulated momentum is added to the safety guidance."""
    momentum_beta: float = 0.4
    """beta_m: how much of the previous momentum is kept."""
    concept: str = DEFAULT_SAFETY_CONCEPT
    """The text whose direction is steered away from."""

    @classmethod
    def preset(cls, name: SLDPreset, concept: str = DEFAULT_SAFETY_CONCEPT) -> SLDConfig:
        if name not in SLD_PRESETS:
            raise ValueError(f"unknown SLD preset {name!r}; choose one of {', '.join(SLD_PRESETS)}")
        return replace(SLD_PRESETS[name], concept=concept)

    def to_dict(self) -> dict:
        return asdict(self)


# warm-up / guidance scale / threshold / momentum scale / momentum beta (SLD paper, Sec. 5; PAPER_NOTES.md)
SLD_PRESETS: dict[str, SLDConfig] = {
    "weak": SLDConfig(15, 20.0, 0.0, 0.0, 0.0),
    "medium": SLDConfig(10, 1000.0, 0.01, 0.3, 0.4),
    "strong": SLDConfig(7, 2000.0, 0.025, 0.5, 0.7),
    "max": SLDConfig(0, 5000.0, 1.0, 0.5, 0.7),
}


@dataclass(frozen=True)
class SLDState:
    """What SLD carries from one denoising step to the next, per trajectory: the step index and nu_t."""

    step: int = 0
    momentum: Tensor | None = None


def cfg_noise(eps_uncond: Tensor, eps_prompt: Tensor, guidance_scale: float) -> Tensor:
    """Classifier-free guidance: ``eps_uncond + s_g * (eps_prompt - eps_uncond)``."""
    return eps_uncond + guidance_scale * (eps_prompt - eps_uncond)


def sld_noise(eps_uncond: Tensor, eps_prompt: Tensor, eps_concept: Tensor, guidance_scale: float,
              sld: SLDConfig, state: SLDState) -> tuple[Tensor, SLDState]:
    """One step of safety-guided noise prediction; returns ``(eps, next_state)`` (see module doc)."""
    momentum = torch.zeros_like(eps_uncond) if state.momentum is None else state.momentum
    difference = eps_prompt - eps_concept
    scale = torch.clamp(difference.abs() * sld.guidance_scale, max=1.0)
    scale = torch.where(difference >= sld.threshold, torch.zeros_like(scale), scale)
    safety = (eps_concept - eps_uncond) * scale + sld.momentum_scale * momentum
    momentum = sld.momentum_beta * momentum + (1 - sld.momentum_beta) * safety
    guidance = eps_prompt - eps_uncond
    if state.step >= sld.warmup_steps:
        guidance = guidance - safety
    return eps_uncond + guidance_scale * guidance, SLDState(state.step + 1, momentum)
