"""Throwaway: the run reward's alignment on (a subsample of) its own training tuples vs fresh ones."""
import torch
from pathlib import Path
from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.extract import PairTuples, alignment_by_timestep
from rrf.decision.locomotion import load_episodes
from rrf.decision.validate_locomotion import _paper_settings, algorithm2_tuples, sample_states
from rrf.reward import RelativeReward
torch.set_num_threads(1)
run = Path("reports/locomotion-v5-walker2d/walker2d")
s = _paper_settings("walker2d")
base = GaussianDiffusion.from_pretrained(run / "planners/base/model").eval()
expert = GaussianDiffusion.from_pretrained(run / "planners/expert/model").eval()
gate = {k: load_episodes(run / f"gate/{k}.hdf5") for k in ("base", "expert")}
n_cond = int(round(s.conditioned_fraction * 4096))
starts = {"base": sample_states(gate["base"], n_cond, 0), "expert": sample_states(gate["expert"], n_cond, 1)}
tu = algorithm2_tuples(base, expert, starts, 4096 - n_cond, seed=0)
idx = torch.randperm(len(tu), generator=torch.Generator().manual_seed(5))[:40960]
sub = PairTuples(tu.t[idx], tu.x[idx], tu.target[idx])
reward = RelativeReward.from_pretrained(run / "reward/model").eval()
v = alignment_by_timestep(reward, sub)
print("train", f"cosine {v['cosine']:.3f} explained {v['explained']:.3f}", [round(e, 3) for e in v["explained_by_t"]])
