"""MLP reward over windows of the reward horizon (the paper's Maze2D reward, Table 2)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class RewardMLP(ModelMixin, ConfigMixin):
    """``rho(tau, t) = mean_w g(tau[w : w + h], t)``: a per-window MLP ``g`` averaged over all windows.

    Input ``x`` is (B, H, D) trajectories (H >= ``horizon``) or (B, D) flat states (a one-step window).
    With ``horizon = 1``, ``g(s, a, t)`` is a per-transition reward (paper Sec. 4, "per-step reward").
    Smooth activations (SiLU) matter: the loss differentiates ``grad_x rho`` once more, and a ReLU
    network's input gradient is piecewise constant.
    """

    @register_to_config
    def __init__(
        self,
        transition_dim: int,
        horizon: int = 1,
        hidden_dims: tuple[int, ...] = (128, 64, 32),
        time_embed_dim: int = 32,
    ):
        super().__init__()
        self.time_proj = Timesteps(time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(time_embed_dim, time_embed_dim)
        layers: list[nn.Module] = []
        width = horizon * transition_dim + time_embed_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.SiLU()]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, H, D) or (B, D), t (B,) -> rho (B,)."""
        if x.dim() == 2:
            x = x[:, None, :]
        b, length, d = x.shape
        h = self.config.horizon
        if d != self.config.transition_dim or length < h:
            raise ValueError(
                f"RewardMLP expects (B, H>={h}, {self.config.transition_dim}) inputs, got {tuple(x.shape)}"
            )
        windows = x.unfold(1, h, 1).transpose(2, 3).reshape(b, length - h + 1, h * d)  # (B, W, h*D)
        temb = self.time_embed(self.time_proj(t.reshape(b)).to(x.dtype))  # (B, E)
        temb = temb[:, None, :].expand(b, windows.shape[1], temb.shape[-1])
        return self.mlp(torch.cat([windows, temb], dim=-1)).squeeze(-1).mean(dim=1)
