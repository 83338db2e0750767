"""Maze2D speeds: data generation, planner training and reward training, each against an in-process baseline.

* data generation: transitions/s of ``rrf.decision.maze2d.generate`` (batched ``mujoco.rollout`` and a
  vectorised waypoint controller) vs the same controller stepping one gymnasium ``PointMaze`` env;
* planner training: optimiser steps/s of the MLP denoiser vs Diffuser's temporal UNet (same windows);
* reward training: gradient-alignment steps/s of the Maze2D reward MLP vs a plain forward+backward step.

Machines are noisy: compare the ratios across runs, not the absolute figures.

    .venv/bin/python bench/maze.py [--maze large] [--threads 1] [--horizon 32] [--batch 256]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from rrf.decision.extract import PairTuples, RewardConfig, build_reward
from rrf.decision.maze2d import ControllerConfig, MazeLayout, PointMassSim, generate, waypoint_actions
from rrf.decision.planner import PlannerConfig, build_planner
from rrf.losses import gradient_alignment_loss
from rrf.normalizers import MinMaxNormalizer


def rate(fn, n: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def gym_transitions_per_s(layout: MazeLayout, steps: int) -> float:
    """The baseline: one gymnasium PointMaze env, ``env.step`` per transition, same controller."""
    import gymnasium as gym
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    env = gym.make("PointMaze_Large-v3", maze_map=[[int(w) for w in row] for row in layout.walls],
                   continuing_task=True, max_episode_steps=10**9)
    obs, _ = env.reset(seed=0)
    rng, cfg = np.random.default_rng(0), ControllerConfig()
    goal = layout.sample_free(1, rng)
    start = time.perf_counter()
    for _ in range(steps):
        act = waypoint_actions(layout, obs["observation"][None], goal, cfg)[0] + cfg.action_noise * rng.standard_normal(2)
        obs, *_ = env.step(np.clip(act, -1, 1))
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maze", default="large")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the validation runs one per worker)")
    parser.add_argument("--horizon", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    layout = MazeLayout.named(args.maze)

    sim = PointMassSim(layout)
    start = time.perf_counter()
    data = generate(layout, episodes=500, episode_steps=400, seed=0, sim=sim)
    ours = len(data.observations) / (time.perf_counter() - start)
    gym_rate = gym_transitions_per_s(layout, 4000)
    print(f"data generation ({args.maze}, 500 episodes in one batch): {ours:10.0f} transitions/s")
    print(f"  baseline: one gymnasium PointMaze env        : {gym_rate:10.0f} transitions/s  -> {ours / gym_rate:.1f}x")

    windows = torch.from_numpy(data.transitions[: args.batch * args.horizon]).view(args.batch, args.horizon, -1)
    norm = MinMaxNormalizer.fit(torch.from_numpy(data.transitions))
    speeds = {}
    for name, kwargs in (("MLPDenoiser", {"hidden_dims": (512, 512, 512)}), ("TemporalUnet", {"dims": (32, 64, 128)})):
        planner = build_planner(PlannerConfig(denoiser=name, denoiser_kwargs=kwargs, horizon=args.horizon), norm, 4)
        opt = torch.optim.Adam(planner.parameters(), lr=2e-4)

        def planner_step(planner=planner, opt=opt):
            opt.zero_grad(set_to_none=True)
            planner.loss(windows)[0].backward()
            opt.step()

        speeds[name] = rate(planner_step, args.steps if name == "MLPDenoiser" else max(3, args.steps // 10))
    print(f"planner training (batch {args.batch} x H={args.horizon}, {args.threads} thread(s)):")
    print(f"  MLPDenoiser (512,512,512): {speeds['MLPDenoiser']:7.1f} steps/s")
    print(f"  TemporalUnet (32,64,128) : {speeds['TemporalUnet']:7.1f} steps/s  -> MLP is "
          f"{speeds['MLPDenoiser'] / speeds['TemporalUnet']:.1f}x faster")

    t = torch.arange(100).repeat_interleave(args.batch // 100 + 1)[: args.batch]
    target = torch.randn_like(windows) * 1e-2
    reward = build_reward(RewardConfig(), windows.shape[-1], PairTuples(t, windows, target))
    opt = torch.optim.Adam(reward.parameters(), lr=1e-3)
    x = norm.normalize(windows)

    def alignment_step():
        opt.zero_grad(set_to_none=True)
        gradient_alignment_loss(reward, x, t, target, weight=reward.loss_weight(t))[0].backward()
        opt.step()

    def plain_step():
        opt.zero_grad(set_to_none=True)
        reward(x, t).pow(2).mean().backward()
        opt.step()

    align, plain = rate(alignment_step, args.steps), rate(plain_step, args.steps)
    print(f"reward training (RewardMLP h=4 (128,64,32), batch {args.batch} x H={args.horizon}):")
    print(f"  gradient alignment: {align:7.1f} steps/s")
    print(f"  plain fwd+bwd     : {plain:7.1f} steps/s  -> alignment step costs {plain / align:.1f}x")


if __name__ == "__main__":
    main()
