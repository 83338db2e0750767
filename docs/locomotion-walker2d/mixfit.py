"""Throwaway: Algorithm 2 plus followers that take the step base + lam * (expert - base), then the product's fit.

python mixfit.py walker2d RUN_DIR OUT_DIR LAMS(e.g. 0.8) [TRAJ_PER_FOLLOWER=4096] [STEPS=16000]
Covers the states a guided base visits when grad rho = h_t at omega = lam. Reports the fit on fresh
standard tuples (the product's check) and on fresh mixture tuples.
"""
import json
import sys
from pathlib import Path

import torch

from rrf.decision.diffusion import GaussianDiffusion, pair_stepper
from rrf.decision.extract import PairTuples, alignment_by_timestep, fit_reward
from rrf.decision.locomotion import load_episodes
from rrf.decision.validate_locomotion import HELD_OUT_SEED, _paper_settings, algorithm2_tuples, sample_states
from rrf.losses import relative_step

torch.set_num_threads(1)
name, run, out = sys.argv[1], Path(sys.argv[2]) / sys.argv[1], Path(sys.argv[3])
lams = [float(v) for v in sys.argv[4].split(",")]
traj = int(sys.argv[5]) if len(sys.argv) > 5 else 4096
steps = int(sys.argv[6]) if len(sys.argv) > 6 else 16000
settings = _paper_settings(name)
base = GaussianDiffusion.from_pretrained(run / "planners/base/model").eval()
expert = GaussianDiffusion.from_pretrained(run / "planners/expert/model").eval()
gate = {k: load_episodes(run / f"gate/{k}.hdf5") for k in ("base", "expert")}


def standard(trajectories, seed):  # the product's pair_data
    n_cond = int(round(settings.conditioned_fraction * trajectories))
    starts = {"base": sample_states(gate["base"], n_cond, seed), "expert": sample_states(gate["expert"], n_cond, seed + 1)}
    return algorithm2_tuples(base, expert, starts, trajectories - n_cond, seed=seed)


@torch.no_grad()
def mixture(lam, trajectories, seed):
    gen = torch.Generator().manual_seed(seed)
    step = pair_stepper(base, expert, gen)
    n_cond = int(round(settings.conditioned_fraction * trajectories))
    half = n_cond // 2
    obs = torch.as_tensor(torch.cat([torch.as_tensor(sample_states(gate["base"], half, seed + 2)),
                                     torch.as_tensor(sample_states(gate["expert"], n_cond - half, seed + 3))]),
                          dtype=torch.float32)
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


def cat(parts):
    return PairTuples(*(torch.cat(p) for p in zip(*((q.t, q.x, q.target) for q in parts))))


tuples = cat([standard(traj, 0)] + [mixture(lam, traj, 100 + i) for i, lam in enumerate(lams)])
print("tuples", len(tuples), flush=True)
torch.manual_seed(0)
cfg = settings.reward
cfg.steps = steps
reward = fit_reward(tuples, cfg, out, 0).eval()
res = {"standard_fresh": alignment_by_timestep(reward, standard(max(2, traj // 4), HELD_OUT_SEED))}
for i, lam in enumerate(lams):
    res[f"mixture_{lam:g}_fresh"] = alignment_by_timestep(reward, mixture(lam, max(2, traj // 4), 200 + i))
for k, v in res.items():
    print(k, f"cosine {v['cosine']:.3f} explained {v['explained']:.3f}",
          "by t (19, 10, 0):", [round(v["explained_by_t"][i], 3) for i in (0, 9, 19)], flush=True)
(out / "fit.json").write_text(json.dumps(res, indent=1))
