"""`rrf-audit evaluate`: how well the fitted reward separates base from safer samples on held-out prompts.

1. load the run (reward, split) and its store;
2. score the final latent of every trajectory -> ``scores.parquet`` (one row per sample, with its split),
   by default re-noised into the middle of the diffusion (``score_latents_noised``);
3. separation (accuracy with a threshold cross-fitted over folds of held-out prompts; AUROC), per-category AUROC and the
   attribute breakdown with the models' disagreement per attribute, all on the test split (``audit.metrics``);
4. mean reward per diffusion timestep for base vs expert test trajectories;
5. cosine between grad rho and the target on held-out tuples;
6. optionally, ground truth: AUROC of a low reward for base images that show the concept (``concept_auroc``),
   the separation the labeller itself reaches (``concept_rule_accuracy``), the ceiling of a reward
   that reads only the concept, and the accuracy on the prompts that invite the concept, controls left
   out (``concept_prompt_accuracy``, the figure that compares with the paper's on I2P);
7. ``metrics.json`` and PNG plots.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from audit import plots
from audit.fit import heldout_tuples, load_fit_manifest, load_split
from audit.metrics import (
    PROTOCOL,
    attribute_breakdown,
    concept_auroc,
    concept_prompt_accuracy,
    concept_rule_accuracy,
    heldout_verdicts,
    mean_ci,
    per_category,
    prompt_interval,
    separation,
)
from audit.store import Store, sha256_file
from rrf.errors import UserError
from rrf.manifest import file_digests, provenance, read_json, same_inputs, write_json_atomic
from rrf.reward import RelativeReward

# ``paths of images -> 1 where the image shows the concept`` (e.g. the toy's pixel labeller).
GroundTruth = Callable[[Sequence[Path]], np.ndarray]


@dataclass
class EvaluateConfig:
    batch_size: int = 64
    curve_trajectories: int = 64
    """Test trajectories per follower used for the per-timestep reward curve."""
    cosine_tuples: int = 1024
    """Held-out tuples for the gradient cosine."""
    score_band: tuple[float, float] = (0.45, 0.8)
    """A final sample is scored by the reward of its latent noised to stored timesteps in this band (as
    fractions of the training schedule), in units of each timestep's target scale, averaged over
    ``score_timesteps`` timesteps x ``score_draws`` noise draws. Why: gradient matching pins rho down only
    where the two models' states meet; the clean samples of the two models at the last step barely overlap,
    while mid-way the noise connects them (the locomotion and Maze2D checks found the same). Measured on
    the balanced toy prompts, same stores and rewards, clean -> band (accuracy / AUROC / concept AUROC):
    toy vs an erased toy (eta 2) 70.4% / 0.768 / 0.729 -> 79.6% / 0.863 / 0.921; toy vs toy-sld 98.1% /
    1.000 / 1.000 -> 100% / 1.000 / 1.000. The band suits safer models that change the sampling there. On
    the toy audit sets (2026-12-04), band -> 0.7-0.9: toy-safe 94.4% / 0.955 / 0.936 -> 94.4% / 0.960 /
    0.964, blue erased 600 steps 92.6% / 0.922 / 0.849 -> 92.6% / 0.940 / 0.937, but toy-sld, which steers
    all along, 94.4% / 0.979 / 1.000 -> 85.2% / 0.949 / 1.000. An eraser that decides the colour in the
    first tenth of the diffusion (anchored to the caption naming another colour; not shipped) is ranked
    the wrong way in this band (AUROC 0.185) and best at t = 861-921 (0.84). Choosing the timesteps by
    training-split AUROC tracks the held-out figure per timestep but did not win overall (toy-safe 0.967 /
    0.945; blue 600 steps concept AUROC 0.873; the ``steer="shown"`` blue eraser 0.627)."""
    score_timesteps: int = 4
    """Stored timesteps of the band to average over; 0 scores the clean latent at the last timestep."""
    score_draws: int = 8
    """Why not more: on the toy-safe audit's five splits, 8 / 32 / 128 draws gave mean accuracy 88.5% /
    88.5% / 86.7% and, on the default split, concept AUROC 0.936 / 0.927 / 0.900; more draws estimate
    each image's score better, but the figures were limited elsewhere (2026-12-04)."""
    seed: int = 0


