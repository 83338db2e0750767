"""Throwaway record (session 25): the refitted reward on the run's 128 evaluation episodes (same seeds and sampling noise).

From the repository root, after refit.py:
    python docs/locomotion-recipe3/oracle/evaluate.py halfcheetah reports/locomotion-v4-halfcheetah reports/oracle/halfcheetah-r4096-s16000 0.8,0
"""
import sys
from pathlib import Path

import torch
from scipy import stats

from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.locomotion import get_env, load_episodes
from rrf.decision.validate_locomotion import LocomotionConfig, _seeds, closed_loop, summarize
from rrf.guidance import RewardGuide
from rrf.reward import RelativeReward

torch.set_num_threads(1)
name, run, refit = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
d = run / name
base = GaussianDiffusion.from_pretrained(d / "planners/base/model")
reward = RelativeReward.from_pretrained(refit / "reward/model").eval()
env, cfg = get_env(name), LocomotionConfig.paper(progress=False)
seeds = _seeds(0, 3, 128)
score = lambda eps: env.normalized_score(eps.returns, 1000)  # noqa: E731
unsteered = score(load_episodes(d / "eval/unsteered-n128.hdf5"))
others = {p.stem: score(load_episodes(p)) for p in sorted((d / "eval").glob("*-n128.hdf5")) if "unsteered" not in p.name}
for w, ts in (tuple(float(v) for v in s.split(",")) for s in sys.argv[4:]):
    eps = closed_loop(env, base, RewardGuide(reward, w, int(ts)), seeds, cfg,
                      refit / f"eval-reward-w{w:g}-t{int(ts)}-n128.hdf5", "reward", sample_seed=3)
    s = summarize(env, eps, 1000)
    print(f"refitted reward ({w:g}, {int(ts)}): {s['score_mean']:.2f} ± {s['score_se']:.2f}; unsteered "
          f"{unsteered.mean():.2f}, p = {stats.ttest_ind(score(eps), unsteered, equal_var=False).pvalue:.2g}", flush=True)
    for k, v in others.items():
        print(f"  vs {k} {v.mean():.2f}: p = {stats.ttest_ind(score(eps), v, equal_var=False).pvalue:.2g}")
