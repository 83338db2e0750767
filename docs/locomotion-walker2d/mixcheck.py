"""Throwaway: a fitted reward's alignment on fresh standard and mixture (lam) Algorithm-2 tuples.
python mixcheck.py walker2d RUN_DIR REWARD_MODEL_DIR LAMS"""
import sys
from pathlib import Path

import torch

sys.argv = sys.argv[:3] + ["/tmp/unused", sys.argv[4], "4096", "0"] + [sys.argv[3]]
exec(open("/work/scratch/mixfit.py").read().split("tuples = cat(")[0])
from rrf.reward import RelativeReward  # noqa: E402

reward = RelativeReward.from_pretrained(sys.argv[7]).eval()
res = {"standard_fresh": alignment_by_timestep(reward, standard(1024, HELD_OUT_SEED))}
for i, lam in enumerate(lams):
    res[f"mixture_{lam:g}_fresh"] = alignment_by_timestep(reward, mixture(lam, 1024, 200 + i))
for k, v in res.items():
    print(k, f"cosine {v['cosine']:.3f} explained {v['explained']:.3f}",
          "by t (19, 10, 0):", [round(v["explained_by_t"][i], 3) for i in (0, 9, 19)], flush=True)
