"""Our own offline pair per environment: a weak "replay" dataset and an "expert" dataset from one ARS run.

D4RL's medium-replay is the replay buffer of an agent trained until it reached a medium score; its
expert data comes from a fully trained policy. We mirror that with the learning curve of one ARS
run (``rrf.decision.ars``):

* **replay**: episodes of the policy snapshots up to the last one whose evaluation stays below
  ``replay_until`` of the way from the untrained policy's return to the expert's ("medium"), spread
  evenly over those snapshots from ``replay_from`` of the way there, with Gaussian action noise
  (exploration). ARS evaluates only every ``eval_every`` iterations and its curve can leap within
  one interval (Hopper from seed 0: 600-790 at iterations 16-19, 2373 at 20), so the iterations
  between the last evaluation below medium and the first above it are evaluated here, with the
  seeds ARS would have used, and the replay stops before the leap. Ending at the first evaluation
  above medium instead let one leaping snapshot pull Hopper's replay mean to 1.5x its median, a
  return the base planner, cloning the typical episode, could not reach (67% at the gate). D4RL starts at the
  untrained policy; measured on HalfCheetah, a policy cloned from such data reaches 51% of its mean
  return (the first iterations are a mixture of incoherent gaits that no single policy reproduces),
  from half-way 205%, so the default starts half-way;
* **expert**: episodes of the best evaluated policy.

Every episode of both datasets has Gaussian action noise with a std drawn from ``action_noise``.
Near-deterministic expert episodes trace one narrow orbit, and a planner cloned from them leaves it
at the first deviation and never comes back (the trial run's expert did worse than the base
closed-loop); noisy episodes cover a tube around the orbit with corrective actions. The noise has
the same distribution in both datasets: when the expert's was larger, the relative reward (and the
discriminator) learned "noisy actions look expert" and ranked episodes *against* their returns.
The price: HalfCheetah's and Walker2d's expert snapshots do not survive a std above 0.1 (Walker2d's
median return falls from 2825 to 245), so their expert datasets mix runs with falls and flips, and
with less noise for both (0.05) HalfCheetah's base planner could not clone its replay data; less
noise for the expert alone did not make HalfCheetah's reward guidance work (``docs/locomotion-recipe3``).

A third, small set of **probe** episodes serves evaluation only: one episode per snapshot evenly
spaced from the untrained policy to the expert, all with the same action noise, so that returns
differ by policy quality alone. The relative reward is asked to rank these by return (it never sees
them). Ranking the datasets' own episodes confounds quality with the per-episode noise level, which
the base and expert planners model with different widths (measured on the quick HalfCheetah run: the
reward's Spearman with return is -0.64 within the replay data and 0.74 on the probe episodes).

All are cached as D4RL-format HDF5 under ``cache_dir`` with a ``manifest.json`` holding the
configuration, the seed, the ARS run's record and the returns of each dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rrf.decision.ars import VERSION as ARS_VERSION
from rrf.decision.ars import ARSConfig, ARSRun, LinearPolicy, evaluation_returns, train_ars
from rrf.decision.locomotion import (
    Episodes,
    LocomotionEnv,
    MujocoBatch,
    load_episodes,
    rollout,
    save_episodes,
)
from rrf.manifest import provenance, write_json_atomic

KINDS = ("replay", "expert")
RECIPE_VERSION = 3  # part of the cache key: bump when ``make_datasets`` changes what the same settings produce


@dataclass
class DatasetConfig:
    replay_episodes: int = 200
    replay_until: float = 0.4
    """Replay snapshots end before the first whose evaluation reaches this fraction of the way to the expert's
    return ("medium")."""
    replay_from: float = 0.0
    """... and start at this fraction of that iteration (0: from the untrained policy, like D4RL)."""
    expert_episodes: int = 100
    action_noise: tuple[float, float] = (0.0, 0.2)
    """Per-episode action-noise std of both datasets, uniform in this range."""
    probe_episodes: int = 32
    """Held-out "policy ladder" episodes (see module doc); 0 disables them."""
    episode_steps: int = 1000
    batch: int = 50
    """Episodes simulated together."""


class NoisyPolicy:
    """Per-episode policies (one ``LinearPolicy`` snapshot each) plus Gaussian action noise of per-episode std."""

    def __init__(self, policies: list[LinearPolicy], noise_std: np.ndarray, rng: np.random.Generator):
        self.M = np.stack([p.M for p in policies])
        self.mean = np.stack([p.mean for p in policies])
        self.std = np.stack([p.std for p in policies])
        self.noise_std, self.rng = noise_std, rng

    def __call__(self, obs: np.ndarray, index: np.ndarray) -> np.ndarray:
        z = (obs - self.mean[index]) / self.std[index]
        a = np.clip(np.einsum("bij,bj->bi", self.M[index], z), -1.0, 1.0)
        return a + self.noise_std[index, None] * self.rng.standard_normal(a.shape)


def expert_iteration(run: ARSRun) -> int:
    """The best evaluated snapshot (ARS learning curves are noisy; the last one is not always the best)."""
    return int(run.eval_iterations[np.argmax(run.eval_returns.mean(axis=1))])


def replay_end(env: LocomotionEnv, run: ARSRun, ars: ARSConfig, fraction: float,
               threads: int = 1) -> tuple[int, dict[int, float]]:
    """The last iteration whose evaluation stays below ``fraction`` of the way from the start's return to
    the expert's, and the mean returns of the iterations evaluated here to find it (see module doc)."""
    means = run.eval_returns.mean(axis=1)
    target = means[0] + fraction * (means.max() - means[0])
    k = int(np.argmax(means >= target))
    if k == 0:
        return 0, {}
    batch = MujocoBatch(env, ars.eval_episodes, threads)
    dense: dict[int, float] = {}
    for i in range(int(run.eval_iterations[k - 1]) + 1, int(run.eval_iterations[k])):
        dense[i] = float(evaluation_returns(batch, run.policy(i), ars, i).mean())
        if dense[i] >= target:
            return i - 1, dense
    return int(run.eval_iterations[k]) - 1, dense


