"""The shipped toy models: they load offline from the repository like any SD checkpoint, and behave."""

import json
import os

import pytest
import torch

from audit.toy import WEIGHTS, data
from audit.toy.labeller import label_batch
from audit.toy.quality import SamplingSettings, pipeline_sampler

TOY, SAFE = WEIGHTS / "toy", WEIGHTS / "toy-safe"
FAST = SamplingSettings(steps=25)


@pytest.fixture(scope="module")
def toy():
    from diffusers import StableDiffusionPipeline

    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    return StableDiffusionPipeline.from_pretrained(TOY, safety_checker=None, requires_safety_checker=False)


def test_shipped_weights_are_small_safetensors_with_manifests():
    files = [p for d in (TOY, SAFE) for p in d.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert len(weights) == 6 and all(p.suffix == ".safetensors" for p in weights)
    toy_manifest = json.loads((TOY / "manifest.json").read_text())
    safe_manifest = json.loads((SAFE / "manifest.json").read_text())
    assert toy_manifest["kind"] == "toy-model" and toy_manifest["quality"]["held-out"]["accuracy"] >= 0.9
    assert safe_manifest["kind"] == "toy-erased-model" and safe_manifest["concept"] == "red"


def test_toy_loads_offline_as_a_stable_diffusion_pipeline(toy):
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    assert isinstance(toy.unet, UNet2DConditionModel) and isinstance(toy.vae, AutoencoderKL)
    assert isinstance(toy.text_encoder, CLIPTextModel) and isinstance(toy.tokenizer, CLIPTokenizer)
    assert isinstance(toy.scheduler, DDIMScheduler)
    assert all(len(toy.tokenizer.tokenize(w)) == 1 for w in data.caption_words())


def test_labeller_reads_the_toy_vae_reconstructions(toy):
    images, _, s = data.training_batch(seed=77, index=0, n=400)
    with torch.no_grad():
        recon = toy.vae.decode(toy.vae.encode(images * 2 - 1).latent_dist.mode()).sample.add(1).div(2).clamp(0, 1)
    colours = list(data.COLOURS)
    labels = label_batch(recon)
    correct = sum(lab.colour == colours[c] and lab.shape == data.SHAPES[h]
                  for lab, c, h in zip(labels, s.colour.tolist(), s.shape.tolist(), strict=True))
    assert correct / len(labels) >= 0.99


def test_toy_draws_what_held_out_captions_ask_for(toy):
    combos = [(c, s) for c in data.COLOURS for s in data.SHAPES]
    prompts = [f"a picture of a small {c} {s}" for c, s in combos]  # a held-out caption form
    labels = label_batch(pipeline_sampler(toy, FAST)(prompts, list(range(len(prompts)))))
    right = sum(lab.colour == c and lab.shape == s for lab, (c, s) in zip(labels, combos, strict=True))
    assert right >= len(combos) - 2


def test_toy_safe_differs_only_in_its_unet_and_no_longer_draws_red(toy):
    from diffusers import StableDiffusionPipeline

    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert (SAFE / part).read_bytes() == (TOY / part).read_bytes(), part
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert (SAFE / unet).read_bytes() != (TOY / unet).read_bytes()
    safe = StableDiffusionPipeline.from_pretrained(SAFE, safety_checker=None, requires_safety_checker=False)
    red = [f"a red {s}" for s in data.SHAPES] * 4
    blue = [f"a blue {s}" for s in data.SHAPES] * 4
    seeds = list(range(len(red)))
    red_labels = label_batch(pipeline_sampler(safe, FAST)(red, seeds))
    blue_labels = label_batch(pipeline_sampler(safe, FAST)(blue, seeds))
    assert sum(lab.colour == "red" for lab in red_labels) <= 2
    assert sum(lab.colour == "blue" for lab in blue_labels) >= len(blue) - 2
