"""Throwaway record (session 25): full closed-loop episodes guided by the oracle omega * (mu_expert - mu_base).

The sweep's 32 reset seeds and sampling seed, so scores compare with the run's sweep files. From the repository root:
    python docs/locomotion-recipe3/oracle/full.py halfcheetah reports/locomotion-v4-halfcheetah 0.3,0 0.6,0 0.8,0 1,0 0.3,2 1,2
"""
import sys
from pathlib import Path
import torch
from rrf.decision.diffusion import GaussianDiffusion, OracleGuide
from rrf.decision.locomotion import get_env, load_episodes
from rrf.decision.validate_locomotion import LocomotionConfig, closed_loop, summarize, _seeds

torch.set_num_threads(1)
name, run = sys.argv[1], Path(sys.argv[2])
settings = [tuple(float(v) for v in s.split(",")) for s in sys.argv[3:]]
d = run / name
base = GaussianDiffusion.from_pretrained(d / "planners/base/model")
expert = GaussianDiffusion.from_pretrained(d / "planners/expert/model")
env = get_env(name)
cfg = LocomotionConfig.paper(progress=False)


seeds = _seeds(0, 2, 32)
score = lambda eps: summarize(env, eps, 1000)
u = score(load_episodes(d / "sweep/unsteered-n32.hdf5"))
print(f"unsteered {u['score_mean']:.2f} ± {u['score_se']:.2f}", flush=True)
for w, ts in settings:
    eps = closed_loop(env, base, OracleGuide(base, expert, w, int(ts)), seeds, cfg,
                      Path(f"reports/oracle/{name}/oracle-w{w:g}-t{int(ts)}-n32.hdf5"), "oracle", sample_seed=2)
    s = score(eps)
    rew = d / f"sweep/reward-w{w:g}-t{int(ts)}-n32.hdf5"
    r = f" (reward there: {score(load_episodes(rew))['score_mean']:.2f})" if rew.is_file() else ""
    print(f"oracle ({w:g}, {int(ts)}): {s['score_mean']:.2f} ± {s['score_se']:.2f}{r}", flush=True)
