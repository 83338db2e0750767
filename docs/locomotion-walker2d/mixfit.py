"""Throwaway record: Algorithm 2 plus followers that take the step base + lam * (expert - base), then the product's fit.

From the repository root:
    python docs/locomotion-walker2d/mixfit.py walker2d RUN_DIR OUT_DIR 0.8            # fit (mix08.log)
    python docs/locomotion-walker2d/mixfit.py walker2d RUN_DIR - 0.8 --check REWARD    # a fitted reward's alignment

The mixture followers cover the states a guided base visits when grad rho = h_t at omega = lam. Both
modes report the fit on fresh standard tuples (the product's check) and on fresh mixture tuples
(``--check`` on the run's reward: first two lines of guide1.log).
"""
import argparse
import json
from pathlib import Path

import torch

from rrf.decision.diffusion import GaussianDiffusion, pair_stepper
from rrf.decision.extract import PairTuples, alignment_by_timestep, fit_reward
from rrf.decision.locomotion import load_episodes
from rrf.decision.validate_locomotion import HELD_OUT_SEED, _paper_settings, gate_tuples, sample_states
from rrf.losses import relative_step
from rrf.reward import RelativeReward

parser = argparse.ArgumentParser()
parser.add_argument("env")
parser.add_argument("run", type=Path)
parser.add_argument("out")
parser.add_argument("lams", type=lambda v: [float(x) for x in v.split(",")])
parser.add_argument("--trajectories", type=int, default=4096)
parser.add_argument("--steps", type=int, default=16000)
parser.add_argument("--check", type=Path, help="only measure this fitted reward (its model directory)")
args = parser.parse_args()
torch.set_num_threads(1)
run = args.run / args.env
settings = _paper_settings(args.env)
base = GaussianDiffusion.from_pretrained(run / "planners/base/model").eval()
expert = GaussianDiffusion.from_pretrained(run / "planners/expert/model").eval()
gate = {k: load_episodes(run / f"gate/{k}.hdf5") for k in ("base", "expert")}


def standard(trajectories: int, seed: int) -> PairTuples:
    return gate_tuples(base, expert, gate, settings.conditioned_fraction, trajectories, seed)


@torch.no_grad()
def mixture(lam: float, trajectories: int, seed: int) -> PairTuples:
    gen = torch.Generator().manual_seed(seed)
    step = pair_stepper(base, expert, gen)
    n_cond = int(round(settings.conditioned_fraction * trajectories))
    half = n_cond // 2
    obs = torch.cat([torch.as_tensor(sample_states(gate["base"], half, seed + 2)),
                     torch.as_tensor(sample_states(gate["expert"], n_cond - half, seed + 3))]).float()
    ts, xs, hs = [], [], []
    for cond in (None, {0: obs}):
        n = trajectories - n_cond if cond is None else n_cond
        x = base.condition(torch.randn((n, base.horizon, base.transition_dim), generator=gen), cond)
        for t in range(base.num_timesteps - 1, -1, -1):
            b, e = step(x, t)
            b, e = base.condition(b, cond), base.condition(e, cond)
            ts.append(torch.full((n,), t)); xs.append(x); hs.append(relative_step(b, e))
            x = b + lam * (e - b)
    return PairTuples(torch.cat(ts), torch.cat(xs), torch.cat(hs))


if args.check:
    reward = RelativeReward.from_pretrained(args.check).eval()
else:
    parts = [standard(args.trajectories, 0)] + [mixture(lam, args.trajectories, 100 + i) for i, lam in enumerate(args.lams)]
    tuples = PairTuples(*(torch.cat(p) for p in zip(*((q.t, q.x, q.target) for q in parts))))
    print("tuples", len(tuples), flush=True)
    torch.manual_seed(0)
    settings.reward.steps = args.steps
    reward = fit_reward(tuples, settings.reward, args.out, 0).eval()
res = {"standard_fresh": alignment_by_timestep(reward, standard(max(2, args.trajectories // 4), HELD_OUT_SEED))}
for i, lam in enumerate(args.lams):
    res[f"mixture_{lam:g}_fresh"] = alignment_by_timestep(reward, mixture(lam, max(2, args.trajectories // 4), 200 + i))
for k, v in res.items():
    print(k, f"cosine {v['cosine']:.3f} explained {v['explained']:.3f}",
          "by t (19, 10, 0):", [round(v["explained_by_t"][i], 3) for i in (0, 9, 19)], flush=True)
if not args.check:
    (Path(args.out) / "fit.json").write_text(json.dumps(res, indent=1))
