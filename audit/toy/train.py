"""Train the toy text-to-image model from scratch and save it as a Stable Diffusion directory.

Two stages, each run by the project's ``Trainer`` (EMA, checkpoints, exact resume; batches are a pure
function of the step, drawn on the fly by ``audit.toy.data``, so there is no dataset on disk):

1. ``AutoencoderKL``: 32x32 RGB <-> 4x8x8 latents (MSE + a small KL term); then the latent scaling
   factor is set so that scaled latents have unit variance, as SD's 0.18215 does for its VAE.
2. ``CLIPTextModel`` and ``UNet2DConditionModel`` trained jointly on epsilon prediction with the SD v1
   noise schedule, Min-SNR loss weighting and empty captions for classifier-free guidance.

Output (``train(out, cfg)``)::

    out/model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/   the pipeline
    out/manifest.json      config, seed, versions, wall times, measured quality (written last)
    out/training/{vae,denoiser}/metrics.jsonl                                   learning curves
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor, nn

from audit.toy import data, torch_threads
from audit.toy.model import (
    ToyModelConfig,
    build_scheduler,
    build_text_encoder,
    build_tokenizer,
    build_unet,
    build_vae,
)
from audit.toy.quality import SamplingSettings, evaluate, load_pipeline, pipeline_sampler
from prompts.toy import toy_prompts
from rrf.manifest import claim_output_dir, provenance, write_json_atomic
from rrf.trainer import Trainer, TrainerConfig

PIPELINE_FILES = ("model_index.json", "unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class ToyTrainConfig:
    seed: int = 0
    """Seeds data, initialisation and noise: the same seed gives the same weights, byte for byte (CPU)."""
    threads: int = 1
    """torch CPU threads. Part of the recipe: float sums are split differently with another thread count,
    so the bytes of the weights depend on it. One thread also stays fast on a busy machine."""
    model: ToyModelConfig = field(default_factory=ToyModelConfig)
    vae_steps: int = 600
    vae_batch_size: int = 64
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-3
    """Weight of the KL term (mean over latent coordinates) against the pixel MSE. Large enough that the
    posterior noise teaches the decoder to snap slightly-off latents back to clean palette colours."""
    steps: int = 3000
    """Denoiser (UNet + text encoder) optimiser steps."""
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 200
    ema_decay: float = 0.999
    p_empty_caption: float = 0.1
    """Fraction of training captions replaced by "" (the unconditional branch of classifier-free guidance)."""
    min_snr_gamma: float | None = 5.0
    """Min-SNR-gamma loss weighting (Hang et al. 2023); None weights every timestep equally."""
    eval_every: int = 500
    """Held-out accuracy (a quick estimate: 2 images per prompt, 25 steps) every N denoiser steps, logged
    to metrics.jsonl; 0: never."""
    eval_seeds_per_prompt: int = 8
    """Images per held-out prompt for the final quality figure in the manifest (a quarter as many for seen prompts)."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    """Sampling settings of the final quality figure (the toy audit's defaults)."""

    @classmethod
    def tiny(cls) -> ToyTrainConfig:
        """Seconds, not minutes: the test-suite smoke profile (the model is not expected to draw well)."""
        return cls(model=ToyModelConfig(vae_channels=(8, 16, 16), unet_channels=(16, 32), text_width=16,
                                        text_heads=2, norm_groups=8, unet_head_dim=8),
                   vae_steps=30, vae_batch_size=16, steps=30, batch_size=16, warmup_steps=5, eval_every=0,
                   eval_seeds_per_prompt=1, sampling=SamplingSettings(steps=4, batch_size=64))


class TextConditionedDenoiser(nn.Module):
    """Text encoder + UNet as one trainable module: (noisy latents, t, token ids) -> predicted noise."""

    def __init__(self, unet: nn.Module, text_encoder: nn.Module):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, latents: Tensor, t: Tensor, input_ids: Tensor) -> Tensor:
        return self.unet(latents, t, self.text_encoder(input_ids)[0]).sample


