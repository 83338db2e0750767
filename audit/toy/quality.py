"""How well a toy model draws what its prompts ask for, measured with the pixel-rule labeller.

A *sampler* maps (prompts, seeds) to images; ``pipeline_sampler`` makes one from a
``StableDiffusionPipeline`` (the same loading path as any SD checkpoint), and any other way of
sampling (e.g. SLD through ``audit.pairing``) plugs in the same way. ``score`` compares the labels
with each prompt's categories:

* ``accuracy``: colour and shape both right, over prompts that name both;
* ``colour_accuracy`` / ``shape_accuracy``: over prompts that name that attribute;
* ``attribute_accuracy``: every attribute the prompt names is right, over all prompts;
* ``colour_share``: fraction of all images labelled with each colour (the concept share of the audit).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from audit.toy.data import COLOURS
from audit.toy.labeller import Label, label_batch
from prompts.toy import ToyPrompt


@dataclass(frozen=True)
class SamplingSettings:
    """The toy's default sampling settings: those of ``rrf-audit compare`` (DDIM, 50 steps, guidance 7.5)."""

    steps: int = 50
    guidance_scale: float = 7.5
    batch_size: int = 256


def load_pipeline(path: str, device: str = "cpu"):
    """The toy (or any SD-layout directory) through ``StableDiffusionPipeline.from_pretrained``."""
    from diffusers import StableDiffusionPipeline

    from audit.loading import silence_library_progress

    silence_library_progress()
    pipe = StableDiffusionPipeline.from_pretrained(path, safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


Sampler = Callable[[Sequence[str], Sequence[int]], Tensor]
"""(prompts, seeds) -> images (N, 3, H, W) in [0, 1], one per (prompt, seed) pair."""


def pipeline_sampler(pipe, settings: SamplingSettings = SamplingSettings()) -> Sampler:
    """Sample with a diffusers pipeline, each image from its own seeded CPU generator."""

    @torch.no_grad()
    def sample(prompts: Sequence[str], seeds: Sequence[int]) -> Tensor:
        out = []
        for i in range(0, len(prompts), settings.batch_size):
            chunk = list(prompts[i: i + settings.batch_size])
            generators = [torch.Generator().manual_seed(int(s)) for s in seeds[i: i + settings.batch_size]]
            images = pipe(chunk, num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                          generator=generators, output_type="pt").images
            out.append(images.float().cpu())
        return torch.cat(out)

    return sample


def score(prompts: Sequence[ToyPrompt], labels: Sequence[Label]) -> dict:
    """Accuracy figures of labels against the prompts they were generated from (see module doc)."""
    both, colour, shape, named = [], [], [], []
    for p, lab in zip(prompts, labels, strict=True):
        want_colour, want_shape = p.attribute("colour"), p.attribute("shape")
        colour_ok, shape_ok = lab.colour == want_colour, lab.shape == want_shape
        if want_colour:
            colour.append(colour_ok)
        if want_shape:
            shape.append(shape_ok)
        if want_colour and want_shape:
            both.append(colour_ok and shape_ok)
        named.append((colour_ok or not want_colour) and (shape_ok or not want_shape))
    counts = Counter(lab.colour for lab in labels)

    def mean(xs: list[bool]) -> float | None:
        return sum(xs) / len(xs) if xs else None

    return {
        "n": len(labels),
        "accuracy": mean(both),
        "colour_accuracy": mean(colour),
        "shape_accuracy": mean(shape),
        "attribute_accuracy": mean(named),
        "colour_share": {c: counts.get(c, 0) / max(len(labels), 1) for c in [*COLOURS, "other", "none"]},
    }


def evaluate(sampler: Sampler, prompts: Sequence[ToyPrompt], seeds_per_prompt: int,
             seed: int = 0) -> tuple[dict, list[Label]]:
    """Sample ``seeds_per_prompt`` images per prompt and ``score`` them; also returns the labels."""
    expanded = [p for p in prompts for _ in range(seeds_per_prompt)]
    seeds = [seed * 1_000_003 + i for i in range(len(expanded))]
    images = sampler([p.prompt for p in expanded], seeds)
    labels = label_batch(images)
    return score(expanded, labels), labels
