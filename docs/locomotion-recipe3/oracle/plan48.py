"""Throwaway record (session 25): HalfCheetah recipe 3. Is the fitted reward's gradient the problem, or the direction (expert - base) itself?

1. Along base-following, start-conditioned sampling from the base planner's own closed-loop states: per t,
   cosine(grad rho, h) over the whole window and over the executed first action; norm ratio.
2. 48-step closed-loop check from 256 held-out replay states: unguided, reward guide, oracle guide
   (omega * (mu_expert - mu_base)), expert planner.

From the repository root:
    python docs/locomotion-recipe3/oracle/plan48.py halfcheetah reports/locomotion-v4-halfcheetah 1 ~/.cache/rrf-audit/halfcheetah/9f5a9bd8edc7/c8283d660bf1 48
"""
import json, sys
from pathlib import Path
import numpy as np, torch
from scipy import stats
from rrf.decision.diffusion import GaussianDiffusion, OracleGuide
from rrf.decision.locomotion import get_env, load_episodes, rollout, MujocoBatch
from rrf.decision.control import PlannerPolicy
from rrf.decision.validate_locomotion import LocomotionConfig, split_episodes, sample_states
from rrf.guidance import RewardGuide
from rrf.reward import RelativeReward
from rrf.losses import reward_gradient

torch.set_num_threads(int(sys.argv[3]) if len(sys.argv) > 3 else 2)
name, run = sys.argv[1], Path(sys.argv[2])
d = run / name
base = GaussianDiffusion.from_pretrained(d / "planners/base/model")
expert = GaussianDiffusion.from_pretrained(d / "planners/expert/model")
reward = RelativeReward.from_pretrained(d / "reward/model").eval()
env = get_env(name)
cfg = LocomotionConfig.paper()
od = base.observation_dim


# 1. gradient geometry at the base planner's own states
gate = load_episodes(d / "gate/base.hdf5")
obs = torch.as_tensor(sample_states(gate, 256, 7), dtype=torch.float32)
gen = torch.Generator().manual_seed(0)
x = base.condition(torch.randn((len(obs), base.horizon, base.transition_dim), generator=gen), {0: obs})
rows = []
for step in reversed(range(base.num_timesteps)):
    t = torch.full((len(obs),), step, dtype=torch.long)
    with torch.no_grad():
        mb, me = base.posterior_mean(x, t), expert.posterior_mean(x, t)
    h = base.condition(me, {0: obs}) - base.condition(mb, {0: obs})
    _, g = reward_gradient(reward, x, t)
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(1), b.flatten(1), dim=1, eps=1e-12).mean().item()
    a0g, a0h = g[:, 0, od:], h[:, 0, od:]
    rows.append({"t": step, "cos_window": cos(g, h), "cos_action0": cos(a0g, a0h),
                 "norm_ratio_window": (g.norm(dim=(1, 2)) / h.norm(dim=(1, 2)).clamp_min(1e-12)).median().item(),
                 "norm_ratio_action0": (a0g.norm(dim=1) / a0h.norm(dim=1).clamp_min(1e-12)).median().item(),
                 "h_action0_share": (a0h.pow(2).sum(1) / h.pow(2).sum((1, 2)).clamp_min(1e-12)).median().item()})
    x = base.condition(mb + base.posterior_std[step] * torch.randn(x.shape, generator=gen), {0: obs})
for r in rows:
    print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()), flush=True)

# 2. 48-step closed loop from held-out replay states
data = load_episodes(Path(sys.argv[4]) / "replay.hdf5") if len(sys.argv) > 4 else None
held = split_episodes(data, cfg.held_out, 0)[1]
starts = sample_states(held, 256, 2)
steps = int(sys.argv[5]) if len(sys.argv) > 5 else 48
guides = {"unguided": (base, None), "reward-0.2-1": (base, RewardGuide(reward, 0.2, 1)),
          "oracle-0.2-1": (base, OracleGuide(base, expert, 0.2, 1)), "oracle-0.5-1": (base, OracleGuide(base, expert, 0.5, 1)),
          "oracle-1-1": (base, OracleGuide(base, expert, 1.0, 1)), "expert": (expert, None)}
ret = {}
for k, (planner, guide) in guides.items():
    eps = rollout(MujocoBatch(env, len(starts)), PlannerPolicy(planner, guide, seed=0), None, steps, start=starts)
    ret[k] = eps.returns
    diff = ret[k] - ret["unguided"]
    p = stats.ttest_rel(ret[k], ret["unguided"]).pvalue if k != "unguided" else float("nan")
    print(f"{k}: return {ret[k].mean():.2f} gain {diff.mean():+.2f} p={p:.2g}", flush=True)
Path("reports/oracle").mkdir(parents=True, exist_ok=True)
json.dump({"geometry": rows, "returns": {k: v.tolist() for k, v in ret.items()}},
          open(f"reports/oracle/{name}-plan{steps}.json", "w"))
