"""Algorithm 2 of the paper for models that fit in memory: roll out one model, record both models' steps.

For ``follow`` in {base, expert}: start from ``x_T``; at every timestep compute the base's and the
expert's next state from the *same* ``x_{t}``, then continue from the followed model's one. Each
trajectory is kept once (``states``) and only the non-followed step separately (``other``), so a
tuple ``(t, x_t, base_next, expert_next)`` costs two states, not three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Follow = Literal["base", "expert"]
PairStep = Callable[[Tensor, int], tuple[Tensor, Tensor]]


@dataclass
class PairRollout:
    """Trajectories of one follower. Shapes: S steps, B trajectories, state shape (...)."""

    follow: Follow
    timesteps: Tensor  # (S,) timestep of the state each step starts from
    states: Tensor  # (S + 1, B, ...) x_T, ..., x_0 of the followed model
    other: Tensor  # (S, B, ...) the non-followed model's next state from states[s]

    def tuples(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Flattened ``(t, x_t, base_next, expert_next)`` over all steps and trajectories."""
        s, b = self.other.shape[:2]
        followed = self.states[1:]
        base_next, expert_next = (followed, self.other) if self.follow == "base" else (self.other, followed)
        t = self.timesteps[:, None].expand(s, b).reshape(-1)
        flat = lambda a: a.reshape(s * b, *a.shape[2:])  # noqa: E731
        return t, flat(self.states[:-1]), flat(base_next), flat(expert_next)

    @property
    def final(self) -> Tensor:
        return self.states[-1]


@torch.no_grad()
def rollout_pair(pair_step: PairStep, x_T: Tensor, timesteps: Tensor, follow: Follow) -> PairRollout:
    """``pair_step(x, t) -> (base_next, expert_next)`` from the same ``x``; follow one of them."""
    if follow not in ("base", "expert"):
        raise ValueError(f"follow must be 'base' or 'expert', not {follow!r}")
    states, other = [x_T], []
    x = x_T
    for t in timesteps.tolist():
        base_next, expert_next = pair_step(x, t)
        x, off = (base_next, expert_next) if follow == "base" else (expert_next, base_next)
        states.append(x)
        other.append(off)
    return PairRollout(follow, timesteps.clone(), torch.stack(states), torch.stack(other))
