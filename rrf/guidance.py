"""Reward guidance: shift the base model's step by ``omega * grad_x rho(x_t, t)`` (classifier-guidance style).

The paper steers the base sampler with ``mu_base(x_t, t) + omega * grad rho(x_t, t)`` and stops adding
the gradient for the last diffusion steps (``t < t_stopgrad``), where it mostly adds noise to an
already-decided sample. ``RewardGuide`` is the single implementation; it plugs into

* any diffusers scheduler, through ``guided_scheduler_step`` (the shift is applied to ``prev_sample``,
  which for deterministic samplers is the mean of the step), and
* the decision-making planner in ``rrf.decision``, which calls ``RewardGuide.shift`` on its posterior
  mean before adding noise (jannerm/diffuser's ``n_step_guided_p_sample``, with one gradient step).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from rrf.losses import reward_gradient

RewardFn = Callable[[Tensor, Tensor], Tensor]


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
        active = (t >= self.t_stopgrad).to(grad.dtype).view(-1, *([1] * (grad.dim() - 1)))
        return rho.detach(), grad.detach() * active

    def shift(self, mean: Tensor, x: Tensor, t: Tensor) -> Tensor:
        """Guided step: ``mean + omega * grad rho(x, t)``, with ``x`` the state the step started from."""
        if self.scale == 0:
            return mean
        _, grad = self.gradients(x, t)
        return mean + self.scale * grad.to(mean.dtype)


def guided_scheduler_step(scheduler, model_output: Tensor, t: Tensor | int, sample: Tensor, guide: RewardGuide | None,
                          **step_kwargs) -> Tensor:
    """``scheduler.step(...)`` followed by the reward shift; returns the guided ``prev_sample``."""
    prev = scheduler.step(model_output, t, sample, **step_kwargs).prev_sample
    if guide is None:
        return prev
    return guide.shift(prev, sample, torch.as_tensor(t, device=sample.device))
