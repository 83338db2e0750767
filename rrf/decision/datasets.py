"""Offline trajectory data: one in-memory format, window sampling, and the file formats users have.

* ``Trajectories``: flat per-step arrays plus episode lengths (the D4RL layout, without the flags).
* ``WindowDataset``: every length-``horizon`` window that lies inside one episode, as (H, obs + act)
  transitions (the Diffuser ``SequenceDataset`` without padding); ``batch(step)`` is a pure function
  of the step, which the shared trainer needs for exact resume.
* ``save_d4rl`` / ``load_d4rl``: D4RL-format HDF5 files (``observations``, ``actions``, ``rewards``,
  ``terminals``, ``timeouts``, optional ``infos/goal``). Our generated data is cached in this format,
  so a user's real D4RL file and ours go through the same loader.
* ``load_minari``: Minari datasets (``minari`` is optional and imported only here).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rrf.errors import UserError


@dataclass
class Trajectories:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    episode_lengths: np.ndarray  # (E,) int64, sums to N
    goals: np.ndarray | None = None  # (N, goal_dim) goal pursued at each step, when the data has one

    def __post_init__(self) -> None:
        n = len(self.observations)
        if len(self.actions) != n or int(self.episode_lengths.sum()) != n:
            raise UserError(f"inconsistent trajectories: {n} observations, {len(self.actions)} actions, "
                            f"episode lengths summing to {int(self.episode_lengths.sum())}; check the data file")
        if self.goals is not None and len(self.goals) != n:
            raise UserError(f"inconsistent trajectories: {len(self.goals)} goals for {n} steps; check the data file")

    @property
    def transitions(self) -> np.ndarray:
        """(N, obs_dim + act_dim): each step's observation followed by its action."""
        return np.concatenate([self.observations, self.actions], axis=1).astype(np.float32)

    @property
    def episode_starts(self) -> np.ndarray:
        return np.concatenate([[0], np.cumsum(self.episode_lengths)[:-1]]).astype(np.int64)

    def select_episodes(self, index: np.ndarray) -> Trajectories:
        """The episodes ``index`` (in that order) as a new ``Trajectories``."""
        starts, lengths = self.episode_starts[index], self.episode_lengths[index]
        steps = np.concatenate([np.arange(s, s + n) for s, n in zip(starts, lengths, strict=True)])
        return Trajectories(self.observations[steps], self.actions[steps], lengths.copy(),
                            None if self.goals is None else self.goals[steps])

    def window_starts(self, horizon: int, stride: int = 1) -> np.ndarray:
        """Flat start index of the windows of ``horizon`` steps inside one episode, every ``stride`` steps."""
        starts = [s + np.arange(0, n - horizon + 1, stride)
                  for s, n in zip(self.episode_starts, self.episode_lengths, strict=True) if n >= horizon]
        if not starts:
            raise UserError(f"no episode has {horizon} steps (longest: {int(self.episode_lengths.max())}); "
                            "use a shorter horizon or longer episodes")
        return np.concatenate(starts)


class WindowDataset:
    """The length-``horizon`` windows of ``Trajectories`` (every ``stride`` steps of each episode) as
    (H, obs_dim + act_dim) float tensors."""

    def __init__(self, trajectories: Trajectories, horizon: int, batch_size: int, seed: int = 0, stride: int = 1):
        self.data = torch.from_numpy(trajectories.transitions)
        self.starts = torch.from_numpy(trajectories.window_starts(horizon, stride))
        self.horizon, self.batch_size, self.seed = horizon, batch_size, seed

    def __len__(self) -> int:
        return len(self.starts)

    def windows(self, index: Tensor) -> Tensor:
        """Windows number ``index`` (B,) -> (B, H, D)."""
        steps = self.starts[index][:, None] + torch.arange(self.horizon)
        return self.data[steps]

    def batch(self, step: int) -> Tensor:
        """A random batch that depends on ``(seed, step)`` only."""
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + step)
        return self.windows(torch.randint(len(self.starts), (self.batch_size,), generator=gen))


