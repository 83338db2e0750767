"""MuJoCo locomotion (gymnasium HalfCheetah-v5, Hopper-v5, Walker2d-v5) as presets, stepped in batches.

* ``LocomotionEnv``: one environment as plain data: the gymnasium id and XML, frame skip, the reward
  and termination terms of its ``step`` (v5 defaults) and D4RL's reference returns for normalised
  scores. The three environments are three values of it, not three code paths.
* ``MujocoBatch``: ``n`` copies of one environment, each its own ``MjData`` stepped with
  ``mujoco.mj_step`` exactly as gymnasium's ``MujocoEnv.do_simulation`` does, without gymnasium's
  wrappers and checks per call (``bench/locomotion.py`` measures the speed-up; ``tests`` check that
  observations, rewards and terminations are identical to ``gym.make(env.gym_id)``). Reset noise
  is drawn like gymnasium's ``reset(seed=s)``, so copy ``i`` with seed ``s`` starts where gymnasium does.
* ``rollout``: closed-loop episodes of a batched policy ``(obs, index) -> actions`` (an ARS policy
  per copy, or a planner that replans every step), returned as ``Episodes``.
* ``save_episodes`` / ``load_episodes``: ``Episodes`` as D4RL-format HDF5 (observations, actions,
  rewards, terminals, timeouts), through ``rrf.decision.datasets``; a user's D4RL locomotion file
  (medium-replay, expert) loads the same way, and ``load_minari_episodes`` reads Minari datasets.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rrf.decision.datasets import Trajectories, load_d4rl, load_minari, save_d4rl
from rrf.errors import UserError

Policy = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (obs (B, obs_dim), env index (B,)) -> actions (B, act_dim)


@dataclass(frozen=True)
class LocomotionEnv:
    """One gymnasium MuJoCo locomotion environment (``*-v5`` default arguments) and its D4RL references."""

    name: str
    gym_id: str
    xml_file: str
    frame_skip: int
    ctrl_cost_weight: float
    reset_noise_scale: float
    ref_random: float
    """D4RL's reference return of a random policy (1000 steps)."""
    ref_expert: float
    """D4RL's reference return of an expert policy (1000 steps)."""
    reset_qvel_gaussian: bool = False
    """HalfCheetah draws initial velocities from a normal, the others from a uniform."""
    healthy_reward: float = 0.0
    healthy_z: tuple[float, float] | None = None
    healthy_angle: tuple[float, float] | None = None
    healthy_state: tuple[float, float] | None = None
    """Bounds on ``state_vector()[2:]`` (Hopper only)."""
    velocity_clip: float | None = None
    """Observed joint velocities are clipped to +-this (Hopper, Walker2d)."""
    max_episode_steps: int = 1000

    @property
    def terminates(self) -> bool:
        return self.healthy_z is not None

    def normalized_score(self, returns: np.ndarray, episode_steps: int | None = None) -> np.ndarray:
        """D4RL-normalised score ``100 (R - R_random) / (R_expert - R_random)``.

        The references are 1000-step returns; for shorter episodes (the quick profile) they are
        scaled by ``episode_steps / 1000``, the same per-step rates.
        """
        k = (episode_steps or self.max_episode_steps) / 1000.0
        return 100.0 * (np.asarray(returns, dtype=np.float64) - k * self.ref_random) / (k * (self.ref_expert - self.ref_random))


ENVS: dict[str, LocomotionEnv] = {
    "halfcheetah": LocomotionEnv(
        "halfcheetah", "HalfCheetah-v5", "half_cheetah.xml", frame_skip=5, ctrl_cost_weight=0.1, reset_noise_scale=0.1,
        ref_random=-280.178953, ref_expert=12135.0, reset_qvel_gaussian=True),
    "hopper": LocomotionEnv(
        "hopper", "Hopper-v5", "hopper.xml", frame_skip=4, ctrl_cost_weight=1e-3, reset_noise_scale=5e-3,
        ref_random=-20.272305, ref_expert=3234.3, healthy_reward=1.0, healthy_z=(0.7, float("inf")),
        healthy_angle=(-0.2, 0.2), healthy_state=(-100.0, 100.0), velocity_clip=10.0),
    "walker2d": LocomotionEnv(
        "walker2d", "Walker2d-v5", "walker2d_v5.xml", frame_skip=4, ctrl_cost_weight=1e-3, reset_noise_scale=5e-3,
        ref_random=1.629008, ref_expert=4592.3, healthy_reward=1.0, healthy_z=(0.8, 2.0), healthy_angle=(-1.0, 1.0),
        velocity_clip=10.0),
}


