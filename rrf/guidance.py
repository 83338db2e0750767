"""Reward guidance: shift the base model's step by ``omega * grad_x rho(x_t, t)`` (classifier-guidance style).

The paper steers the base sampler with ``mu_base(x_t, t) + omega * grad rho(x_t, t)`` and stops adding
the gradient for the last diffusion steps (``t < t_stopgrad``), where it mostly adds noise to an
already-decided sample. ``RewardGuide`` is the single implementation; it plugs into

* any diffusers scheduler, through ``guided_scheduler_step`` (the shift is applied to ``prev_sample``,
  which for deterministic samplers is the mean of the step), and
* the decision-making planner in ``rrf.decision``, which calls ``RewardGuide.shift`` on its posterior
  mean before adding noise (jannerm/diffuser's ``n_step_guided_p_sample``, with one gradient step).

Samplers accept any ``Guide`` (an object with ``shift``); ``rrf.decision.diffusion.OracleGuide`` is the
other one: it shifts by the exact target ``omega * h_t`` that ``grad rho`` is fitted to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from rrf.losses import reward_gradient

RewardFn = Callable[[Tensor, Tensor], Tensor]


class Guide(Protocol):
    def shift(self, mean: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """The guided step from ``mean`` (the sampler's step from ``x`` at timesteps ``t``)."""


def active_steps(t: Tensor, t_stopgrad: float, like: Tensor) -> Tensor:
    """1 where ``t >= t_stopgrad`` else 0, shaped to broadcast against ``like`` (B, ...)."""
    return (t >= t_stopgrad).to(like.dtype).view(-1, *([1] * (like.dim() - 1)))


@dataclass
class RewardGuide:
    """``reward(x, t) -> (B,)``; ``scale`` is omega; no guidance where ``t < t_stopgrad``.

    ``t`` is in the units the sampler uses (scheduler timesteps for diffusers, step indices for the
    planner), and ``t_stopgrad`` is compared in the same units.
    """

    reward: RewardFn
    scale: float
    t_stopgrad: float = 0

    def gradients(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(rho, grad_x rho)`` at the current state; the gradient is zeroed where ``t < t_stopgrad``."""
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        rho, grad = reward_gradient(self.reward, x, t, create_graph=False)
        return rho.detach(), grad.detach() * active_steps(t, self.t_stopgrad, grad)

    def shift(self, mean: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Guided step: ``mean + omega * grad rho(x, t)``, with ``x`` the state the step started from."""
        if self.scale == 0:
            return mean
        _, grad = self.gradients(x, t)
        return mean + self.scale * grad.to(mean.dtype)


def guided_scheduler_step(scheduler, model_output: Tensor, t: Tensor | int, sample: Tensor, guide: Guide | None,
                          **step_kwargs) -> Tensor:
    """``scheduler.step(...)`` followed by the reward shift; returns the guided ``prev_sample``."""
    prev = scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
    if guide is None:
        return prev
    return guide.shift(prev, sample, torch.as_tensor(t, device=sample.device))
