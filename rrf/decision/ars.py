"""Augmented random search (Mania et al. 2018, ARS V2-t) of a linear policy on a ``MujocoBatch``.

The policy is ``a = clip(M (s - mu) / sigma, -1, 1)`` with ``mu, sigma`` running statistics of every
state visited during training (V2). Each iteration evaluates ``M +- noise * delta_k`` for ``directions``
random ``delta_k`` (all ``2 * directions`` episodes in one batch), keeps the ``top`` directions by
``max(r+, r-)`` (the "-t") and steps ``M`` by ``step_size / (top * sigma_R) * sum (r+ - r-) delta``.
For environments with a healthy bonus the bonus is left out of the training return by default (as
ARS does), so the search does not settle on standing still; ``healthy_bonus`` keeps a fraction of it.

Everything random in iteration ``i`` is a pure function of ``(seed, i)``, and the snapshot of every
iteration is kept, so a run resumes from its last checkpoint to the same bytes and the datasets can
be drawn from any point of the learning curve.

The products use ``np.einsum``, never BLAS (``@``, ``tensordot``): OpenBLAS picks its kernels by CPU
(SkylakeX on AVX-512 machines, Haswell on others) and their results differ in the last bits. The
rollouts are chaotic and amplify that: from seed 0, Hopper's learning curves agreed to 1e-9 at
iteration 10 and had split by iteration 20, and the replay data scored 56.8 on one host and 24.1 on
the other. Without BLAS the run is the same on both.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from rrf.decision.locomotion import LocomotionEnv, MujocoBatch, rollout
from rrf.errors import UserError
from rrf.manifest import provenance, write_json_atomic

VERSION = 2  # part of the dataset cache key: bump when ``train_ars`` changes what the same settings produce


@dataclass
class ARSConfig:
    iterations: int = 200
    """Policy updates."""
    directions: int = 32
    """Random directions per update (2 episodes each)."""
    top: int = 4
    """Directions kept per update (ARS-t)."""
    step_size: float = 0.02
    noise: float = 0.03
    """Standard deviation of the parameter perturbations."""
    episode_steps: int = 1000
    eval_every: int = 10
    """Evaluate the unperturbed policy every N iterations (and at the end)."""
    eval_episodes: int = 8
    checkpoint_every: int = 10
    healthy_bonus: float = 0.0
    """Fraction of the healthy bonus kept in the training objective (ARS drops it: 0)."""
    seed: int = 0


@dataclass
class LinearPolicy:
    """``a = clip(M (s - mean) / std, -1, 1)``; ``M`` (act_dim, obs_dim) or a batch (B, act_dim, obs_dim)."""

    M: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    def __call__(self, obs: np.ndarray, index: np.ndarray | None = None) -> np.ndarray:
        z = (obs - self.mean) / self.std
        if self.M.ndim == 2:
            return np.clip(np.einsum("ij,bj->bi", self.M, z), -1.0, 1.0)
        return np.clip(np.einsum("bij,bj->bi", self.M[index], z), -1.0, 1.0)


@dataclass
class ARSRun:
    """The learning curve: one policy snapshot per iteration (index 0 = the zero policy) and evaluations."""

    M: np.ndarray  # (I + 1, act_dim, obs_dim)
    mean: np.ndarray  # (I + 1, obs_dim)
    std: np.ndarray  # (I + 1, obs_dim)
    eval_iterations: np.ndarray  # (K,)
    eval_returns: np.ndarray  # (K, eval_episodes) true returns (healthy bonus included)
    train_returns: np.ndarray  # (I,) mean training return of the perturbed policies per iteration

    def policy(self, i: int) -> LinearPolicy:
        return LinearPolicy(self.M[i], self.mean[i], self.std[i])

    @property
    def iterations(self) -> int:
        return len(self.M) - 1

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.partial.npz")
        np.savez(tmp, **asdict(self))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> ARSRun:
        with np.load(path) as f:
            return cls(**{k: f[k] for k in cls.__dataclass_fields__})


class _RunningStats:
    """Welford count / mean / M2 of observed states (float64), mergeable per batch."""

    def __init__(self, dim: int, count: float = 0.0, mean: np.ndarray | None = None, m2: np.ndarray | None = None):
        self.count = count
        self.mean = np.zeros(dim) if mean is None else mean.copy()
        self.m2 = np.zeros(dim) if m2 is None else m2.copy()

    def update(self, x: np.ndarray) -> None:
        n_b, mean_b = len(x), x.mean(axis=0)
        m2_b = ((x - mean_b) ** 2).sum(axis=0)
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * (n_b / n)
        self.m2 = self.m2 + m2_b + delta**2 * (self.count * n_b / n)
        self.count = n

    def std(self) -> np.ndarray:
        if self.count < 2:
            return np.ones_like(self.mean)
        var = self.m2 / self.count
        return np.where(var < 1e-8, 1.0, np.sqrt(var))  # ARS: constant coordinates are left unscaled


def _iteration_rng(seed: int, i: int) -> np.random.Generator:
    return np.random.default_rng([seed, i, 0xA125])


def evaluation_returns(batch: MujocoBatch, policy: LinearPolicy, cfg: ARSConfig, i: int) -> np.ndarray:
    """True returns of iteration ``i``'s evaluation (``cfg.eval_episodes`` episodes on ``batch``).

    The episodes' seeds depend on ``(cfg.seed, i)`` alone, so a snapshot that ``train_ars`` did not
    evaluate can be evaluated later exactly as it would have been.
    """
    seeds = _iteration_rng(cfg.seed, i).integers(2**31, size=cfg.eval_episodes) + 1_000_000_007
    return rollout(batch, policy, seeds, cfg.episode_steps).returns


def train_ars(env: LocomotionEnv, cfg: ARSConfig, out_dir: str | Path, progress=None, threads: int = 1) -> ARSRun:
    """Train (resuming from ``out_dir/ars.npz``) and return the run. ``progress``: a rich ``Progress`` or None;
    ``threads``: simulator threads (the run is the same bytes for any count)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, ckpt = out_dir / "ars.npz", out_dir / "ars-checkpoint.npz"
    if final.is_file():
        return ARSRun.load(final)
    if cfg.top > cfg.directions:
        raise UserError(f"ARS keeps top={cfg.top} of {cfg.directions} directions; choose top <= directions")
    n = cfg.directions
    train_batch, eval_batch = MujocoBatch(env, 2 * n, threads), MujocoBatch(env, cfg.eval_episodes, threads)
    obs_dim, act_dim = train_batch.obs_dim, train_batch.act_dim
    Ms, means, stds = [np.zeros((act_dim, obs_dim))], [np.zeros(obs_dim)], [np.ones(obs_dim)]
    stats = _RunningStats(obs_dim)
    evals: list[tuple[int, np.ndarray]] = []
    train_returns: list[float] = []
    if ckpt.is_file():
        with np.load(ckpt) as f:
            Ms, means, stds = list(f["M"]), list(f["mean"]), list(f["std"])
            stats = _RunningStats(obs_dim, float(f["count"]), f["stats_mean"], f["stats_m2"])
            evals = [(int(i), r) for i, r in zip(f["eval_iterations"], f["eval_returns"], strict=True)]
            train_returns = list(f["train_returns"])

    def evaluate(i: int) -> None:
        evals.append((i, evaluation_returns(eval_batch, LinearPolicy(Ms[i], means[i], stds[i]), cfg, i)))

    def save(path: Path) -> None:
        tmp = path.with_name(f".{path.name}.partial.npz")
        np.savez(tmp, M=np.stack(Ms), mean=np.stack(means), std=np.stack(stds), count=stats.count,
                 stats_mean=stats.mean, stats_m2=stats.m2, eval_iterations=np.array([i for i, _ in evals], dtype=np.int64),
                 eval_returns=np.array([r for _, r in evals]).reshape(len(evals), cfg.eval_episodes),
                 train_returns=np.array(train_returns))
        tmp.replace(path)

    task = None if progress is None else progress.add_task(f"ARS {env.name}", total=cfg.iterations,
                                                           completed=len(Ms) - 1)
    if not evals:
        evaluate(0)
    for i in range(len(Ms) - 1, cfg.iterations):
        rng = _iteration_rng(cfg.seed, i)
        delta = rng.standard_normal((n, act_dim, obs_dim))
        M = Ms[-1]
        perturbed = np.concatenate([M + cfg.noise * delta, M - cfg.noise * delta])
        seeds = rng.integers(2**31, size=2 * n)
        eps = rollout(train_batch, LinearPolicy(perturbed, means[-1], stds[-1]), seeds, cfg.episode_steps)
        # ARS leaves the healthy bonus out of the objective (it rewards standing still).
        r = eps.returns - (1.0 - cfg.healthy_bonus) * env.healthy_reward * eps.lengths
        r_plus, r_minus = r[:n], r[n:]
        keep = np.argsort(-np.maximum(r_plus, r_minus), kind="stable")[: cfg.top]
        sigma_r = np.concatenate([r_plus[keep], r_minus[keep]]).std()
        step = np.einsum("k,kij->ij", r_plus[keep] - r_minus[keep], delta[keep])
        Ms.append(M + cfg.step_size / (cfg.top * max(sigma_r, 1e-8)) * step)
        stats.update(eps.trajectories.observations.astype(np.float64))
        means.append(stats.mean.copy())
        stds.append(stats.std())
        train_returns.append(float(eps.returns.mean()))
        if (i + 1) % cfg.eval_every == 0 or i + 1 == cfg.iterations:
            evaluate(i + 1)
        if (i + 1) % cfg.checkpoint_every == 0:
            save(ckpt)
        if task is not None:
            last = evals[-1][1].mean()
            progress.update(task, completed=i + 1, description=f"ARS {env.name} (eval return {last:.0f})")
    run = ARSRun(np.stack(Ms), np.stack(means), np.stack(stds), np.array([i for i, _ in evals], dtype=np.int64),
                 np.array([r for _, r in evals]), np.array(train_returns))
    run.save(final)
    write_json_atomic(out_dir / "ars.json", {
        "env": env.gym_id, "config": asdict(cfg), "provenance": provenance(),
        "eval": {int(i): float(r.mean()) for i, r in zip(run.eval_iterations, run.eval_returns, strict=True)}})
    ckpt.unlink(missing_ok=True)
    return run