def get_env(name: str) -> LocomotionEnv:
    if name not in ENVS:
        raise UserError(f"unknown locomotion environment {name!r}; choose from {', '.join(ENVS)}")
    return ENVS[name]


def make_gym_env(env: LocomotionEnv):
    """The gymnasium environment the preset mirrors (for checks and for users who want the wrappers)."""
    import gymnasium as gym

    return gym.make(env.gym_id)


def load_model(env: LocomotionEnv):
    """The ``MjModel`` gymnasium builds for ``env`` (same XML file from the gymnasium package).

    MuJoCo 4 deprecates the compiler's ``settotalmass`` (HalfCheetah's XML has it) and prints a warning
    at every compile, i.e. for every batch of environments. The attribute is applied as the warning
    advises, with ``mj_setTotalmass`` and ``mj_setConst``, which gives the same model to the bit
    (masses, inertias, derived constants and 1000 simulated steps compared).
    """
    import gymnasium
    import mujoco

    path = os.path.join(os.path.dirname(gymnasium.__file__), "envs", "mujoco", "assets", env.xml_file)
    with open(path) as f:
        xml = f.read()
    total = re.search(r'\s+settotalmass="([^"]+)"', xml)
    if total is None:
        return mujoco.MjModel.from_xml_path(path)
    model = mujoco.MjModel.from_xml_string(xml.replace(total.group(0), ""))
    mujoco.mj_setTotalmass(model, float(total.group(1)))
    mujoco.mj_setConst(model, mujoco.MjData(model))
    return model


@functools.cache
def _stepping_pool(threads: int) -> ThreadPoolExecutor:
    """One pool per thread count, shared by every batch (batches are made per chunk of episodes)."""
    return ThreadPoolExecutor(threads, thread_name_prefix="mj_step")


