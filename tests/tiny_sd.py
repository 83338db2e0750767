"""Tiny random-weight Stable Diffusion pipelines for tests (shared by the generation, fit and report tests).

``build_tiny_sd(path)`` saves a complete diffusers StableDiffusion directory (model_index.json, unet/,
vae/, text_encoder/, tokenizer/, scheduler/) with the SD architecture at toy size: a 2-level
``UNet2DConditionModel`` with cross-attention, an ``AutoencoderKL`` with 2x downsampling (16x16 images
<-> 4x8x8 latents) and a 2-layer ``CLIPTextModel``, tokenised by a real ``CLIPTokenizer`` built from the
CLIP BPE vocabulary that open_clip ships. Everything is loaded back through ``from_pretrained`` with
``HF_HUB_OFFLINE=1``, exactly like a downloaded checkpoint.

Components are seeded separately, so ``build_tiny_sd(other, unet_seed=1)`` makes a "fine-tune" whose
VAE, text encoder, tokenizer and scheduler files are byte-identical to the first one's and only the
UNet differs (the two-checkpoint path, as with ``toy``/``toy-safe``).

Use the session fixtures ``tiny_sd`` / ``tiny_sd_finetune`` (import them into a test module) to build
each once per test session.
"""

from __future__ import annotations

import gzip
from functools import lru_cache
from pathlib import Path

import pytest
import torch

LATENT_SIZE = 8  # latents are 4 x 8 x 8; images 16 x 16


@lru_cache(maxsize=1)
def clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's BPE vocabulary and merges, rebuilt from open_clip's ``bpe_simple_vocab_16e6.txt.gz``."""
    import open_clip
    from open_clip.tokenizer import bytes_to_unicode

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    return {token: i for i, token in enumerate(vocab)}, merges


def clip_tokenizer():
    from transformers import CLIPTokenizer

    vocab, merges = clip_bpe()
    # transformers 5: the tokenizers-backed CLIPTokenizer takes the vocab dict and merges as tuples.
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges))
    tokenizer.model_max_length = 77
    return tokenizer


# Architectures: "tiny" for tests; "small" and "sd15" (Stable Diffusion v1.5's shapes, random weights) for bench/.
ARCHS = {
    "tiny": dict(unet=dict(block_out_channels=(16, 32), layers_per_block=1, attention_head_dim=4, norm_num_groups=8,
                           down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                           up_block_types=("UpBlock2D", "CrossAttnUpBlock2D")),
                 vae=dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4),
                 text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2),
                 latent_size=LATENT_SIZE),
    "small": dict(unet=dict(block_out_channels=(64, 128, 128), layers_per_block=1, attention_head_dim=8,
                            norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
                            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2),
                  vae=dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32),
                  text=dict(hidden_size=256, intermediate_size=1024, num_attention_heads=4, num_hidden_layers=4),
                  latent_size=32),
    "sd15": dict(unet=dict(block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, attention_head_dim=8,
                           norm_num_groups=32, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                           up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
                 vae=dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32),
                 text=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12),
                 latent_size=64),
}


def tiny_components(seed: int = 0, unet_seed: int | None = None, arch: str = "tiny") -> dict:
    """Random-weight SD components of architecture ``arch`` with a DDIM scheduler configured like SD v1's."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    spec = ARCHS[arch]
    hidden = spec["text"]["hidden_size"]
    torch.manual_seed(seed if unet_seed is None else unet_seed)
    unet = UNet2DConditionModel(sample_size=spec["latent_size"], in_channels=4, out_channels=4,
                                cross_attention_dim=hidden, **spec["unet"])
    torch.manual_seed(seed + 1)
    levels = len(spec["vae"]["block_out_channels"])
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * levels,
                        up_block_types=("UpDecoderBlock2D",) * levels,
                        sample_size=spec["latent_size"] * 2 ** (levels - 1), **spec["vae"])
    torch.manual_seed(seed + 2)
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=49408, max_position_embeddings=77, bos_token_id=49406,
                                                eos_token_id=49407, pad_token_id=49407, **spec["text"]))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, steps_offset=1, clip_sample=False, set_alpha_to_one=False)
    return {"unet": unet.eval(), "vae": vae.eval(), "text_encoder": text_encoder.eval(),
            "tokenizer": clip_tokenizer(), "scheduler": scheduler}


def build_tiny_sd(path: str | Path, seed: int = 0, unet_seed: int | None = None, arch: str = "tiny") -> Path:
    """Save a random-weight StableDiffusionPipeline (``arch`` from ``ARCHS``) to ``path`` and return it."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(**tiny_components(seed, unet_seed, arch), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path)
    return Path(path)


@pytest.fixture(scope="session")
def tiny_sd(tmp_path_factory) -> Path:
    """A tiny SD directory (the "base")."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "base")


@pytest.fixture(scope="session")
def tiny_sd_finetune(tmp_path_factory) -> Path:
    """Same VAE/text encoder/tokenizer/scheduler files as ``tiny_sd``, a different UNet."""
    return build_tiny_sd(tmp_path_factory.mktemp("tiny-sd") / "finetune", unet_seed=1)


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models run fastest on one thread, and the test machine is shared (import this into a module)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """Run the ``rrf-audit`` entry point in this process (cheaper than a subprocess): ``(exit code, stdout, stderr)``."""
    import sys

    from audit.cli import main

    monkeypatch.setattr(sys, "argv", ["rrf-audit", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
