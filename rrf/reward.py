"""``RelativeReward``: a reward network plus the input scaling it was trained with, saved as one directory.

Layout of a saved reward (mirrors diffusers' ``save_pretrained``)::

    reward/
      config.json                           network class and constructor arguments
      diffusion_pytorch_model.safetensors   network weights
      normalizer.json, normalizer.safetensors       (only if an input normaliser is attached)
      output_scale.json, output_scale.safetensors   (only if a per-timestep output scale is attached)

``forward`` takes *raw* states (latents, trajectories) and returns rho in the units of the target, so
callers never scale by hand and ``grad_x rho`` is the gradient in the space the diffusion models step in.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rrf.errors import UserError
from rrf.losses import reward_gradient
from rrf.models import REWARD_MODELS
from rrf.normalizers import MinMaxNormalizer, TimestepScale, TimestepStandardScaler

Normalizer = MinMaxNormalizer | TimestepStandardScaler


def _normalizer_config(norm: Normalizer) -> dict:
    if isinstance(norm, TimestepStandardScaler):
        return {"type": "TimestepStandardScaler", "timesteps": norm.timesteps.tolist(), "shape": list(norm.mean.shape[1:])}
    return {"type": "MinMaxNormalizer", "dim": int(norm.mins.shape[0])}


def _build_normalizer(cfg: dict) -> Normalizer:
    if cfg["type"] == "TimestepStandardScaler":
        return TimestepStandardScaler(cfg["timesteps"], cfg["shape"])
    if cfg["type"] == "MinMaxNormalizer":
        return MinMaxNormalizer(cfg["dim"])
    raise UserError(f"unknown normaliser type {cfg['type']!r} in normalizer.json")


class RelativeReward(nn.Module):
    """``rho(x, t) = scale_t * net(normalize(x, t), t)``; the normaliser and the scale are optional."""

    def __init__(self, net: nn.Module, normalizer: Normalizer | None = None, output_scale: TimestepScale | None = None):
        super().__init__()
        self.net = net
        self.normalizer = normalizer
        self.output_scale = output_scale

    def loss_weight(self, t: Tensor) -> Tensor | None:
        """``1 / scale_t^2``: makes the alignment loss of every timestep count at unit scale."""
        return None if self.output_scale is None else self.output_scale(t).pow(-2)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """x (B, ...) raw states, t (B,) timesteps -> rho (B,)."""
        t = t.reshape(-1).expand(x.shape[0]) if t.numel() == 1 else t
        if isinstance(self.normalizer, TimestepStandardScaler):
            x = self.normalizer.normalize(x, t)
        elif isinstance(self.normalizer, MinMaxNormalizer):
            x = self.normalizer.normalize(x)
        rho = self.net(x, t)
        return rho if self.output_scale is None else rho * self.output_scale(t).to(rho.dtype)

    def gradient(self, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """``(rho, grad_x rho)`` without keeping a graph (for guidance and evaluation)."""
        rho, grad = reward_gradient(self, x, t, create_graph=False)
        return rho.detach(), grad.detach()

    def save_pretrained(self, path: str | Path) -> None:
        path = Path(path)
        self.net.save_pretrained(path)
        if self.normalizer is not None:
            (path / "normalizer.json").write_text(json.dumps(_normalizer_config(self.normalizer), indent=2))
            save_file({k: v.contiguous() for k, v in self.normalizer.state_dict().items()}, path / "normalizer.safetensors")
        if self.output_scale is not None:
            (path / "output_scale.json").write_text(json.dumps({"timesteps": self.output_scale.timesteps.tolist()}))
            save_file(self.output_scale.state_dict(), path / "output_scale.safetensors")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> RelativeReward:
        path = Path(path)
        config_file = path / "config.json"
        if not config_file.is_file():
            raise UserError(f"no reward model at {path} (config.json missing); pass the directory written by `fit`")
        name = json.loads(config_file.read_text()).get("_class_name")
        if name not in REWARD_MODELS:
            raise UserError(f"{config_file} names reward class {name!r}; known: {', '.join(REWARD_MODELS)}")
        net = REWARD_MODELS[name].from_pretrained(path)
        normalizer = None
        if (path / "normalizer.json").is_file():
            normalizer = _build_normalizer(json.loads((path / "normalizer.json").read_text()))
            normalizer.load_state_dict(load_file(path / "normalizer.safetensors"))
        output_scale = None
        if (path / "output_scale.json").is_file():
            output_scale = TimestepScale(json.loads((path / "output_scale.json").read_text())["timesteps"])
            output_scale.load_state_dict(load_file(path / "output_scale.safetensors"))
        return cls(net, normalizer, output_scale).to(device).eval()