class MujocoBatch:
    """``n`` independent copies of ``env`` stepped by ``mj_step`` (one ``MjData`` each).

    ``threads`` > 1 steps disjoint copies on that many threads: ``mj_step`` releases the GIL, and each
    copy owns its ``MjData``, so the results are the same bytes whatever the thread count.
    """

    def __init__(self, env: LocomotionEnv, n: int, threads: int = 1):
        import mujoco

        self.env, self.n, self.threads = env, n, threads
        self._mj = mujoco
        self.model = load_model(env)
        self.datas = [mujoco.MjData(self.model) for _ in range(n)]
        self.init_qpos = self.datas[0].qpos.copy()
        self.init_qvel = self.datas[0].qvel.copy()
        self.dt = self.model.opt.timestep * env.frame_skip
        self.nq, self.nv, self.act_dim = self.model.nq, self.model.nv, self.model.nu
        self.obs_dim = self.nq - 1 + self.nv

    # -- state ---------------------------------------------------------------------------------------

    def _set_state(self, i: int, qpos: np.ndarray, qvel: np.ndarray) -> None:
        d = self.datas[i]
        self._mj.mj_resetData(self.model, d)
        d.qpos[:], d.qvel[:] = qpos, qvel
        self._mj.mj_forward(self.model, d)

    def reset(self, seeds: np.ndarray) -> np.ndarray:
        """Reset copy ``i`` as ``gym.make(env.gym_id).reset(seed=seeds[i])`` does; returns obs (n, obs_dim)."""
        s = self.env.reset_noise_scale
        for i, seed in enumerate(np.asarray(seeds).tolist()):
            rng = np.random.default_rng(seed)  # gymnasium's np_random: PCG64(SeedSequence(seed))
            qpos = self.init_qpos + rng.uniform(-s, s, self.nq)
            qvel = self.init_qvel + (s * rng.standard_normal(self.nv) if self.env.reset_qvel_gaussian
                                     else rng.uniform(-s, s, self.nv))
            self._set_state(i, qpos, qvel)
        return self.observe(np.arange(self.n))

    def set_observation(self, obs: np.ndarray, index: np.ndarray) -> None:
        """Place copies ``index`` in the state an observation shows (x = 0; dynamics ignore x).

        Exact for HalfCheetah up to the precision of ``obs``; for Hopper/Walker2d observed velocities
        are clipped, so a state with |qvel| > 10 is approximated.
        """
        k = self.nq - 1
        for o, i in zip(obs, np.asarray(index).tolist(), strict=True):
            self._set_state(i, np.concatenate([[0.0], o[:k]]), o[k:])

    def observe(self, index: np.ndarray) -> np.ndarray:
        out = np.empty((len(index), self.obs_dim))
        k = self.nq - 1
        for row, i in enumerate(np.asarray(index).tolist()):
            out[row, :k] = self.datas[i].qpos[1:]
            out[row, k:] = self.datas[i].qvel
        if self.env.velocity_clip is not None:
            np.clip(out[:, k:], -self.env.velocity_clip, self.env.velocity_clip, out=out[:, k:])
        return out

    def healthy(self, index: np.ndarray) -> np.ndarray:
        """gymnasium's ``is_healthy`` per copy (always True for environments without termination)."""
        env = self.env
        if not env.terminates:
            return np.ones(len(index), dtype=bool)
        qpos = np.stack([self.datas[i].qpos for i in np.asarray(index).tolist()])
        z, angle = qpos[:, 1], qpos[:, 2]
        ok = (env.healthy_z[0] < z) & (z < env.healthy_z[1])
        ok &= (env.healthy_angle[0] < angle) & (angle < env.healthy_angle[1])
        if env.healthy_state is not None:
            qvel = np.stack([self.datas[i].qvel for i in np.asarray(index).tolist()])
            state = np.concatenate([qpos[:, 2:], qvel], axis=1)
            ok &= np.all((env.healthy_state[0] < state) & (state < env.healthy_state[1]), axis=1)
        return ok

    # -- dynamics ------------------------------------------------------------------------------------

    def step(self, actions: np.ndarray, index: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply ``actions`` (B, act_dim) to copies ``index`` (B,); returns (obs, reward, terminated), each (B, ...).

        Reward = forward velocity + healthy bonus - ctrl cost, as gymnasium's ``step`` computes it
        (the ctrl cost sees the action as given; callers clip to the action space).
        """
        index = np.asarray(index)
        copies = index.tolist()
        if len(actions) != len(copies):
            raise ValueError(f"{len(actions)} actions for {len(copies)} copies")
        x_before = np.empty(len(copies))
        x_after = np.empty(len(copies))

        def advance(rows: range) -> None:
            for row in rows:
                d = self.datas[copies[row]]
                x_before[row] = d.qpos[0]
                d.ctrl[:] = actions[row]
                self._mj.mj_step(self.model, d, nstep=self.env.frame_skip)
                x_after[row] = d.qpos[0]

        if self.threads == 1:
            advance(range(len(copies)))
        else:
            list(_stepping_pool(self.threads).map(advance, [range(k, len(copies), self.threads)
                                                            for k in range(self.threads)]))
        healthy = self.healthy(index)
        reward = ((x_after - x_before) / self.dt + self.env.healthy_reward * healthy
                  - self.env.ctrl_cost_weight * np.square(actions).sum(axis=1))
        terminated = ~healthy if self.env.terminates else np.zeros(len(index), dtype=bool)
        return self.observe(index), reward, terminated


# -- episodes --------------------------------------------------------------------------------------------


@dataclass
class Episodes:
    """Trajectories with their per-step rewards and whether each episode ended by termination."""

    trajectories: Trajectories
    rewards: np.ndarray  # (N,)
    terminals: np.ndarray  # (N,) bool, True on the last step of an episode that fell

    @property
    def returns(self) -> np.ndarray:
        """(E,) undiscounted return of every episode."""
        ends = np.cumsum(self.trajectories.episode_lengths)
        return np.add.reduceat(self.rewards.astype(np.float64), ends - self.trajectories.episode_lengths)

    @property
    def lengths(self) -> np.ndarray:
        return self.trajectories.episode_lengths

    def select(self, index: np.ndarray) -> Episodes:
        traj = self.trajectories
        steps = np.concatenate([np.arange(s, s + n) for s, n in
                                zip(traj.episode_starts[index], traj.episode_lengths[index], strict=True)])
        return Episodes(traj.select_episodes(index), self.rewards[steps], self.terminals[steps])

    @staticmethod
    def concat(parts: list[Episodes]) -> Episodes:
        cat = np.concatenate
        return Episodes(
            Trajectories(cat([p.trajectories.observations for p in parts]), cat([p.trajectories.actions for p in parts]),
                         cat([p.trajectories.episode_lengths for p in parts])),
            cat([p.rewards for p in parts]), cat([p.terminals for p in parts]))

    def summary(self, env: LocomotionEnv, episode_steps: int) -> dict:
        r = self.returns
        return {"episodes": int(len(r)), "transitions": int(self.lengths.sum()), "return_mean": float(r.mean()),
                "return_std": float(r.std()), "return_min": float(r.min()), "return_max": float(r.max()),
                "score_mean": float(env.normalized_score(r, episode_steps).mean()),
                "mean_length": float(self.lengths.mean())}


def rollout(batch: MujocoBatch, policy: Policy, seeds: np.ndarray | None, episode_steps: int,
            on_step: Callable[[int], None] | None = None, start: np.ndarray | None = None) -> Episodes:
    """One closed-loop episode per copy of ``batch``, at most ``episode_steps`` long.

    Copies start from ``reset(seeds)`` or, with ``start`` (n, obs_dim), from those observations. The
    policy sees the observations of the copies still running and their indices; its actions are
    clipped to [-1, 1], the action space of all three environments.
    """
    n, steps = batch.n, episode_steps
    if len(start if seeds is None else seeds) != n:
        raise ValueError(f"{len(start if seeds is None else seeds)} episodes asked of a batch of {n}")
    obs_buf = np.zeros((n, steps, batch.obs_dim), dtype=np.float32)
    act_buf = np.zeros((n, steps, batch.act_dim), dtype=np.float32)
    rew_buf = np.zeros((n, steps))
    lengths = np.zeros(n, dtype=np.int64)
    fell = np.zeros(n, dtype=bool)
    if seeds is None:
        batch.set_observation(start, np.arange(n))
        obs = batch.observe(np.arange(n))
    else:
        obs = batch.reset(seeds)
    alive = np.arange(n)
    for s in range(steps):
        if len(alive) == 0:
            break
        actions = np.clip(np.asarray(policy(obs[alive], alive), dtype=np.float64), -1.0, 1.0)
        obs_buf[alive, s], act_buf[alive, s] = obs[alive], actions
        next_obs, reward, terminated = batch.step(actions, alive)
        rew_buf[alive, s] = reward
        obs[alive] = next_obs
        lengths[alive] += 1
        fell[alive[terminated]] = True
        alive = alive[~terminated]
        if on_step is not None:
            on_step(s + 1)
    valid = np.arange(steps)[None, :] < lengths[:, None]
    terminals = np.zeros((n, steps), dtype=bool)
    terminals[fell, lengths[fell] - 1] = True
    return Episodes(Trajectories(obs_buf[valid], act_buf[valid], lengths), rew_buf[valid], terminals[valid])


# -- files -------------------------------------------------------------------------------------------------


def save_episodes(path: str | Path, episodes: Episodes, attrs: dict[str, str] | None = None) -> None:
    """Write a D4RL-format HDF5 file with real rewards and terminals (atomically)."""
    import h5py

    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    save_d4rl(partial, episodes.trajectories, attrs)  # observations, actions, timeouts at episode ends
    with h5py.File(partial, "r+") as f:
        f["rewards"][...] = episodes.rewards.astype(np.float32)
        f["terminals"][...] = episodes.terminals
        f["timeouts"][...] = f["timeouts"][...] & ~episodes.terminals
    os.replace(partial, path)


def load_episodes(path: str | Path) -> Episodes:
    """Read a D4RL-format locomotion HDF5 file (ours or D4RL's medium-replay / expert files)."""
    import h5py

    trajectories = load_d4rl(path)
    with h5py.File(path, "r") as f:
        if "rewards" not in f:
            raise UserError(f"{path} has no `rewards`; a locomotion dataset needs them for the planner gate")
        rewards = np.asarray(f["rewards"], dtype=np.float64)
        terminals = np.asarray(f["terminals"], dtype=bool) if "terminals" in f else np.zeros(len(rewards), bool)
    return Episodes(trajectories, rewards, terminals)


def load_minari_episodes(dataset_id: str) -> Episodes:
    """A local Minari locomotion dataset (e.g. ``mujoco/halfcheetah/expert-v0``) with its rewards."""
    import minari  # load_minari has already checked that it is installed and the dataset is local

    trajectories = load_minari(dataset_id)
    rewards, terminals = [], []
    for episode in minari.load_dataset(dataset_id).iterate_episodes():
        rewards.append(np.asarray(episode.rewards, dtype=np.float64))
        term = np.zeros(len(episode.rewards), dtype=bool)
        term[-1] = bool(episode.terminations[-1])
        terminals.append(term)
    return Episodes(trajectories, np.concatenate(rewards), np.concatenate(terminals))