# -- files ---------------------------------------------------------------------------------------------


def save_d4rl(path: str | Path, data: Trajectories, attrs: dict[str, str] | None = None) -> None:
    """Write ``data`` as a D4RL-format HDF5 file (atomically: temp file + rename)."""
    import h5py

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(data.observations)
    timeouts = np.zeros(n, dtype=bool)
    timeouts[np.cumsum(data.episode_lengths) - 1] = True
    tmp = path.with_name(f".{path.name}.tmp")
    with h5py.File(tmp, "w") as f:
        f["observations"] = data.observations
        f["actions"] = data.actions
        f["rewards"] = np.zeros(n, dtype=np.float32)
        f["terminals"] = np.zeros(n, dtype=bool)
        f["timeouts"] = timeouts
        if data.goals is not None:
            f["infos/goal"] = data.goals
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
    os.replace(tmp, path)


def load_d4rl(path: str | Path) -> Trajectories:
    """Read a D4RL-format HDF5 file; episodes end where ``terminals`` or ``timeouts`` is set."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise UserError(f"no dataset file at {path}; pass the path of a D4RL-format .hdf5 file")
    try:
        with h5py.File(path, "r") as f:
            missing = [k for k in ("observations", "actions") if k not in f]
            if missing:
                raise UserError(f"{path} lacks the D4RL key(s) {', '.join(missing)}; is it a D4RL dataset?")
            obs = np.asarray(f["observations"], dtype=np.float32)
            act = np.asarray(f["actions"], dtype=np.float32)
            n = len(obs)
            ends = np.zeros(n, dtype=bool)
            for key in ("terminals", "timeouts"):
                if key in f:
                    ends |= np.asarray(f[key], dtype=bool)
            goals = np.asarray(f["infos/goal"], dtype=np.float32) if "infos/goal" in f else None
    except OSError as exc:
        raise UserError(f"cannot read {path} as HDF5 ({exc}); the file may be truncated, download it again") from None
    ends[-1] = True
    lengths = np.diff(np.concatenate([[-1], np.flatnonzero(ends)]))
    return Trajectories(obs, act, lengths.astype(np.int64), goals)


def load_minari(dataset_id: str) -> Trajectories:
    """Read a locally available Minari dataset (e.g. ``D4RL/pointmaze/large-v2``).

    Dict observations (PointMaze: ``observation``, ``achieved_goal``, ``desired_goal``) keep
    ``observation`` and take ``desired_goal`` as the goal. Minari stores one more observation than
    actions per episode (the final state); it is dropped so that steps pair up.
    """
    try:
        import minari
    except ImportError:
        raise UserError("reading Minari datasets needs the `minari` package: pip install 'rrf-audit[minari]'") from None
    try:
        dataset = minari.load_dataset(dataset_id)
    except Exception as exc:  # noqa: BLE001 - minari raises several types for "not available locally"
        raise UserError(f"Minari dataset {dataset_id!r} is not available locally ({exc}); "
                        f"download it first with `minari download {dataset_id}`") from None
    obs, act, goals, lengths = [], [], [], []
    for episode in dataset.iterate_episodes():
        o = episode.observations
        n = len(episode.actions)
        if isinstance(o, dict):
            goals.append(np.asarray(o["desired_goal"][:n], dtype=np.float32))
            o = o["observation"]
        obs.append(np.asarray(o[:n], dtype=np.float32))
        act.append(np.asarray(episode.actions, dtype=np.float32))
        lengths.append(n)
    if not lengths:
        raise UserError(f"Minari dataset {dataset_id!r} has no episodes")
    return Trajectories(np.concatenate(obs), np.concatenate(act), np.asarray(lengths, dtype=np.int64),
                        np.concatenate(goals) if goals else None)