def _trainer_config(cfg: ToyTrainConfig, steps: int, lr: float, warmup: int, progress: bool) -> TrainerConfig:
    return TrainerConfig(steps=steps, lr=lr, warmup_steps=warmup, ema_decay=cfg.ema_decay, grad_clip=1.0,
                         checkpoint_every=max(steps // 4, 1), keep_checkpoints=1, log_every=max(min(50, steps // 10), 1),
                         eval_every=cfg.eval_every, seed=cfg.seed, progress=progress)


def train_vae(cfg: ToyTrainConfig, work_dir: Path, progress: bool = True):
    """Stage 1: the autoencoder, with ``scaling_factor`` set from the latents' standard deviation."""
    torch.manual_seed(cfg.seed)
    vae = build_vae(cfg.model)

    def batches(step: int) -> Tensor:
        return data.training_batch(cfg.seed, step, cfg.vae_batch_size)[0] * 2 - 1

    def loss_fn(model, x):
        posterior = model.encode(x).latent_dist
        recon = model.decode(posterior.sample()).sample
        mse = (recon - x).pow(2).mean()
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        loss = mse + cfg.vae_kl_weight * kl
        return loss, {"loss": float(loss.detach()), "mse": float(mse.detach()),
                      "kl": float(kl.detach())}

    config = dataclasses.replace(_trainer_config(cfg, cfg.vae_steps, cfg.vae_lr, min(100, cfg.vae_steps // 10), progress),
                                 eval_every=0)
    trainer = Trainer(vae, loss_fn, batches, config, work_dir / "vae", description="toy autoencoder")
    vae = trainer.train()
    with torch.no_grad():
        x = data.training_batch(cfg.seed, -1, 1024)[0] * 2 - 1  # index -1: never a training batch
        std = float(vae.encode(x).latent_dist.mean.std())
    vae.register_to_config(scaling_factor=round(1.0 / std, 5))
    return vae


def encode_captions(tokenizer, captions: list[str]) -> Tensor:
    return tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids


def train_denoiser(cfg: ToyTrainConfig, vae, tokenizer, work_dir: Path, progress: bool = True) -> TextConditionedDenoiser:
    """Stage 2: the UNet and the text encoder, trained jointly on the frozen autoencoder's latents."""
    torch.manual_seed(cfg.seed + 1)
    model = TextConditionedDenoiser(build_unet(cfg.model), build_text_encoder(cfg.model, tokenizer))
    scheduler = build_scheduler()
    alphas_cumprod = scheduler.alphas_cumprod
    vae.requires_grad_(False)
    scale = vae.config.scaling_factor

    @torch.no_grad()
    def batches(step: int) -> tuple[Tensor, Tensor]:
        images, captions, _ = data.training_batch(cfg.seed + 1, step, cfg.batch_size, cfg.p_empty_caption)
        posterior = vae.encode(images * 2 - 1).latent_dist
        latents = posterior.sample(generator=torch.Generator().manual_seed(cfg.seed * 7919 + step)) * scale
        return latents, encode_captions(tokenizer, captions)

    def loss_fn(model, batch):
        latents, ids = batch
        noise = torch.randn_like(latents)
        t = torch.randint(0, len(alphas_cumprod), (len(latents),))
        noisy = scheduler.add_noise(latents, noise, t)
        per_sample = (model(noisy, t, ids) - noise).pow(2).mean(dim=(1, 2, 3))
        if cfg.min_snr_gamma is not None:
            snr = alphas_cumprod[t] / (1 - alphas_cumprod[t])
            per_sample = per_sample * snr.clamp(max=cfg.min_snr_gamma) / snr
        loss = per_sample.mean()
        return loss, {"loss": float(loss.detach())}

    held_out = toy_prompts("held-out")

    quick = replace(cfg.sampling, steps=min(cfg.sampling.steps, 25))

    def validate(ema: TextConditionedDenoiser) -> dict[str, float]:
        pipe = make_pipeline(vae, ema.text_encoder, tokenizer, ema.unet)
        result, _ = evaluate(pipeline_sampler(pipe, quick), held_out, seeds_per_prompt=2, seed=cfg.seed + 12345)
        return {"accuracy": result["accuracy"], "colour_accuracy": result["colour_accuracy"],
                "shape_accuracy": result["shape_accuracy"]}

    trainer = Trainer(model, loss_fn, batches, _trainer_config(cfg, cfg.steps, cfg.lr, cfg.warmup_steps, progress),
                      work_dir / "denoiser", validate=validate if cfg.eval_every else None,
                      description="toy text encoder + UNet")
    return trainer.train()


def make_pipeline(vae, text_encoder, tokenizer, unet, scheduler=None):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler or build_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_pipeline_atomic(pipe, out: Path) -> None:
    """Save ``pipe`` into ``out`` so that a reader sees either the old pipeline or the whole new one.

    Components are written to a temporary directory, then moved in; ``model_index.json`` goes last.
    """
    tmp = out / ".pipeline.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    for name in sorted(os.listdir(tmp), key=lambda n: n == "model_index.json"):
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        os.replace(tmp / name, target)
    tmp.rmdir()


def train(out: str | Path, cfg: ToyTrainConfig, progress: bool = True) -> dict:
    """Train (or resume) the toy into ``out``; returns the manifest. A finished ``out`` is left as it is."""
    out = Path(out)
    claim_output_dir(out, "toy-train", asdict(cfg))
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        import json

        return json.loads(manifest_path.read_text())
    work = out / "training"
    clock = Clock()
    with torch_threads(cfg.threads):
        tokenizer = build_tokenizer(max_length=cfg.model.max_caption_tokens)
        vae = train_vae(cfg, work, progress)
        clock.lap("vae")
        denoiser = train_denoiser(cfg, vae, tokenizer, work, progress)
        clock.lap("denoiser")
        save_pipeline_atomic(make_pipeline(vae, denoiser.text_encoder, tokenizer, denoiser.unet), out)
        quality = measure(out, cfg)
        clock.lap("quality")
    manifest = {"kind": "toy-model", "config": dataclasses.asdict(cfg), "seed": cfg.seed, "quality": quality,
                "time": clock.times, "load_average": os.getloadavg(), "provenance": provenance()}
    for stage in ("vae", "denoiser"):
        shutil.rmtree(work / stage / "checkpoints", ignore_errors=True)
    write_json_atomic(manifest_path, manifest)
    return manifest


def measure(model_dir: str | Path, cfg: ToyTrainConfig) -> dict:
    """Quality of a saved toy on held-out and seen prompts, loaded back from disk as a user would."""
    sampler = pipeline_sampler(load_pipeline(str(model_dir)), cfg.sampling)
    result = {"sampling": asdict(cfg.sampling), "seeds_per_prompt": cfg.eval_seeds_per_prompt}
    for split, seeds in (("held-out", cfg.eval_seeds_per_prompt), ("seen", max(cfg.eval_seeds_per_prompt // 4, 1))):
        result[split], _ = evaluate(sampler, toy_prompts(split), seeds, seed=cfg.seed + 54321)
    return result


class Clock:
    """Wall and CPU seconds per named stage (CPU time is what a busy shared machine does not inflate)."""

    def __init__(self):
        self.times: dict[str, float] = {}
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        self._start = (self._wall, self._cpu)

    def lap(self, name: str) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        self.times[f"{name}_wall_s"], self.times[f"{name}_cpu_s"] = wall - self._wall, cpu - self._cpu
        self._wall, self._cpu = wall, cpu
        self.times["total_wall_s"], self.times["total_cpu_s"] = wall - self._start[0], cpu - self._start[1]