def collect(env: LocomotionEnv, policies: list[LinearPolicy], noise_std: np.ndarray, cfg: DatasetConfig,
            seed: int, threads: int = 1) -> Episodes:
    """Roll out one episode per (policy, noise) pair, ``cfg.batch`` at a time."""
    rng = np.random.default_rng([seed, 0xDA7A])
    parts = []
    for lo in range(0, len(policies), cfg.batch):
        hi = min(lo + cfg.batch, len(policies))
        batch = MujocoBatch(env, hi - lo, threads)
        seeds = rng.integers(2**31, size=hi - lo)
        parts.append(rollout(batch, NoisyPolicy(policies[lo:hi], noise_std[lo:hi], rng), seeds, cfg.episode_steps))
    return Episodes.concat(parts)


def make_datasets(env: LocomotionEnv, run: ARSRun, cfg: DatasetConfig, seed: int, until: int,
                  threads: int = 1) -> dict[str, Episodes]:
    """The datasets of the module doc, the replay's snapshots ending at iteration ``until``."""
    rng = np.random.default_rng([seed, 0x5E1EC7])
    snapshots = np.round(np.linspace(cfg.replay_from * until, until, cfg.replay_episodes)).astype(int)
    replay = collect(env, [run.policy(i) for i in snapshots], rng.uniform(*cfg.action_noise, size=cfg.replay_episodes),
                     cfg, seed * 2, threads)
    best = expert_iteration(run)
    expert = collect(env, [run.policy(best)] * cfg.expert_episodes,
                     rng.uniform(*cfg.action_noise, size=cfg.expert_episodes), cfg, seed * 2 + 1, threads)
    data = {"replay": replay, "expert": expert}
    if cfg.probe_episodes:
        ladder = np.round(np.linspace(0, best, cfg.probe_episodes)).astype(int)
        data["probe"] = collect(env, [run.policy(i) for i in ladder],
                                np.full(cfg.probe_episodes, float(np.mean(cfg.action_noise))), cfg, seed * 2 + 2,
                                threads)
    return data


def load_or_make(env: LocomotionEnv, ars: ARSConfig, cfg: DatasetConfig, cache_dir: str | Path, seed: int,
                 progress=None, threads: int = 1) -> tuple[dict[str, Episodes], dict]:
    """The cached pair for (env, ARS settings, dataset settings, seed), made on first use; and its manifest.
    ``threads`` steps the simulator and does not change what is made.

    The cache key holds every setting, so changed settings make a new entry instead of reusing a
    stale one; nothing in the cache is ever overwritten.
    """
    ars_root = Path(cache_dir) / env.name / _cache_key({"env": env.gym_id, "ars": asdict(ars), "version": ARS_VERSION})
    root = ars_root / _cache_key({"data": asdict(cfg), "seed": seed, "recipe": RECIPE_VERSION})
    manifest_file = root / "manifest.json"
    if manifest_file.is_file():
        import json

        manifest = json.loads(manifest_file.read_text())
        return {k: load_episodes(root / f"{k}.hdf5") for k in manifest["returns"]}, manifest
    run = train_ars(env, ars, ars_root / "ars", progress=progress, threads=threads)
    until, dense = replay_end(env, run, ars, cfg.replay_until, threads)
    data = make_datasets(env, run, cfg, seed, until, threads)
    for kind, eps in data.items():
        save_episodes(root / f"{kind}.hdf5", eps, attrs={"env": env.gym_id, "kind": kind, "seed": str(seed)})
    best = expert_iteration(run)
    expert_returns = run.eval_returns[list(run.eval_iterations).index(best)]
    manifest = {
        "env": env.gym_id, "seed": seed, "ars": asdict(ars), "datasets": asdict(cfg), "provenance": provenance(),
        "policy": {"iterations": run.iterations, "expert_iteration": best,
                   "expert_eval_return_mean": float(expert_returns.mean()),
                   "expert_eval_score": float(env.normalized_score(expert_returns, cfg.episode_steps).mean()),
                   "replay_end_iteration": until,
                   "learning_curve": {int(i): float(r.mean()) for i, r in zip(run.eval_iterations, run.eval_returns,
                                                                               strict=True)},
                   "replay_end_evaluations": dense},
        "returns": {k: eps.summary(env, cfg.episode_steps) for k, eps in data.items()},
    }
    write_json_atomic(manifest_file, manifest)
    return data, manifest


def _cache_key(settings: dict) -> str:
    import hashlib
    import json

    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
