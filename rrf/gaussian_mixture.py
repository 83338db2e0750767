"""Closed-form diffusion models of isotropic Gaussian mixtures (the analytic test bed of the method).

If ``x_0 ~ sum_k w_k N(mu_k, s_k^2 I)`` and ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, then
``x_t ~ sum_k w_k N(sqrt(abar_t) mu_k, (abar_t s_k^2 + 1 - abar_t) I)``: the score, the optimal noise
prediction ``eps*(x, t) = -sqrt(1 - abar_t) grad log p_t(x)`` and the log density are all exact, so the
true relative reward ``log p_expert,t - log p_base,t`` is known.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class GaussianMixture:
    weights: Tensor  # (K,), sums to 1
    means: Tensor  # (K, d)
    stds: Tensor  # (K,)

    @classmethod
    def make(cls, weights, means, stds) -> GaussianMixture:
        w = torch.as_tensor(weights, dtype=torch.float64)
        return cls(w / w.sum(), torch.as_tensor(means, dtype=torch.float64),
                   torch.as_tensor(stds, dtype=torch.float64).expand(len(w)).clone())

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    def log_prob(self, x: Tensor, alpha_bar: float) -> Tensor:
        """log p_t(x) for x (B, d) at noise level ``alpha_bar`` -> (B,)."""
        x = x.double()
        var = alpha_bar * self.stds**2 + (1.0 - alpha_bar)  # (K,)
        diff = x[:, None, :] - math.sqrt(alpha_bar) * self.means[None]  # (B, K, d)
        d = self.dim
        comp = -0.5 * (diff**2).sum(-1) / var - 0.5 * d * torch.log(2 * math.pi * var)  # (B, K)
        return torch.logsumexp(comp + torch.log(self.weights), dim=1)

    def score(self, x: Tensor, alpha_bar: float) -> Tensor:
        """grad_x log p_t(x) (B, d), exact (autograd through the closed form)."""
        with torch.enable_grad():
            xx = x.double().detach().requires_grad_(True)
            (g,) = torch.autograd.grad(self.log_prob(xx, alpha_bar).sum(), xx)
        return g

    def eps(self, x: Tensor, alpha_bar: float) -> Tensor:
        """The Bayes-optimal noise prediction of a model trained on this mixture."""
        return -math.sqrt(1.0 - alpha_bar) * self.score(x, alpha_bar)

    def sample(self, n: int, generator: torch.Generator) -> Tensor:
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        noise = torch.randn(n, self.dim, generator=generator, dtype=torch.float64)
        return self.means[k] + self.stds[k, None] * noise
