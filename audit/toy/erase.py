"""Erase a colour from a toy model by fine-tuning its UNet (ESD-style negative guidance with preservation).

Following Gandikota et al. (ESD, ICCV 2023), the fine-tuned UNet is taught, for captions that ask for
the concept, the frozen model's prediction steered *away* from the concept:

    target(x_t, c) = eps*(x_t, c) - eta * (eps*(x_t, concept) - eps*(x_t, ""))

where eps* is the frozen original and ``concept`` is the bare colour word (a caption form the toy
was trained on). Captions that name no colour ("circle") get the same target, so that the erased
model draws no concept-coloured shapes at all; every other caption, and the empty caption, keeps the
frozen prediction (preservation; shifting the empty caption would let classifier-free guidance push
towards the concept). States x_t are noised training images of every colour; half of the captions
ask for the concept whatever the image shows, so the steering is learned on the states the erased
model meets as well as on concept-coloured ones.

Only the cross-attention layers are fine-tuned by default (ESD-x): they are where the text enters the
UNet, so a caption that does not name the concept is changed far less than when every weight moves
(measured in ``EraseConfig.negative_guidance``).

The output directory has the base model's layout with only ``unet/`` replaced, plus a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import Tensor

from audit.toy import data, torch_threads
from audit.toy.model import build_scheduler
from audit.toy.quality import SamplingSettings, evaluate, load_pipeline, pipeline_sampler
from audit.toy.train import Clock, encode_captions, save_pipeline_atomic
from prompts.toy import toy_prompts
from rrf.errors import UserError
from rrf.manifest import claim_output_dir, provenance, read_json, write_json_atomic
from rrf.trainer import Trainer, TrainerConfig

STEER = ("concept", "shown")
"""Values of ``EraseConfig.steer``."""

RECIPES = {"red": (400, 3e-4), "green": (700, 3e-4), "yellow": (700, 3e-4), "blue": (400, 6e-4)}
"""Default (steps, learning rate) per colour, measured with 4 seeds per prompt (concept left on its prompts /
accuracy on the other prompts, base 100% / 99.3%) and audited with ``rrf-audit compare toy DIR``:

* red, 400 steps at 3e-4 (the shipped toy-safe): 6.2% / 97.5%. 600 steps over-erase it (0.0% / 90.9%), as
  does 6e-4 (0.0% / 88.7%).
* green, 700 steps: 0.0% / 98.0%. 400 steps already leave 0.0% / 99.0%, but that eraser hardly moves the
  colour-free prompts, and its audit ranked the base model's green images above its other ones (concept
  AUROC 0.28 on the default split, 4 images not green among 27).
* yellow, 700 steps: 1.6% / 99.3%. 400 steps leave 1.6% / 99.8%; its audit separated 87.5% of the samples
  of the prompts that invite yellow (target 90%).
* blue, the hardest colour to erase, 400 steps at 6e-4: 5.5% / 96.6%. At 3e-4, 400 steps leave 17.6% / 97.2%
  (8 seeds) and 700 leave 9.4%; sampling the training timesteps as T u^p instead of uniformly did less at
  3e-4: p 2 (more low noise) 18.0% / 94.9%, p 0.5 9.4% / 97.1%.