@torch.no_grad()
def score_latents(reward: RelativeReward, latents: torch.Tensor, t: int, batch_size: int = 64,
                  device: str | torch.device = "cpu") -> np.ndarray:
    """rho(x, t) for a stack of latents (N, C, H, W), in batches."""
    out = []
    for i in range(0, len(latents), batch_size):
        x = latents[i : i + batch_size].to(device)
        out.append(reward(x, torch.full((len(x),), t, device=device)).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def score_timesteps(timesteps: Sequence[int], num_train_timesteps: int, band: tuple[float, float], n: int) -> list[int]:
    """``n`` of the stored ``timesteps`` spread evenly over ``band`` (fractions of the training schedule)."""
    inside = sorted(int(t) for t in timesteps if band[0] * num_train_timesteps <= t <= band[1] * num_train_timesteps)
    if not inside:
        raise UserError(f"no stored timestep lies in the scoring band {band} of {num_train_timesteps}; "
                        "generate with more --steps or score the clean latent (--score-timesteps 0)")
    return [inside[i] for i in np.unique(np.round(np.linspace(0, len(inside) - 1, n)).astype(int))]


@torch.no_grad()
def score_latents_noised(reward: RelativeReward, x0: torch.Tensor, timesteps: Sequence[int],
                         alphas_cumprod: torch.Tensor, draws: int, seed: int, batch_size: int = 64,
                         device: str | torch.device = "cpu") -> np.ndarray:
    """Mean over ``timesteps`` and ``draws`` of rho(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t) / scale_t.

    Draw k adds the same noise to every latent (one sample from a CPU generator seeded (seed, k)): an
    image's score does not depend on what else is scored with it, and two images are compared under the
    same noise, which keeps the noise out of their difference.
    """
    scales = {t: 1.0 if reward.output_scale is None else float(reward.output_scale(torch.tensor([t]))) for t in timesteps}
    total = np.zeros(len(x0))
    for k in range(draws):
        eps = torch.randn(tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(seed * 1_000_003 + k))
        for t in timesteps:
            abar = float(alphas_cumprod[t])
            total += score_latents(reward, abar**0.5 * x0 + (1 - abar) ** 0.5 * eps, t, batch_size, device) / scales[t]
    return total / (draws * len(timesteps))


def store_schedule(store: Store) -> torch.Tensor:
    """alphas_cumprod of the store's scheduler, from the configuration its manifest records (no weights)."""
    import diffusers

    scheduler = store.manifest["pair"]["scheduler"]
    return getattr(diffusers, scheduler["class"]).from_config(scheduler["config"]).alphas_cumprod


def image_scores(store: Store, reward: RelativeReward, x0: torch.Tensor, cfg: EvaluateConfig,
                 device: str | torch.device) -> tuple[np.ndarray, dict]:
    """The rewards of final latents ``x0`` by ``cfg``'s scoring rule, and that rule as recorded in metrics."""
    if cfg.score_timesteps == 0:
        t = int(store.timesteps[-1])
        return score_latents(reward, x0, t, cfg.batch_size, device), {"timesteps": [t], "draws": 0}
    alphas = store_schedule(store)
    ts = score_timesteps(store.timesteps, len(alphas), cfg.score_band, cfg.score_timesteps)
    return (score_latents_noised(reward, x0, ts, alphas, cfg.score_draws, cfg.seed, cfg.batch_size, device),
            {"timesteps": ts, "draws": cfg.score_draws, "band": list(cfg.score_band)})


def scores_table(store: Store, split: pd.DataFrame, reward: RelativeReward, cfg: EvaluateConfig,
                 device: str | torch.device) -> tuple[pd.DataFrame, dict]:
    """One row per trajectory: the store's columns, the split and the reward of its final sample; the rule."""
    table = store.trajectories.merge(split[["traj_id", "split"]], on="traj_id", how="left", validate="one_to_one")
    table["split"] = table["split"].fillna("unused")
    ids = table["traj_id"].astype(int).tolist()
    latents = torch.cat([store.final_latents(ids[i : i + 256]) for i in range(0, len(ids), 256)])
    table["reward"], rule = image_scores(store, reward, latents, cfg, device)
    table["image_path"] = [str(store.image_path(i)) for i in ids]
    return table, rule


def timestep_curve(store: Store, reward: RelativeReward, scores: pd.DataFrame, n: int, seed: int,
                   device: str | torch.device) -> pd.DataFrame:
    """Mean reward (95% CI) at every timestep of up to ``n`` test trajectories per follower.

    The reward at each t is divided by that timestep's target scale (the RMS of the one-step
    difference), so that early and late timesteps are on one axis: the raw reward shrinks with the
    step size toward t = 0.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for follow, group in scores[scores["split"] == "test"].groupby("follow"):
        ids = group["traj_id"].to_numpy()
        ids = np.sort(rng.choice(ids, size=min(n, len(ids)), replace=False))
        per_t = [[] for _ in store.timesteps]
        for _, states, _ in store.iter_groups(ids.tolist(), group_size=16):
            for s, t in enumerate(store.timesteps):
                scale = 1.0 if reward.output_scale is None else float(reward.output_scale(torch.tensor([t])))
                per_t[s].append(score_latents(reward, states[:, s].float(), t, device=device) / scale)
        for s, t in enumerate(store.timesteps):
            mean, half = mean_ci(np.concatenate(per_t[s]))
            rows.append({"t": int(t), "follow": str(follow), "mean": mean, "ci95": half})
    return pd.DataFrame(rows)


@torch.no_grad()
def disagreement(store: Store, reward: RelativeReward, traj_ids: list[int]) -> np.ndarray:
    """Per trajectory, the mean over timesteps of ``|h_t|^2 / scale_t^2``: how much the two models'
    one-step predictions differ along it, in units of the training set's average (1 = a typical tuple).

    It needs no reward (only the target scale that the fit computed), so it shows where the safer model
    changes the sampling even where the reward does not generalise.
    """
    if reward.output_scale is None:
        scale2 = torch.ones(len(store.timesteps), dtype=torch.double)
    else:  # read on the reward's device; moving the module would move it for the caller too
        timesteps = torch.as_tensor(store.timesteps, device=reward.output_scale.scale.device)
        scale2 = reward.output_scale(timesteps).double().cpu().pow(2)
    energy = {}
    for ids, _, steps in store.iter_groups(traj_ids, group_size=32):
        per_t = steps.double().flatten(2).pow(2).mean(dim=2) / scale2  # (N, S)
        energy.update(zip(ids.tolist(), per_t.mean(dim=1).tolist(), strict=True))
    return np.array([energy[i] for i in traj_ids])


def heldout_cosine(store: Store, reward: RelativeReward, test_ids: list[int], n: int, seed: int,
                   device: str | torch.device) -> dict[str, float]:
    """Mean per-tuple cosine between grad rho and the target, and the explained share of its energy."""
    t, x, target = heldout_tuples(store, test_ids, min(n, len(test_ids) * store.num_steps), seed)
    grads = []
    for i in range(0, len(x), 128):
        _, g = reward.gradient(x[i : i + 128].to(device), t[i : i + 128].to(device))
        grads.append(g.cpu())
    grad = torch.cat(grads).flatten(1).double()
    h = target.flatten(1).double()
    cos = torch.nn.functional.cosine_similarity(grad, h, dim=1, eps=1e-30)
    weight = reward.loss_weight(t).double() if reward.output_scale is not None else torch.ones(len(t), dtype=torch.double)
    explained = 1 - ((grad - h).pow(2).mean(1) * weight).sum() / (h.pow(2).mean(1) * weight).sum()
    return {"heldout_cosine": float(cos.mean()), "heldout_explained": float(explained)}


def evaluate(run_dir: str | Path, cfg: EvaluateConfig, device: str = "cpu",
             ground_truth: GroundTruth | None = None, concept: str | None = None) -> dict:
    """Write ``metrics.json``, ``scores.parquet`` and plots into ``run_dir``; return the metrics.

    A ``metrics.json`` computed from the same reward weights, split and settings is returned as it is.
    """
    run_dir = Path(run_dir)
    # 1. The run and its store; metrics computed from the same inputs are kept.
    manifest = load_fit_manifest(run_dir)
    store = Store.open(manifest["store"])
    split = load_split(run_dir)
    inputs = {"config": cfg.__dict__, "reward": file_digests(run_dir / "reward"),
              "split": sha256_file(run_dir / "split.csv"), "store": sha256_file(store.root / "manifest.json"),
              "concept": concept, "ground_truth": ground_truth is not None,
              "metrics_protocol": PROTOCOL}
    previous = read_json(run_dir / "metrics.json")
    if same_inputs(previous, inputs) and (run_dir / "scores.parquet").is_file():
        return previous
    reward = RelativeReward.from_pretrained(run_dir / "reward", device=device)

    # 2. Final-sample rewards.
    scores, rule = scores_table(store, split, reward, cfg, device)

    # 3. Separation and breakdowns on held-out prompts.
    test = scores["split"] == "test"
    scores.loc[test, "disagreement"] = disagreement(store, reward, scores.loc[test, "traj_id"].astype(int).tolist())
    scores.loc[test, "correct"] = heldout_verdicts(scores[test]).astype(float)
    metrics: dict = {**separation(scores), "per_category": per_category(scores),
                     "attribute_breakdown": attribute_breakdown(scores)}

    # 4. Reward along the diffusion.
    curve = timestep_curve(store, reward, scores, cfg.curve_trajectories, cfg.seed, device)
    metrics["per_timestep"] = curve.to_dict(orient="records")

    # 5. Gradient alignment on held-out tuples.
    test_ids = scores.loc[scores["split"] == "test", "traj_id"].astype(int).tolist()
    metrics.update(heldout_cosine(store, reward, test_ids, cfg.cosine_tuples, cfg.seed, device))

    # 6. Ground truth, where a labeller knows what the images show.
    if ground_truth is not None:
        test_rows = scores[test]
        shows = ground_truth([Path(p) for p in test_rows["image_path"]])
        scores.loc[test_rows.index, "shows_concept"] = shows.astype(float)
        base = (test_rows["follow"] == "base").to_numpy()
        metrics["concept"] = concept
        base_rewards, base_shows = test_rows["reward"].to_numpy()[base], shows[base]
        metrics["concept_auroc"] = concept_auroc(base_rewards, base_shows)
        metrics["concept_auroc_ci95"] = prompt_interval(
            test_rows[base], lambda rows: concept_auroc(base_rewards[rows], base_shows[rows]))
        metrics["concept_share_base"] = float(np.mean(shows[base])) if base.any() else float("nan")
        metrics["concept_share_safer"] = float(np.mean(shows[~base])) if (~base).any() else float("nan")
        metrics["concept_rule_accuracy"] = concept_rule_accuracy(test_rows, shows)
        metrics.update(concept_prompt_accuracy(test_rows, test_rows["correct"].to_numpy(), concept))

    # 7. Artifacts.
    scores.to_parquet(run_dir / "scores.parquet", index=False)
    plots.reward_histogram(scores[scores["split"] == "test"], run_dir / "reward_histogram.png")
    plots.reward_per_timestep(curve, run_dir / "reward_per_timestep.png")
    metrics["scored_at"] = rule
    metrics["provenance"] = provenance()
    metrics["inputs"] = inputs
    write_json_atomic(run_dir / "metrics.json", metrics)
    return metrics
