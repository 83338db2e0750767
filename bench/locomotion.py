"""Locomotion throughput: direct MuJoCo stepping vs gymnasium, ARS, planner training and (guided) replanning.

    .venv/bin/python bench/locomotion.py [--seconds 3] [--threads 1] [--sim-threads 2]

Every figure is measured in this process; ratios are against the gymnasium baseline (simulation), one
stepping thread (simulation and ARS on ``--sim-threads``) or the unguided planner (guidance), so a busy
machine shifts both sides alike. ``uptime`` is printed beside them because the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from rrf.decision.ars import ARSConfig, train_ars
from rrf.decision.control import PlannerPolicy, StartConditionedDiffusion
from rrf.decision.diffusion import OracleGuide
from rrf.decision.locomotion import ENVS, MujocoBatch, make_gym_env
from rrf.decision.planner import PlannerConfig, build_planner
from rrf.guidance import RewardGuide
from rrf.losses import gradient_alignment_loss
from rrf.models import TemporalRewardEncoder
from rrf.normalizers import MinMaxNormalizer
from rrf.reward import RelativeReward


def rate(fn, seconds: float) -> float:
    """Calls of ``fn`` per second over at least ``seconds`` (after one warm-up call)."""
    fn()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        fn()
        n += 1
    return n / (time.perf_counter() - start)


def bench_simulation(seconds: float, threads: int) -> None:
    print(f"simulation: environment steps per second (one thread; MujocoBatch also on {threads} threads)")
    for env in ENVS.values():
        g, d, dt = simulation_rates(env, seconds, threads=threads)
        print(f"  {env.gym_id:15s} gymnasium {g:8.0f}/s   MujocoBatch(64) {d:8.0f}/s   x{d / g:.2f}   "
              f"{threads} threads {dt:8.0f}/s   x{dt / d:.2f} vs one")


def simulation_rates(env, seconds: float, copies: int = 64, threads: int = 2) -> tuple[float, float, float]:
    """Steps/s of gymnasium, of MujocoBatch on one thread and on ``threads``, with random actions,
    resetting fallen copies."""
    gym_env = make_gym_env(env)
    gym_env.reset(seed=0)
    actions = np.random.default_rng(0).uniform(-1, 1, (4096, gym_env.action_space.shape[0]))
    k = [0]

    def gym_step():
        k[0] += 1
        _, _, terminated, truncated, _ = gym_env.step(actions[k[0] % 4096])
        if terminated or truncated:
            gym_env.reset(seed=k[0])

    index = np.arange(copies)

    def batch_rate(n_threads: int) -> float:
        batch = MujocoBatch(env, copies, n_threads)
        batch.reset(index)

        def direct_step():
            k[0] += 1
            _, _, terminated = batch.step(actions[(k[0] + index) % 4096], index)
            if terminated.any():
                batch.reset(index + k[0])

        return copies * rate(direct_step, seconds)

    return rate(gym_step, seconds), batch_rate(1), batch_rate(threads)


def bench_ars(tmp: str, threads: int) -> None:
    cfg = ARSConfig(iterations=3, directions=16, top=4, episode_steps=200, eval_every=3, eval_episodes=2)
    steps = 2 * cfg.directions * cfg.episode_steps
    per_iter = {}
    for t in sorted({1, threads}):
        start = time.perf_counter()
        train_ars(ENVS["halfcheetah"], cfg, f"{tmp}/threads{t}", threads=t)
        per_iter[t] = (time.perf_counter() - start) / cfg.iterations
        print(f"ARS HalfCheetah, {t} stepping thread(s): {per_iter[t]:.2f} s per iteration of {steps} steps "
              f"({steps / per_iter[t]:.0f} steps/s, x{per_iter[1] / per_iter[t]:.2f} vs one)")


def bench_planner(seconds: float) -> None:
    print("planner (MLPDenoiser 512x3, T=20) and guidance (TemporalRewardEncoder 64,64,128,128)")
    for name, horizon in (("halfcheetah", 4), ("hopper", 32)):
        train, reward_train, plain, guided, oracle = planner_rates(name, horizon, seconds)
        print(f"  {name:11s} H={horizon:2d}: planner training {train:5.1f} it/s (batch 256), reward training "
              f"{reward_train:5.1f} it/s (batch 128); replanning 64 envs: unguided {1e3 / plain:6.1f} ms, "
              f"guided {1e3 / guided:6.1f} ms (x{plain / guided:.1f} slower), oracle-guided {1e3 / oracle:6.1f} ms "
              f"(x{plain / oracle:.1f})")


def planner_rates(name: str, horizon: int, seconds: float) -> tuple[float, float, float, float, float]:
    """(planner train it/s, reward train it/s, unguided, reward-guided and oracle-guided replans/s) for one environment."""
    batch = MujocoBatch(ENVS[name], 1)
    dim = batch.obs_dim + batch.act_dim
    torch.manual_seed(0)
    norm = MinMaxNormalizer.fit(torch.randn(256, dim))
    cfg = PlannerConfig(denoiser_kwargs={"hidden_dims": (512, 512, 512)}, horizon=horizon, num_timesteps=20,
                        prediction_type="sample")
    planner = StartConditionedDiffusion.wrap(build_planner(cfg, norm, batch.obs_dim))
    opt = torch.optim.Adam(planner.parameters(), 1e-4)
    windows = torch.randn(256, horizon, dim)

    def train_step():
        loss, _ = planner.loss(windows)
        loss.backward()
        opt.step()
        opt.zero_grad()

    reward = RelativeReward(TemporalRewardEncoder(dim)).eval()
    x, t = torch.randn(128, horizon, dim), torch.randint(0, 20, (128,))

    def reward_step():
        loss, _ = gradient_alignment_loss(reward, x, t, torch.randn_like(x))
        loss.backward()

    obs = np.random.default_rng(0).normal(size=(64, batch.obs_dim))
    plain = PlannerPolicy(planner.eval())
    guided = PlannerPolicy(planner, RewardGuide(reward, 0.2, 1))
    oracle = PlannerPolicy(planner, OracleGuide(planner, planner, 0.2, 1))  # the cost of a second planner's step
    return (rate(train_step, seconds), rate(reward_step, seconds), rate(lambda: plain(obs), seconds),
            rate(lambda: guided(obs), seconds), rate(lambda: oracle(obs), seconds))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="Measuring time per figure.")
    parser.add_argument("--threads", type=int, default=1, help="torch threads.")
    parser.add_argument("--sim-threads", type=int, default=2, help="MuJoCo stepping threads compared with one.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load averages {os.getloadavg()}")
    bench_simulation(args.seconds, args.sim_threads)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        bench_ars(tmp, args.sim_threads)
    bench_planner(args.seconds)


if __name__ == "__main__":
    main()
