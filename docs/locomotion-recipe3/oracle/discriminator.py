"""Throwaway record (session 25): the run's discriminator guide at other omegas, the sweep's 32 episodes.

From the repository root:
    python docs/locomotion-recipe3/oracle/discriminator.py halfcheetah reports/locomotion-v4-halfcheetah 0.6,0 0.8,0
"""
import sys
from pathlib import Path
import torch
from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.discriminator import DiscriminatorConfig, train_discriminator
from rrf.decision.locomotion import get_env
from rrf.decision.validate_locomotion import LocomotionConfig, _seeds, closed_loop, summarize
from rrf.guidance import RewardGuide
torch.set_num_threads(1)
name, run = sys.argv[1], Path(sys.argv[2])
d = run / name
base = GaussianDiffusion.from_pretrained(d / "planners/base/model")
disc = train_discriminator(base, None, None, LocomotionConfig.paper().settings[name].discriminator, d / "discriminator", 0)
env, cfg = get_env(name), LocomotionConfig.paper(progress=False)
for s in sys.argv[3:]:
    w, ts = (float(v) for v in s.split(","))
    eps = closed_loop(env, base, RewardGuide(disc, w, int(ts)), _seeds(0, 2, 32), cfg,
                      Path(f"reports/oracle/{name}/disc-w{w:g}-t{int(ts)}-n32.hdf5"), "disc", sample_seed=2)
    print(f"discriminator ({w:g}, {int(ts)}): {summarize(env, eps, 1000)['score_mean']:.2f}", flush=True)
