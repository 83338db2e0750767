"""Denoisers over state-action windows: ``eps_or_x0 = net(x_t, t)`` with x_t of shape (B, H, D).

* ``TemporalUnet``: Diffuser's temporal UNet (residual 1-D conv blocks with Mish, GroupNorm and a
  time embedding, down- and up-sampling the horizon), built from diffusers' ``UNet1DModel`` in the
  configuration diffusers uses for its port of Diffuser. The paper's planner.
* ``MLPDenoiser``: an MLP over the flattened window. For the short windows used here it is several
  times faster on CPU than the UNet (``bench/maze.py`` measures both) at the cost of the UNet's
  translation-equivariance prior; it is the default of the CPU profiles.

Both are diffusers ``ModelMixin`` + ``ConfigMixin`` (``save_pretrained`` / ``from_pretrained``).
"""

from __future__ import annotations

import torch
from diffusers import UNet1DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


def _check_input(model: nn.Module, x: Tensor) -> None:
    cfg = model.config
    if x.dim() != 3 or x.shape[1:] != (cfg.horizon, cfg.transition_dim):
        raise ValueError(f"{type(model).__name__} expects (B, {cfg.horizon}, {cfg.transition_dim}) windows, "
                         f"got {tuple(x.shape)}")


class TemporalUnet(ModelMixin, ConfigMixin):
    """Diffuser's ``TemporalUnet(horizon, transition_dim, dim_mults)`` via diffusers' ``UNet1DModel``.

    ``dims`` are the channel widths of the levels (Diffuser's ``dim * dim_mults``); the horizon is
    halved between levels, so it must be divisible by ``2 ** (len(dims) - 1)``.
    """

    @register_to_config
    def __init__(self, transition_dim: int, horizon: int, dims: tuple[int, ...] = (32, 64, 128, 256)):
        super().__init__()
        if horizon % 2 ** (len(dims) - 1):
            raise ValueError(f"TemporalUnet with {len(dims)} levels needs a horizon divisible by "
                             f"{2 ** (len(dims) - 1)}, not {horizon}")
        self.unet = UNet1DModel(
            sample_size=horizon, in_channels=transition_dim, out_channels=transition_dim, extra_in_channels=0,
            time_embedding_type="positional", flip_sin_to_cos=False, freq_shift=1, use_timestep_embedding=True,
            down_block_types=("DownResnetBlock1D",) * len(dims), up_block_types=("UpResnetBlock1D",) * (len(dims) - 1),
            mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", block_out_channels=tuple(dims),
            act_fn="mish", norm_num_groups=8, layers_per_block=1, downsample_each_block=False,
        )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, H, D), t (B,) -> (B, H, D)."""
        _check_input(self, x)
        return self.unet(x.transpose(1, 2), t).sample.transpose(1, 2)


class MLPDenoiser(ModelMixin, ConfigMixin):
    """Flattened window and a sinusoidal time embedding through ``hidden_dims`` Mish layers."""

    @register_to_config
    def __init__(self, transition_dim: int, horizon: int, hidden_dims: tuple[int, ...] = (512, 512, 512),
                 time_embed_dim: int = 64):
        super().__init__()
        self.time_proj = Timesteps(time_embed_dim, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(time_embed_dim, time_embed_dim)
        layers: list[nn.Module] = []
        width = horizon * transition_dim + time_embed_dim
        for h in hidden_dims:
            layers += [nn.Linear(width, h), nn.Mish()]
            width = h
        layers.append(nn.Linear(width, horizon * transition_dim))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, H, D), t (B,) -> (B, H, D)."""
        _check_input(self, x)
        temb = self.time_embed(self.time_proj(t.reshape(-1)).to(x.dtype))
        return self.mlp(torch.cat([x.flatten(1), temb], dim=1)).view_as(x)


DENOISERS = {cls.__name__: cls for cls in (TemporalUnet, MLPDenoiser)}
