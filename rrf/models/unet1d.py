"""1-D temporal UNet encoder reward (Diffuser's ValueFunction shape; the paper's locomotion reward)."""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.downsampling import Downsample1D
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResidualTemporalBlock1D
from torch import Tensor, nn


class TemporalRewardEncoder(ModelMixin, ConfigMixin):
    """Residual temporal conv blocks, halving the horizon between levels, pooled to one scalar.

    ``dims`` are the channel widths of the levels (paper Table 3: (64, 64, 128, 128)). The horizon is
    pooled by a mean over time at the end, so any horizon >= 1 works; downsampling stops once it
    reaches length 1.
    """

    @register_to_config
    def __init__(
        self,
        transition_dim: int,
        dims: tuple[int, ...] = (64, 64, 128, 128),
        time_embed_dim: int = 32,
        kernel_size: int = 5,
    ):
        super().__init__()
        self.time_proj = Timesteps(time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(time_embed_dim, time_embed_dim)
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        width = transition_dim
        for dim in dims:
            self.blocks.append(ResidualTemporalBlock1D(width, dim, time_embed_dim, kernel_size=kernel_size))
            self.downs.append(Downsample1D(dim))
            width = dim
        self.head = nn.Sequential(nn.Linear(width + time_embed_dim, width // 2), nn.Mish(), nn.Linear(width // 2, 1))

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, H, D), t (B,) -> rho (B,)."""
        if x.dim() != 3 or x.shape[-1] != self.config.transition_dim:
            raise ValueError(
                f"TemporalRewardEncoder expects (B, H, {self.config.transition_dim}) inputs, got {tuple(x.shape)}"
            )
        temb = self.time_embed(self.time_proj(t.reshape(x.shape[0])).to(x.dtype))
        h = x.transpose(1, 2)  # (B, D, H)
        for block, down in zip(self.blocks, self.downs, strict=True):
            h = block(h, temb)
            if h.shape[-1] > 1:
                h = down(h)
        pooled = h.mean(dim=-1)  # (B, C)
        return self.head(torch.cat([pooled, temb], dim=-1)).squeeze(-1)
