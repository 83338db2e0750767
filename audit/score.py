"""`rrf-audit score`: the fitted reward of new images or of new prompts' samples.

* Images are VAE-encoded with the run's base model and scored by the rule of ``rrf-audit evaluate``
  (the latent noised into the middle of the diffusion, averaged over timesteps and noise draws; see
  ``EvaluateConfig.score_band``), so their scores are on the scale of the run's own samples; or at one
  chosen timestep: at the last sampling timestep the clean latent as is, at a larger ``t`` noised to
  ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` with a seeded ``eps``.
* A prompt file is sampled by the base model with the run's own generation settings (through
  ``audit.generate``, so the samples are reproducible and resumable), then its final latents are scored.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from audit.evaluate import EvaluateConfig, image_scores, score_latents
from audit.fit import load_fit_manifest
from audit.store import Store
from rrf.errors import UserError
from rrf.reward import RelativeReward

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp"}
_SAMPLING_SETTINGS = ("steps", "guidance", "resolution", "batch_size", "seed", "scheduler", "store_dtype", "concept",
                      "sld_preset", "sld_overrides")


@dataclass
class ScoreConfig:
    timestep: int | None = None
    """Diffusion timestep to score at (one the reward was trained on); default: evaluate's scoring rule."""
    noise_seed: int = 0
    """Seed of the noise added to image latents (evaluate uses 0: the same draws as its own scores)."""
    batch_size: int = 16
    device: str = "cpu"


def _image_paths(inputs: list[Path]) -> list[Path]:
    paths: list[Path] = []
    for item in inputs:
        if item.is_dir():
            paths += sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif item.is_file():
            paths.append(item)
        else:
            raise UserError(f"{item} does not exist; pass image files, a folder of images or a prompt file")
    if not paths:
        raise UserError(f"no images found in {', '.join(map(str, inputs))} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return paths


def _run(run_dir: Path, cfg: ScoreConfig) -> tuple[dict, Store, RelativeReward, int | None]:
    manifest = load_fit_manifest(run_dir)
    store = Store.open(manifest["store"])
    reward = RelativeReward.from_pretrained(run_dir / "reward", device=cfg.device)
    t = cfg.timestep
    if t is not None and t not in store.timesteps:
        raise UserError(f"the reward was trained at timesteps {store.timesteps[0]}..{store.timesteps[-1]} "
                        f"({len(store.timesteps)} values); --timestep {t} is not one of them")
    return manifest, store, reward, t


@torch.no_grad()
def score_images(run_dir: str | Path, inputs: list[Path], cfg: ScoreConfig) -> pd.DataFrame:
    """One row per image: path and reward."""
    from audit.pairing import ModelPair
    from audit.registry import resolve

    run_dir = Path(run_dir)
    _, store, reward, t = _run(run_dir, cfg)
    paths = _image_paths(inputs)
    models = store.manifest["models"]
    pair = ModelPair.load(resolve(models["base"]["name"]), resolve(models["base"]["name"]), device=cfg.device)
    vae, size = pair.vae, store.manifest["resolution"]
    latents = []
    for path in paths:
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise UserError(f"{path} is not a readable image ({exc.__class__.__name__}); remove it or convert it to PNG") from None
        x = torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)[None].to(cfg.device, vae.dtype)
        latents.append(vae.encode(x).latent_dist.mean.float().cpu() * vae.config.scaling_factor)
    x0 = torch.cat(latents)
    if t is not None and t != store.timesteps[-1]:
        abar = float(pair.scheduler.alphas_cumprod[t])
        eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(cfg.noise_seed))
        x0 = abar**0.5 * x0 + (1 - abar) ** 0.5 * eps
    rewards, scored_at = _score(store, reward, x0, t, cfg)
    return pd.DataFrame({"input": [str(p) for p in paths], "timestep": scored_at, "reward": rewards})


def _score(store: Store, reward: RelativeReward, x0: torch.Tensor, t: int | None, cfg: ScoreConfig
           ) -> tuple[np.ndarray, str]:
    """Rewards of (possibly already noised) latents at ``t``, or by evaluate's rule; and what the column says."""
    if t is not None:
        return score_latents(reward, x0, t, cfg.batch_size, cfg.device), str(t)
    rewards, rule = image_scores(store, reward, x0, EvaluateConfig(batch_size=cfg.batch_size, seed=cfg.noise_seed),
                                 cfg.device)
    return rewards, "band " + ",".join(map(str, rule["timesteps"]))


def score_prompts(run_dir: str | Path, prompt_file: Path, out_dir: str | Path, cfg: ScoreConfig,
                  limit: int | None = None, progress: bool = True) -> pd.DataFrame:
    """Sample each prompt with the base model (the run's generation settings) and score the final latents."""
    from audit.generate import GenerateConfig, generate

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _, store, reward, t = _run(run_dir, cfg)
    original = store.manifest["config"]
    # The sampling settings of the run (not its prompt selection), so new samples are comparable.
    settings = {k: original[k] for k in _SAMPLING_SETTINGS if k in original}
    settings["base"], settings["safer"] = original["base"]["name"], original["safer"]["name"]
    gen_cfg = GenerateConfig(**{**settings, "prompts": str(prompt_file), "limit": limit, "follow": "base",
                                "device": cfg.device})
    generate(gen_cfg, out_dir / "samples", progress=progress)
    samples = Store.open(out_dir / "samples")
    table = samples.trajectories.copy()
    table["reward"], table["timestep"] = _score(store, reward, samples.final_latents(table["traj_id"].tolist()), t, cfg)
    table["image"] = [str(samples.image_path(i)) for i in table["traj_id"]]
    return table[["prompt_id", "prompt", "categories", "seed", "image", "timestep", "reward"]]
