"""Throwaway record: the run reward's alignment on a 40960-tuple subsample of its own training tuples (trainfit.log).

From the repository root: python docs/locomotion-walker2d/trainfit.py reports/locomotion-v5-walker2d
"""
import sys
from pathlib import Path

import torch

from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.extract import PairTuples, alignment_by_timestep
from rrf.decision.locomotion import load_episodes
from rrf.decision.validate_locomotion import _paper_settings, gate_tuples
from rrf.reward import RelativeReward

torch.set_num_threads(1)
run = Path(sys.argv[1]) / "walker2d"
s = _paper_settings("walker2d")
base = GaussianDiffusion.from_pretrained(run / "planners/base/model").eval()
expert = GaussianDiffusion.from_pretrained(run / "planners/expert/model").eval()
gate = {k: load_episodes(run / f"gate/{k}.hdf5") for k in ("base", "expert")}
tu = gate_tuples(base, expert, gate, s.conditioned_fraction, s.reward.trajectories, seed=0)  # the run's, seed 0
idx = torch.randperm(len(tu), generator=torch.Generator().manual_seed(5))[:40960]
reward = RelativeReward.from_pretrained(run / "reward/model").eval()
v = alignment_by_timestep(reward, PairTuples(tu.t[idx], tu.x[idx], tu.target[idx]))
print("train", f"cosine {v['cosine']:.3f} explained {v['explained']:.3f}", [round(e, 3) for e in v["explained_by_t"]])
