"""A base and a safer text-to-image model that step from the same latent with shared UNet passes.

``ModelPair.load(base, expert)`` loads both sides through ``audit.loading`` (identical components once),
checks that they share a latent space and a noise schedule, and plans the UNet calls of a step:
every UNet is called once per step on the batch of all conditionings any side needs from it.

======================================  ====================  ===========================
pair                                    conditionings         UNet evaluations per step
======================================  ====================  ===========================
base + SLD on the same weights          uncond, prompt,       3 (one batched call)
                                        concept
two checkpoints (e.g. ESD fine-tune)    uncond, prompt each   4 (two batched calls)
======================================  ====================  ===========================

``pair_step(x, t, cond, state) -> (base_next, expert_next)`` computes both models' next latents from
the same ``x`` (the rrf ``PairStep``). Each side steps its *own copy* of the scheduler, exactly once
per step, so multistep solvers (DPM-Solver++, UniPC) keep each model's own history and nothing is
advanced twice; schedulers that are stochastic or repeat a timestep (PNDM) are refused, since one
tuple must be "both models' deterministic step from this state".

Latents stay in float32 whatever the UNet's dtype (fp16 on GPU), so the small difference between
the two next latents is not rounded away.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from audit.loading import ComponentLoader, LocatedModel, locate_pair
from audit.registry import ModelSpec
from audit.sld import SLDConfig, SLDState, cfg_noise, sld_noise
from rrf.errors import UserError

SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "unipc": "UniPCMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "pndm": "PNDMScheduler",
}
"""``--scheduler`` choices (``model`` uses the base checkpoint's own class). DDIM (eta = 0) is the default."""
_NOISE_SCHEDULE_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                        "prediction_type")

CondKey = tuple[str, ...]  # ("uncond"|"prompt", text_key) or ("concept", text_key, concept text)


@dataclass
class Side:
    """One model of the pair: a UNet and a text encoder (possibly shared with the other side) and optional SLD."""

    role: str
    model: LocatedModel
    unet: Any
    text_encoder: Any
    tokenizer: Any
    sld: SLDConfig | None

    @property
    def text_key(self) -> str:
        return self.model.fingerprints["text_encoder"] + self.model.fingerprints["tokenizer"]

    def keys(self, cfg: bool) -> list[CondKey]:
        """Conditionings this side needs per step, in the order diffusers batches them."""
        if not cfg:
            return [("prompt", self.text_key)]
        keys = [("uncond", self.text_key), ("prompt", self.text_key)]
        return keys + [("concept", self.text_key, self.sld.concept)] if self.sld else keys


@dataclass
class PairState:
    """Per-batch sampling state: one scheduler copy and one SLD state per side, and a UNet-evaluation counter."""

    schedulers: list[Any]
    sld: list[SLDState]
    unet_evaluations: int = 0
    index: int = 0
    """Denoising steps taken so far."""

    @property
    def timesteps(self) -> list[int]:
        """The sampling timesteps as integers (what the store records and the reward is conditioned on)."""
        return [int(t) for t in self.schedulers[0].timesteps]

    def current_timestep(self, t: int) -> Tensor:
        """The scheduler's own timestep value for this step (float for sigma schedulers), checked against ``t``."""
        exact = self.schedulers[0].timesteps[self.index]
        if int(exact) != int(t):
            raise ValueError(f"pair_step called at t={t}, but the sampler is at step {self.index} (t={int(exact)})")
        return exact


