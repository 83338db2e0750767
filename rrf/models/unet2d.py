"""2-D UNet encoder reward for image latents (the paper's Stable Diffusion reward, Table 3)."""

from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.resnet import ResnetBlock2D
from torch import Tensor, nn


class LatentRewardEncoder(ModelMixin, ConfigMixin):
    """The down half of a diffusers UNet2D (ResNet blocks with time embedding), pooled to a scalar.

    ``dims`` are the channel widths per resolution (paper: (32, 64, 128, 256)); each level but the
    last halves the spatial size, so SD latents of 64x64 end at 8x8 and toy latents of 8x8 at 1x1.
    """

    @register_to_config
    def __init__(
        self,
        in_channels: int = 4,
        dims: tuple[int, ...] = (32, 64, 128, 256),
        layers_per_level: int = 1,
        time_embed_dim: int = 128,
        norm_groups: int = 8,
    ):
        super().__init__()
        self.time_proj = Timesteps(dims[0], flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embed = TimestepEmbedding(dims[0], time_embed_dim)
        self.conv_in = nn.Conv2d(in_channels, dims[0], kernel_size=3, padding=1)
        self.levels = nn.ModuleList()
        width = dims[0]
        for i, dim in enumerate(dims):
            blocks: list[nn.Module] = []
            for _ in range(layers_per_level):
                blocks.append(
                    ResnetBlock2D(in_channels=width, out_channels=dim, temb_channels=time_embed_dim, groups=norm_groups)
                )
                width = dim
            level = nn.ModuleDict({"resnets": nn.ModuleList(blocks)})
            if i < len(dims) - 1:
                level["down"] = nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1)
            self.levels.append(level)
        self.norm_out = nn.GroupNorm(norm_groups, width)
        self.act = nn.SiLU()
        self.head = nn.Linear(width, 1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, C, H, W), t (B,) -> rho (B,)."""
        if x.dim() != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"LatentRewardEncoder expects (B, {self.config.in_channels}, H, W) latents, got {tuple(x.shape)}"
            )
        temb = self.time_embed(self.time_proj(t.reshape(x.shape[0])).to(x.dtype))
        h = self.conv_in(x)
        for level in self.levels:
            for block in level["resnets"]:
                h = block(h, temb)
            if "down" in level:
                h = level["down"](h)
        h = self.act(self.norm_out(h)).mean(dim=(2, 3))  # (B, C)
        return self.head(h).squeeze(-1)
