"""Gradient-alignment loss that fits a relative reward (Nuti et al. 2023, Sec. 4 and Algorithm 2).

Notation (paper symbol -> variable here):

=====================  =========================================================
paper                   here
=====================  =========================================================
x_t                     ``x``: the noisy state both models step from
t                       ``t``: diffusion timestep of ``x`` (one per sample)
s^(1)                   the *base* model
s^(2)                   the *expert* (e.g. safer) model
x_{t-1}^(1)             ``base_next``: the base model's one-step prediction from ``x``
x_{t-1}^(2)             ``expert_next``: the expert's one-step prediction from ``x``
h_t                     ``target = expert_next - base_next``
rho_theta(x_t, t)       ``reward(x, t)``: a scalar per sample
=====================  =========================================================

Sign. Algorithm 2 and the guidance rule of the paper use ``h_t = s^(2) - s^(1)`` (expert minus
base), so that adding ``+omega * grad rho`` to the base model's step moves it toward the expert.
The appendix equation (45) writes base minus expert because it mixes noise predictions
(which point *away* from data) with score predictions; we follow Algorithm 2. ``relative_step``
is the only place the difference is taken, and ``tests/test_guidance.py`` checks the sign.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

RewardFn = Callable[[Tensor, Tensor], Tensor]


def relative_step(base_next: Tensor, expert_next: Tensor) -> Tensor:
    """The regression target ``h_t = expert_next - base_next`` (expert minus base, see module doc)."""
    return expert_next - base_next


def reward_gradient(reward: RewardFn, x: Tensor, t: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor]:
    """Return ``(rho, grad_x rho)`` for a batch; ``create_graph=True`` keeps the graph for double backprop.

    Shapes: ``x`` (B, ...), ``t`` (B,) -> ``rho`` (B,), ``grad`` like ``x``.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        rho = reward(x, t)
        (grad,) = torch.autograd.grad(rho.sum(), x, create_graph=create_graph)
    return rho, grad


def gradient_alignment_loss(
    reward: RewardFn,
    x: Tensor,
    t: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """``L(theta) = E_b[ w_b * mean_i (grad_x rho(x_b, t_b) - h_b)_i^2 ]`` (paper eq. for L_RRF).

    The squared norm is averaged over coordinates rather than summed, a constant factor that keeps
    learning rates comparable across state sizes. ``weight`` (B,) re-weights samples, typically
    ``1 / E||h_t||^2`` per timestep so that late, small-step timesteps are not drowned out; at every
    ``t`` the minimiser is unchanged because rho is a separate function of ``x`` for each ``t``.

    Returns ``(loss, info)`` with ``info`` holding detached floats for logging: the loss, the mean
    cosine between ``grad rho`` and ``h`` and the fraction of target energy explained.
    """
    _, grad = reward_gradient(reward, x, t, create_graph=True)
    err = (grad - target).flatten(1).pow(2).mean(dim=1)
    loss = (err * weight).mean() if weight is not None else err.mean()
    with torch.no_grad():
        g, h = grad.flatten(1).float(), target.flatten(1).float()
        cosine = torch.nn.functional.cosine_similarity(g, h, dim=1, eps=1e-12).mean()
        explained = 1.0 - err.sum() / h.pow(2).mean(dim=1).sum().clamp_min(1e-30)
    return loss, {"loss": loss.item(), "cosine": cosine.item(), "explained": explained.item()}