(Red at 6e-4 and the u^p runs used a batched step whose float rounding differs; blue at 6e-4 came out
4.7% / 96.6% with it.)"""


@dataclass
class EraseConfig:
    concept: str = "red"
    """The colour to erase (one of the toy data's colours)."""
    seed: int = 0
    threads: int = 1
    """torch CPU threads (part of the recipe: the bytes of the weights depend on it, see ToyTrainConfig)."""
    steps: int | None = None
    """Fine-tuning steps; None takes the concept's from ``RECIPES``."""
    batch_size: int = 64
    lr: float | None = None
    """Learning rate of the fine-tuned weights; None takes the concept's from ``RECIPES``."""
    negative_guidance: float = 1.6
    """eta: how far the target is steered from the concept, in units of the concept's guidance direction.
    Measured on the shipped toy, CFG 7.5, red share on red prompts / accuracy on other prompts (base:
    100% / 99.3%). Whole UNet, lr 1e-4 (8 seeds per prompt): eta 1 (ESD's) 86% / no damage, eta 2 0% / 56%
    (many turned red), eta 3 0% / 41%. Cross-attention only, eta 2 (4 seeds): lr 1e-3 0% / 84%, lr 3e-4
    4.7% / 98.8%. With the unconditional term (``uncond_weight`` 1, which makes the same eta erase harder),
    cross-attention, lr 3e-4, 400 steps, 2 seeds per prompt (base 2.9% red elsewhere / 100%): eta 2 0% /
    91.7%, eta 1.75 1.6% / 95.1%, eta 1.5 12.5% / 97.5%; eta 2 for 250 steps 44% / 97.1%. eta 1.6, the default
    (the shipped toy-safe, 8 seeds): 5.5% / 96.9% (base 99.8%)."""
    trainable: str = "cross-attention"
    """Which UNet weights are fine-tuned: "cross-attention" (ESD-x: only the layers that read the text,
    so captions without the concept are changed less) or "all" (ESD-u)."""
    steer: str = "concept"
    """Which training pairs are taught the steered target (the empty caption never is):
    "concept": captions naming the concept, and captions naming no colour whatever the image shows (the
    shipped toy-safe); "shown": captions naming the concept, and any caption paired with an image of the
    concept, so that colour-free captions are steered only where the image would show it. Measured on the
    shipped toy, red, 2 seeds per prompt: "shown" leaves 0.0% red on red prompts and costs 0.5 points of
    accuracy elsewhere; "concept" (400 steps) 4.3% / 0.7 points (8 seeds). "concept" sends every colour-free
    prompt to blue, and its one-step predictions differ from the base's as much on blue prompts as on red
    ones; with "shown", red prompts carry 68-86% of the difference."""
    uncond_weight: float = 1.0
    """Weight of an extra loss term that holds the empty caption's prediction to the frozen model's on every
    state of the batch. Classifier-free guidance at scale w samples with eps("") + w (eps(c) - eps("")):
    a drift of the empty caption's prediction enters every prompt's step (1 - w) times, 6.5 times at the
    toy's 7.5, and the 10% of empty captions in the training captions do not keep it still. Measured
    without it (the toy-safe of before), on blue prompts the drift term carried 83-97% of the energy of
    the two models' guided difference at t = 900 and 500: the safer model changed blue prompts as much as
    red ones, and the audit's concept AUROC was 0.44. With weight 1 the drift is 14-19x smaller (t = 900,
    500, 100); the guided difference on "red circle" is 14x (t = 900) and 49x (t = 500) that on "blue
    circle", where it was 1.2x and 6.7x; and blue prompts carry 0.18x the mean disagreement, not 1.51x."""
    p_concept_caption: float = 0.5
    """Fraction of training captions that ask for the concept (the rest name the image's own colour)."""
    eval_seeds_per_prompt: int = 4
    """Images per prompt for the before/after figures in the manifest (0: skip the measurement)."""
    sampling: SamplingSettings = field(default_factory=SamplingSettings)

    def __post_init__(self) -> None:
        steps, lr = RECIPES.get(self.concept, (None, None))  # an unknown concept is refused by ``erase``
        self.steps = steps if self.steps is None else self.steps
        self.lr = lr if self.lr is None else self.lr

    @classmethod
    def tiny(cls, concept: str = "red") -> EraseConfig:
        return cls(concept=concept, steps=40, batch_size=8, lr=1e-3, eval_seeds_per_prompt=0)


def erase(base: str | Path, out: str | Path, cfg: EraseConfig, progress: bool = True) -> dict:
    """Fine-tune ``base``'s UNet to avoid ``cfg.concept``; write the erased model to ``out``; return the manifest."""
    if cfg.concept not in data.COLOURS:
        raise UserError(f"cannot erase {cfg.concept!r}: the toy knows the colours {', '.join(data.COLOURS)}; "
                        "pass one of them with --concept")
    if not cfg.lr > 0:
        raise UserError(f"--lr must be positive, got {cfg.lr}; the default for {cfg.concept} is {RECIPES[cfg.concept][1]:g}")
    if cfg.steer not in STEER:
        raise UserError(f"unknown --steer {cfg.steer!r}; choose {' or '.join(STEER)}")
    base, out = Path(base), Path(out)
    if not (base / "model_index.json").is_file():
        raise UserError(f"{base} is not a toy model directory (no model_index.json); pass a directory made by "
                        "`rrf-audit toy train` or the shipped toy")
    claim_output_dir(out, "toy-erase", {"base": str(base.resolve()), **asdict(cfg)})
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        return json.loads(manifest_path.read_text())
    clock = Clock()
    with torch_threads(cfg.threads):
        pipe = load_pipeline(str(base))
        pipe.unet = train_erased_unet(pipe, cfg, out / "training", progress)
        save_pipeline_atomic(pipe, out)
        clock.lap("erase")
        quality = None
        if cfg.eval_seeds_per_prompt:
            quality = measure_erasure(base, out, cfg.concept, cfg.eval_seeds_per_prompt, cfg.seed, cfg.sampling)
            clock.lap("quality")
    shutil.rmtree(out / "training" / "checkpoints", ignore_errors=True)
    manifest = {"kind": "toy-erased-model", "concept": cfg.concept, "base": str(base), "config": asdict(cfg),
                "seed": cfg.seed, "base_unet_sha256": _sha256(base / "unet" / "diffusion_pytorch_model.safetensors"),
                "quality": quality, "time": clock.times, "load_average": os.getloadavg(),
                "base_manifest": read_json(base / "manifest.json"), "provenance": provenance()}
    write_json_atomic(manifest_path, manifest)
    return manifest


def steered_mask(captions: list[str], image_colours: Tensor, concept: str, steer: str) -> Tensor:
    """(N,) bool: which (caption, image) pairs are taught the steered target (see ``EraseConfig.steer``)."""
    colours = list(data.COLOURS)
    named = torch.tensor([concept in c.split() for c in captions], dtype=torch.bool)
    if steer == "concept":
        colour_free = torch.tensor([bool(c.split()) and not any(k in c.split() for k in colours) for c in captions],
                                   dtype=torch.bool)
        return named | colour_free
    shows = (image_colours == colours.index(concept)) & torch.tensor([bool(c) for c in captions], dtype=torch.bool)
    return named | shows


def train_erased_unet(pipe, cfg: EraseConfig, work_dir: Path, progress: bool = True):
    """The fine-tuning loop: batches (states, captions, frozen targets) are a pure function of the step."""
    import copy

    frozen = pipe.unet.eval().requires_grad_(False)
    text_encoder = pipe.text_encoder.eval().requires_grad_(False)
    vae = pipe.vae.eval().requires_grad_(False)
    tokenizer = pipe.tokenizer
    unet = copy.deepcopy(frozen).train().requires_grad_(cfg.trainable == "all")
    if cfg.trainable == "cross-attention":
        for name, p in unet.named_parameters():
            p.requires_grad_(".attn2." in name)
    elif cfg.trainable != "all":
        raise UserError(f"unknown trainable weights {cfg.trainable!r}; choose cross-attention or all")
    scheduler = build_scheduler()
    colours = list(data.COLOURS)
    concept_index = colours.index(cfg.concept)
    with torch.no_grad():
        concept_emb, empty_emb = text_encoder(encode_captions(tokenizer, [cfg.concept, ""]))[0]

    @torch.no_grad()
    def batches(step: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        s = data.scenes(cfg.batch_size, g)
        ask = torch.rand(cfg.batch_size, generator=g) < cfg.p_concept_caption
        caption_colour = torch.where(ask, torch.full_like(s.colour, concept_index), s.colour)
        captions = data.captions(replace(s, colour=caption_colour), g)
        latents = vae.encode(data.render(s) * 2 - 1).latent_dist.sample(generator=g) * vae.config.scaling_factor
        noise = torch.randn(latents.shape, generator=g)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        noisy = scheduler.add_noise(latents, noise, t)
        emb = text_encoder(encode_captions(tokenizer, captions))[0]
        steered = steered_mask(captions, s.colour, cfg.concept, cfg.steer)
        target, eps_empty = frozen_targets(frozen, noisy, t, emb, steered, concept_emb, empty_emb,
                                           cfg.negative_guidance)
        return noisy, t, emb, target, eps_empty

    def loss_fn(model, batch):
        return erase_loss(model, *batch, empty_emb, cfg.uncond_weight)

    config = TrainerConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10), ema_decay=0.99,
                           checkpoint_every=max(cfg.steps // 4, 1), keep_checkpoints=1,
                           log_every=max(min(25, cfg.steps // 10), 1), eval_every=0, seed=cfg.seed, progress=progress)
    trainer = Trainer(unet, loss_fn, batches, config, work_dir, description=f"erasing {cfg.concept!r}")
    return trainer.train()


def frozen_targets(frozen, noisy: Tensor, t: Tensor, emb: Tensor, steered: Tensor, concept_emb: Tensor,
                   empty_emb: Tensor, negative_guidance: float) -> tuple[Tensor, Tensor]:
    """(target, frozen empty-caption prediction) of a batch; ``steered`` (N,) bool marks the steered rows.

    One frozen pass over caption, concept and empty caption for every row. (Running the concept only on
    the steered rows, and the two trainable passes as one batch, is 1.09x faster per step and computes the
    same function, but changes float rounding, so the shipped toy-safe's bytes would no longer reproduce.)
    """
    n = len(noisy)
    eps = frozen(noisy.repeat(3, 1, 1, 1), t.repeat(3),
                 torch.cat([emb, concept_emb.expand(n, -1, -1), empty_emb.expand(n, -1, -1)])).sample
    eps_caption, eps_concept, eps_empty = eps.chunk(3)
    target = eps_caption - steered.float()[:, None, None, None] * negative_guidance * (eps_concept - eps_empty)
    return target, eps_empty


def erase_loss(model, noisy: Tensor, t: Tensor, emb: Tensor, target: Tensor, eps_empty: Tensor,
               empty_emb: Tensor, uncond_weight: float) -> tuple[Tensor, dict]:
    """Distance to the steered target, plus ``uncond_weight`` x the empty caption's drift from the frozen model."""
    loss = (model(noisy, t, emb).sample - target).pow(2).mean()
    logs = {"loss": float(loss.detach())}
    if uncond_weight:
        drift = (model(noisy, t, empty_emb.expand(len(noisy), -1, -1)).sample - eps_empty).pow(2).mean()
        loss = loss + uncond_weight * drift
        logs["uncond_drift"] = float(drift.detach())
    return loss, logs


def measure_erasure(base: str | Path, erased: str | Path, concept: str, seeds_per_prompt: int, seed: int = 0,
                    settings: SamplingSettings = SamplingSettings()) -> dict:
    """Concept share on prompts naming the concept, accuracy on all other prompts, base vs erased (same seeds)."""
    prompts = toy_prompts()
    concept_prompts = [p for p in prompts if p.attribute("colour") == concept]
    other_prompts = [p for p in prompts if p.attribute("colour") != concept]
    result = {}
    for name, path in (("base", base), ("erased", erased)):
        sampler = pipeline_sampler(load_pipeline(str(path)), settings)
        on_concept, _ = evaluate(sampler, concept_prompts, seeds_per_prompt, seed)
        on_other, _ = evaluate(sampler, other_prompts, seeds_per_prompt, seed)
        result[name] = {"concept_share_on_concept_prompts": on_concept["colour_share"][concept],
                        "concept_share_on_other_prompts": on_other["colour_share"][concept],
                        "other_prompts_accuracy": on_other["attribute_accuracy"], "other": on_other}
    result["other_accuracy_drop"] = result["base"]["other_prompts_accuracy"] - result["erased"]["other_prompts_accuracy"]
    return result


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