@dataclass
class ModelPair:
    base: Side
    expert: Side
    vae: Any
    scheduler: Any
    """Template scheduler; every batch steps deep copies of it (``start``)."""
    guidance_scale: float = 7.5
    groups: list[tuple[Any, list[CondKey]]] = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.guidance_scale > 1.0
        for side in self.sides:
            if side.sld is not None and not (cfg and side.sld.guidance_scale > 1.0):
                raise UserError(f"{side.model.spec.name}: safety guidance needs classifier-free guidance "
                                f"(--guidance > 1, now {self.guidance_scale}) and an SLD guidance scale > 1")
        self.groups = []
        for side in self.sides:
            group = next((g for g in self.groups if g[0] is side.unet), None)
            if group is None:
                self.groups.append((side.unet, []))
                group = self.groups[-1]
            group[1].extend(k for k in side.keys(cfg) if k not in group[1])

    # -- building ----------------------------------------------------------------------------------------

    @classmethod
    def load(cls, base: ModelSpec, expert: ModelSpec, *, scheduler: str = "ddim", guidance_scale: float = 7.5,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> ModelPair:
        """Load both models (shared components once) and build the pair; ``scheduler`` is a ``SCHEDULERS`` key or
        ``model``."""
        return cls.from_located(*locate_pair(base, expert), scheduler=scheduler, guidance_scale=guidance_scale,
                                device=device, dtype=dtype)

    @classmethod
    def from_located(cls, located_base: LocatedModel, located_expert: LocatedModel, *, scheduler: str = "ddim",
                     guidance_scale: float = 7.5, device: str | torch.device = "cpu",
                     dtype: torch.dtype = torch.float32) -> ModelPair:
        """``load`` for models already located (``audit.loading.locate``)."""
        base, expert = located_base.spec, located_expert.spec
        loader = ComponentLoader(torch.device(device), dtype)
        sides = [Side(role, m, loader.get(m, "unet"), loader.get(m, "text_encoder"), loader.get(m, "tokenizer"),
                      m.spec.sld) for role, m in (("base", located_base), ("expert", located_expert))]
        vae = loader.get(located_base, "vae")
        if located_expert.fingerprints["vae"] != located_base.fingerprints["vae"]:
            _check_same_weights(vae, loader.get(located_expert, "vae"), base.name, expert.name)
        base_cfg, expert_cfg = loader.scheduler_config(located_base), loader.scheduler_config(located_expert)
        diffs = [k for k in _NOISE_SCHEDULE_KEYS if base_cfg.get(k) != expert_cfg.get(k)]
        if diffs:
            raise UserError(f"{base.name} and {expert.name} were trained with different noise schedules "
                            f"({', '.join(f'{k}: {base_cfg.get(k)} vs {expert_cfg.get(k)}' for k in diffs)}); "
                            "a relative reward needs two models of the same diffusion process")
        for side in sides:
            if side.unet.config.in_channels != vae.config.latent_channels:
                raise UserError(f"{side.model.spec.name}'s UNet takes {side.unet.config.in_channels} latent channels "
                                f"but the VAE makes {vae.config.latent_channels}; the models do not share a latent space")
        return cls(sides[0], sides[1], vae, make_scheduler(scheduler, base_cfg), guidance_scale)

    @property
    def sides(self) -> tuple[Side, Side]:
        return self.base, self.expert

    @property
    def evaluations_per_step(self) -> int:
        """UNet evaluations per latent per denoising step (= per Algorithm-2 tuple)."""
        return sum(len(keys) for _, keys in self.groups)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        return int(self.base.unet.config.sample_size) * self.vae_scale_factor

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        if resolution % self.vae_scale_factor:
            raise UserError(f"--resolution {resolution} is not a multiple of the VAE's factor {self.vae_scale_factor}")
        size = resolution // self.vae_scale_factor
        return (int(self.base.unet.config.in_channels), size, size)

    def provenance(self) -> dict:
        return {
            "base": self.base.model.provenance(),
            "expert": self.expert.model.provenance(),
            "guidance_scale": self.guidance_scale,
            "unet_evaluations_per_step": self.evaluations_per_step,
            "scheduler": {"class": type(self.scheduler).__name__, "config": dict(self.scheduler.config)},
        }

    # -- sampling ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def conditioning(self, prompts: list[str]) -> dict[CondKey, Tensor]:
        """Text embeddings (B, L, D) of every conditioning any UNet needs, for a batch of prompts."""
        cond: dict[CondKey, Tensor] = {}
        for _, keys in self.groups:
            for key in keys:
                if key in cond:
                    continue
                side = next(s for s in self.sides if s.text_key == key[1])
                if key[0] == "prompt":
                    cond[key] = encode_text(side.tokenizer, side.text_encoder, prompts)
                else:
                    text = "" if key[0] == "uncond" else key[2]
                    cond[key] = encode_text(side.tokenizer, side.text_encoder, [text]).expand(len(prompts), -1, -1)
        return cond

    def start(self, num_inference_steps: int, device: str | torch.device = "cpu") -> PairState:
        """Fresh sampling state for one batch: scheduler copies with ``num_inference_steps`` timesteps."""
        schedulers = []
        for _ in self.sides:
            scheduler = copy.deepcopy(self.scheduler)
            scheduler.set_timesteps(num_inference_steps, device=device)
            schedulers.append(scheduler)
        check_pairable(schedulers[0])
        return PairState(schedulers, [SLDState() for _ in self.sides])

    @torch.no_grad()
    def pair_step(self, x: Tensor, t: int, cond: dict[CondKey, Tensor], state: PairState) -> tuple[Tensor, Tensor]:
        """Both models' next latent from the same ``x`` (B, C, H, W) at timestep ``t`` (the state's next timestep);
        advances ``state`` (every side's scheduler copy) by exactly one step."""
        t = state.current_timestep(t)
        model_input = state.schedulers[0].scale_model_input(x, t)
        eps: dict[tuple[int, CondKey], Tensor] = {}
        for unet, keys in self.groups:
            out = unet(torch.cat([model_input] * len(keys)).to(unet.dtype), t,
                       encoder_hidden_states=torch.cat([cond[k] for k in keys]).to(unet.dtype)).sample
            eps.update({(id(unet), k): e.float() for k, e in zip(keys, out.chunk(len(keys)), strict=True)})
            state.unet_evaluations += len(keys) * x.shape[0]
        cfg = self.guidance_scale > 1.0
        nexts = []
        for i, side in enumerate(self.sides):
            pred = {k[0]: eps[(id(side.unet), k)] for k in side.keys(cfg)}
            if side.sld is not None:
                noise, state.sld[i] = sld_noise(pred["uncond"], pred["prompt"], pred["concept"], self.guidance_scale,
                                                side.sld, state.sld[i])
            elif cfg:
                noise = cfg_noise(pred["uncond"], pred["prompt"], self.guidance_scale)
            else:
                noise = pred["prompt"]
            nexts.append(state.schedulers[i].step(noise, t, x).prev_sample)
        state.index += 1
        return nexts[0], nexts[1]

    @torch.no_grad()
    def decode(self, latents: Tensor) -> list:
        """Final latents (B, C, H, W) -> PIL images."""
        from diffusers.image_processor import VaeImageProcessor

        image = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return VaeImageProcessor(vae_scale_factor=self.vae_scale_factor).postprocess(image.float(), output_type="pil")


@torch.no_grad()
def encode_text(tokenizer, text_encoder, texts: list[str]) -> Tensor:
    """CLIP text embeddings (B, L, D) exactly as Stable Diffusion pipelines compute them (padded to max length)."""
    tokens = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                       return_tensors="pt")
    mask = tokens.attention_mask if getattr(text_encoder.config, "use_attention_mask", False) else None
    device = text_encoder.device
    return text_encoder(tokens.input_ids.to(device), attention_mask=None if mask is None else mask.to(device))[0]


