"""Input normalisers, as ``nn.Module`` buffers so they travel inside a reward's safetensors file.

* ``MinMaxNormalizer``: per-coordinate min-max to [-1, 1] over a clean dataset (Diffuser convention
  for trajectories).
* ``TimestepStandardScaler``: per diffusion timestep *and* per coordinate standard scaling (the
  paper's scaling of Stable Diffusion latents), fitted in one streaming pass by ``StreamingMoments``.
* ``TimestepScale``: one positive scalar per timestep, the RMS of the regression target there.
  The one-step differences ``h_t`` shrink by orders of magnitude toward t = 0; a reward that outputs
  ``scale_t * net(x, t)`` lets the network work at unit scale at every t instead of having its
  smallest timesteps drowned by leakage from the largest.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from rrf.errors import UserError


class MinMaxNormalizer(nn.Module):
    """Maps each coordinate (last dim) of the fitted data linearly onto [-1, 1]."""

    def __init__(self, dim: int):
        super().__init__()
        self.register_buffer("mins", torch.zeros(dim))
        self.register_buffer("maxs", torch.ones(dim))

    @classmethod
    def fit(cls, data: Tensor) -> MinMaxNormalizer:
        """``data`` (..., D): every leading index is one sample."""
        flat = data.reshape(-1, data.shape[-1]).float()
        norm = cls(flat.shape[-1])
        norm.mins.copy_(flat.min(dim=0).values)
        norm.maxs.copy_(flat.max(dim=0).values)
        return norm

    def _span(self) -> Tensor:
        # A constant coordinate would divide by zero; map it to 0 instead.
        return (self.maxs - self.mins).clamp_min(1e-8)

    def normalize(self, x: Tensor) -> Tensor:
        return 2.0 * (x - self.mins) / self._span() - 1.0

    def unnormalize(self, x: Tensor) -> Tensor:
        return (x + 1.0) / 2.0 * self._span() + self.mins


class StreamingMoments:
    """Mean and variance per (timestep, coordinate) in one pass, mergeable across shards or processes.

    Keeps ``count``, ``mean`` and ``m2`` (sum of squared deviations) in float64 and merges batches with
    Chan et al.'s parallel update, which stays accurate when the mean is large relative to the spread
    (the naive ``E[x^2] - E[x]^2`` loses every digit there).
    """

    def __init__(self, timesteps: Sequence[int], shape: Sequence[int]):
        self.timesteps = torch.as_tensor(list(timesteps), dtype=torch.long)
        if len(set(self.timesteps.tolist())) != len(self.timesteps):
            raise ValueError("timesteps must be distinct")
        self.shape = tuple(shape)
        k = len(self.timesteps)
        self.count = torch.zeros(k, dtype=torch.float64)
        self.mean = torch.zeros(k, *self.shape, dtype=torch.float64)
        self.m2 = torch.zeros(k, *self.shape, dtype=torch.float64)

    def index(self, t: Tensor) -> Tensor:
        return timestep_index(self.timesteps, t)

    def update(self, x: Tensor, t: Tensor) -> None:
        """Add samples ``x`` (B, *shape) taken at timesteps ``t`` (B,)."""
        if tuple(x.shape[1:]) != self.shape:
            raise UserError(f"sample shape {tuple(x.shape[1:])} does not match the scaler's {self.shape}")
        idx = self.index(t.cpu())
        x = x.detach().cpu().double()
        for k in idx.unique().tolist():
            xs = x[idx == k]
            n_b = float(xs.shape[0])
            mean_b = xs.mean(dim=0)
            m2_b = ((xs - mean_b) ** 2).sum(dim=0)
            self._merge_into(k, n_b, mean_b, m2_b)

    def _merge_into(self, k: int, n_b: float, mean_b: Tensor, m2_b: Tensor) -> None:
        n_a = float(self.count[k])
        n = n_a + n_b
        delta = mean_b - self.mean[k]
        self.mean[k] += delta * (n_b / n)
        self.m2[k] += m2_b + delta**2 * (n_a * n_b / n)
        self.count[k] = n

    def merge(self, other: StreamingMoments) -> None:
        """Fold another accumulator (same timesteps and shape) into this one."""
        if not torch.equal(self.timesteps, other.timesteps) or self.shape != other.shape:
            raise ValueError("cannot merge moments over different timesteps or shapes")
        for k in range(len(self.timesteps)):
            if other.count[k] > 0:
                self._merge_into(k, float(other.count[k]), other.mean[k], other.m2[k])

    def variance(self) -> Tensor:
        """Population variance per (timestep, coordinate)."""
        return self.m2 / self.count.clamp_min(1).view(-1, *([1] * len(self.shape)))

    def to_scaler(self, eps: float = 1e-6) -> TimestepStandardScaler:
        empty = (self.count == 0).nonzero().flatten().tolist()
        if empty:
            missing = [int(self.timesteps[i]) for i in empty]
            raise UserError(f"no samples were seen for timesteps {missing[:5]}; cannot fit a scaler")
        scaler = TimestepStandardScaler(self.timesteps.tolist(), self.shape)
        scaler.mean.copy_(self.mean.float())
        scaler.std.copy_(self.variance().sqrt().clamp_min(eps).float())
        return scaler


def timestep_index(timesteps: Tensor, t: Tensor) -> Tensor:
    """Position of each ``t`` in ``timesteps``; unknown timesteps are an error, not a silent neighbour."""
    t = t.reshape(-1).to(timesteps.device).long()
    match = t[:, None] == timesteps[None, :]
    found = match.any(dim=1)
    if not bool(found.all()):
        bad = t[~found][:5].tolist()
        raise UserError(
            f"timesteps {bad} were not seen when the scaler was fitted "
            f"(it knows {timesteps.min().item()}..{timesteps.max().item()}, {len(timesteps)} values); "
            "score with the scheduler settings the reward was trained with"
        )
    return match.float().argmax(dim=1)


class TimestepStandardScaler(nn.Module):
    """``(x - mean[t]) / std[t]`` with one mean and std per diffusion timestep and coordinate."""

    def __init__(self, timesteps: Sequence[int], shape: Sequence[int]):
        super().__init__()
        self.register_buffer("timesteps", torch.as_tensor(list(timesteps), dtype=torch.long))
        self.register_buffer("mean", torch.zeros(len(timesteps), *shape))
        self.register_buffer("std", torch.ones(len(timesteps), *shape))

    def normalize(self, x: Tensor, t: Tensor) -> Tensor:
        idx = timestep_index(self.timesteps, t)
        return (x - self.mean[idx].to(x.dtype)) / self.std[idx].to(x.dtype)

    def unnormalize(self, x: Tensor, t: Tensor) -> Tensor:
        idx = timestep_index(self.timesteps, t)
        return x * self.std[idx].to(x.dtype) + self.mean[idx].to(x.dtype)


class TimestepScale(nn.Module):
    """A positive scalar per diffusion timestep (``scale[t]``), e.g. the target RMS ``sqrt(E[h_t^2])``."""

    def __init__(self, timesteps: Sequence[int]):
        super().__init__()
        self.register_buffer("timesteps", torch.as_tensor(list(timesteps), dtype=torch.long))
        self.register_buffer("scale", torch.ones(len(timesteps)))

    @classmethod
    def from_moments(cls, moments: StreamingMoments, eps: float = 1e-30) -> TimestepScale:
        """From moments of per-sample mean squares (shape ()): ``scale_t = sqrt(E[mean_i h_i^2])``."""
        if moments.shape != ():
            raise ValueError("TimestepScale needs moments of a scalar per sample (shape ())")
        if bool((moments.count == 0).any()):
            raise UserError("no samples were seen for some timesteps; cannot fit the target scale")
        scale = cls(moments.timesteps.tolist())
        scale.scale.copy_(moments.mean.clamp_min(eps).sqrt().float())
        return scale

    @classmethod
    def fit(cls, t: Tensor, target: Tensor) -> TimestepScale:
        """In-memory version of ``from_moments`` for targets ``target`` (N, ...) at timesteps ``t`` (N,)."""
        moments = StreamingMoments(t.unique().tolist(), ())
        moments.update(target.flatten(1).double().pow(2).mean(dim=1), t)
        return cls.from_moments(moments)

    def forward(self, t: Tensor) -> Tensor:
        """scale (B,) for timesteps t (B,)."""
        return self.scale[timestep_index(self.timesteps, t)]
