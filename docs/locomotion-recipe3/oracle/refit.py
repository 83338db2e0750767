"""Throwaway record (session 25): refit the reward with more Algorithm-2 tuples; held-out cosine per t; full episodes on the sweep seeds.
From the repository root:
    python docs/locomotion-recipe3/oracle/refit.py halfcheetah reports/locomotion-v4-halfcheetah 4096 16000 1,0 0.8,0
"""
import sys
from dataclasses import replace
from pathlib import Path
import numpy as np, torch
from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.extract import fit_reward
from rrf.decision.locomotion import get_env, load_episodes
from rrf.decision.validate_locomotion import LocomotionConfig, algorithm2_tuples, sample_states, closed_loop, summarize, _seeds
from rrf.guidance import RewardGuide
from rrf.losses import reward_gradient

torch.set_num_threads(1)
name, run, n_traj, steps = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
settings = [tuple(float(v) for v in s.split(",")) for s in sys.argv[5:]]
d = run / name
out = Path(f"reports/oracle/{name}-r{n_traj}-s{steps}")
base = GaussianDiffusion.from_pretrained(d / "planners/base/model")
expert = GaussianDiffusion.from_pretrained(d / "planners/expert/model")
cfg = LocomotionConfig.paper(progress=False)
rcfg = replace(cfg.settings[name].reward, trajectories=n_traj, steps=steps)
gate = {k: load_episodes(d / f"gate/{k}.hdf5") for k in ("base", "expert")}


def tuples(seed, n):
    n_cond = n // 2
    starts = {"base": sample_states(gate["base"], n_cond, seed), "expert": sample_states(gate["expert"], n_cond, seed + 1)}
    return algorithm2_tuples(base, expert, starts, n - n_cond, seed=seed)


tr = None if (out / "reward/model/config.json").is_file() else tuples(0, n_traj)
torch.manual_seed(0)
reward = fit_reward(tr, rcfg, out / "reward", 0).eval()
del tr
held = tuples(1, 512)
cos, expl = np.zeros(20), np.zeros(20)
for t in range(20):
    m = held.t == t
    _, g = reward_gradient(reward, held.x[m], held.t[m])
    h = held.target[m]
    cos[t] = torch.nn.functional.cosine_similarity(g.flatten(1), h.flatten(1), dim=1, eps=1e-12).mean()
    expl[t] = 1 - ((g - h).pow(2).sum() / h.pow(2).sum()).item()
print("held-out cos (t 19..0) " + " ".join(f"{c:.2f}" for c in cos[::-1]), f"mean {cos.mean():.3f}")
print("held-out explained (t 19..0) " + " ".join(f"{c:.2f}" for c in expl[::-1]), f"mean {expl.mean():.3f}", flush=True)
env = get_env(name)
seeds = _seeds(0, 2, 32)
for w, ts in settings:
    eps = closed_loop(env, base, RewardGuide(reward, w, int(ts)), seeds, cfg, out / f"reward-w{w:g}-t{int(ts)}-n32.hdf5",
                      "reward", sample_seed=2)
    s = summarize(env, eps, 1000)
    print(f"reward ({w:g}, {int(ts)}): {s['score_mean']:.2f} ± {s['score_se']:.2f}", flush=True)