def make_scheduler(name: str, config: dict) -> Any:
    """A diffusers scheduler of class ``SCHEDULERS[name]`` (or the checkpoint's own, ``model``) from ``config``."""
    import diffusers

    if name == "model":
        class_name = config.get("_class_name", "DDIMScheduler")
    elif name in SCHEDULERS:
        class_name = SCHEDULERS[name]
    else:
        raise UserError(f"unknown scheduler {name!r}; choose one of {', '.join([*SCHEDULERS, 'model'])}")
    config = {k: v for k, v in config.items() if k != "_class_name"}
    if class_name == "DDIMScheduler":
        config["clip_sample"] = False  # as Stable Diffusion pipelines sample; eta stays 0 (deterministic)
    scheduler = getattr(diffusers, class_name).from_config(config)
    return scheduler


def check_pairable(scheduler: Any) -> None:
    """Refuse schedulers for which "both models' next state from x_t" is ill-defined.

    A stochastic step would add independent noise to the two predictions; a repeated timestep (PNDM's
    PLMS warm-up) re-steps from a stored state rather than from the ``x`` it is given.
    """
    name = type(scheduler).__name__
    timesteps = [float(t) for t in scheduler.timesteps]
    if any(int(a) <= int(b) for a, b in zip(timesteps, timesteps[1:], strict=False)):
        raise UserError(f"the {name} sampler repeats timesteps (its warm-up re-steps from a stored state), so "
                        "the two models cannot both step from the same x_t; use --scheduler ddim (default), dpm or unipc")
    probe = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    outs = []
    with torch.random.fork_rng(devices=[]):
        for seed in (1, 2):
            torch.manual_seed(seed)
            outs.append(copy.deepcopy(scheduler).step(probe, scheduler.timesteps[0], probe).prev_sample)
    if not torch.equal(*outs):
        raise UserError(f"the {name} sampler is stochastic, so the two models' next states would differ by "
                        "independent noise; use a deterministic one: --scheduler ddim (default), dpm, unipc or euler")


def _check_same_weights(a: torch.nn.Module, b: torch.nn.Module, name_a: str, name_b: str) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or any(not torch.equal(sa[k], sb[k]) for k in sa):
        raise UserError(f"{name_a} and {name_b} have different VAEs, so their latents live in different spaces; "
                        "pair models that share the VAE (a safer fine-tune of the same base)")
