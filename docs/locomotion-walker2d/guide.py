"""Throwaway: closed-loop on the sweep's 32 episodes with a chosen guide and settings.

python guide.py walker2d RUN_DIR reward|oracle|hybrid W,T [W,T ...]
hybrid: oracle for t >= SPLIT, reward below (or the reverse with hybrid-rev); SPLIT env var (default 10).
"""
import os
import sys
from pathlib import Path

import torch

from rrf.decision.diffusion import GaussianDiffusion, OracleGuide
from rrf.decision.locomotion import get_env, load_episodes
from rrf.decision.validate_locomotion import LocomotionConfig, _seeds, closed_loop, summarize
from rrf.guidance import RewardGuide
from rrf.reward import RelativeReward

torch.set_num_threads(1)
name, run, kind = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
settings = [tuple(float(v) for v in s.split(",")) for s in sys.argv[4:]]
d = run / name
base = GaussianDiffusion.from_pretrained(d / "planners/base/model").eval()
expert = GaussianDiffusion.from_pretrained(d / "planners/expert/model").eval()
env = get_env(name)
cfg = LocomotionConfig.paper(progress=False, sim_threads=1)
split = int(os.environ.get("SPLIT", 10))
reward_dir = Path(os.environ.get("REWARD", d / "reward/model"))
reward = RelativeReward.from_pretrained(reward_dir).eval() if kind != "oracle" else None


class Hybrid:
    def __init__(self, high, low):
        self.high, self.low = high, low

    def shift(self, mean, x, t):
        tt = int(t.reshape(-1)[0])
        return (self.high if tt >= split else self.low).shift(mean, x, t)


seeds = _seeds(0, 2, 32)
out = Path(os.environ.get("OUT", "/work/scratch/guide")) / name
for w, ts in settings:
    ts = int(ts)
    o, r = OracleGuide(base, expert, w, ts), (RewardGuide(reward, w, ts) if reward else None)
    guide = {"reward": r, "oracle": o, "hybrid": Hybrid(o, r), "hybrid-rev": Hybrid(r, o)}[kind]
    tag = f"{kind}{split if kind.startswith('hybrid') else ''}-{reward_dir.parent.name if reward else ''}-w{w:g}-t{ts}"
    eps = closed_loop(env, base, guide, seeds, cfg, out / f"{tag}-n32.hdf5", tag, sample_seed=2)
    s = summarize(env, eps, 1000)
    print(f"{tag}: {s['score_mean']:.2f} ± {s['score_se']:.2f}", flush=True)
