"""Reward networks: ``rho_theta(x_t, t) -> scalar`` per sample, one architecture per file.

Each is a diffusers ``ModelMixin`` + ``ConfigMixin``, so ``save_pretrained`` writes ``config.json``
and safetensors weights and ``from_pretrained`` rebuilds the network from the directory alone.
"""

from rrf.models.mlp import RewardMLP
from rrf.models.unet1d import TemporalRewardEncoder
from rrf.models.unet2d import LatentRewardEncoder

REWARD_MODELS = {cls.__name__: cls for cls in (RewardMLP, TemporalRewardEncoder, LatentRewardEncoder)}

__all__ = ["REWARD_MODELS", "LatentRewardEncoder", "RewardMLP", "TemporalRewardEncoder"]
