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

``save_ldm_checkpoint(pipeline_dir, file)`` writes such a pipeline as one full checkpoint with the original
LDM/CompVis key names (``model.diffusion_model.*``, ``first_stage_model.*``,
``cond_stage_model.transformer.*``), like ``v1-5-pruned-emaonly.safetensors``; ``fake_hub_cache`` lays a
directory out like the Hugging Face cache.

Use the session fixtures ``tiny_sd`` / ``tiny_sd_finetune`` (import them into a test module) to build
each once per test session.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import re
import shutil
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


# Diffusers -> original LDM names. Our own mapping (the inverse of what diffusers' single-file converters read),
# so a round trip through those converters checks both.
_LDM_UNET_TOP = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
                 "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}
_LDM_UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
                    "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_LDM_VAE_TOP = {name: name for name in ("encoder.conv_in", "encoder.conv_out", "decoder.conv_in", "decoder.conv_out",
                                        "quant_conv", "post_quant_conv")}
_LDM_VAE_TOP |= {"encoder.conv_norm_out": "encoder.norm_out", "decoder.conv_norm_out": "decoder.norm_out"}
_LDM_VAE_RESNET = {"norm1": "norm1", "conv1": "conv1", "norm2": "norm2", "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_LDM_VAE_SAMPLERS = {"downsamplers": "downsample", "upsamplers": "upsample"}
_LDM_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename(name: str, table: dict[str, str]) -> str:
    """``name`` with its leading module path replaced as ``table`` says (KeyError if no entry fits: a missed name)."""
    for old, new in table.items():
        if name.startswith(old + "."):
            return new + name[len(old):]
    raise KeyError(name)


def ldm_unet_key(key: str, layers: int, attention_up_blocks: set[int]) -> str:
    """The LDM name (without ``model.diffusion_model.``) of a diffusers ``UNet2DConditionModel`` key."""
    per_level = layers + 1  # LDM numbers a level's resnets (each with its attention), then its down/upsampler
    if m := re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.+)", key):
        side, level, kind, j, rest = m[1], int(m[2]), m[3], int(m[4]), m[5]
        if kind == "downsamplers":
            return f"input_blocks.{1 + level * per_level + layers}.0.op.{rest.removeprefix('conv.')}"
        if kind == "upsamplers":
            return f"output_blocks.{level * per_level + layers}.{2 if level in attention_up_blocks else 1}.{rest}"
        index = (1 if side == "down" else 0) + level * per_level + j
        blocks = "input_blocks" if side == "down" else "output_blocks"
        return f"{blocks}.{index}." + (f"0.{_rename(rest, _LDM_UNET_RESNET)}" if kind == "resnets" else f"1.{rest}")
    if m := re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[1] == "attentions":
            return f"middle_block.1.{m[3]}"
        return f"middle_block.{2 * int(m[2])}.{_rename(m[3], _LDM_UNET_RESNET)}"
    return _rename(key, _LDM_UNET_TOP)


def ldm_vae_key(key: str, levels: int) -> str:
    """The LDM name (without ``first_stage_model.``) of a diffusers ``AutoencoderKL`` key."""
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key):
        if m[2] == "attentions":
            return f"{m[1]}.mid.attn_1.{_rename(m[4], _LDM_VAE_ATTENTION)}"
        return f"{m[1]}.mid.block_{int(m[3]) + 1}.{_rename(m[4], _LDM_VAE_RESNET)}"
    if m := re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.(resnets|downsamplers|upsamplers)\.(\d+)\.(.+)", key):
        # LDM numbers the decoder's levels from the lowest resolution up, diffusers in the order they run.
        level = int(m[2]) if m[1] == "encoder.down" else levels - 1 - int(m[2])
        if m[3] == "resnets":
            return f"{m[1]}.{level}.block.{m[4]}.{_rename(m[5], _LDM_VAE_RESNET)}"
        return f"{m[1]}.{level}.{_LDM_VAE_SAMPLERS[m[3]]}.{m[5]}"
    return _rename(key, _LDM_VAE_TOP)


def ldm_state_dict(unet, vae, text_encoder) -> dict[str, torch.Tensor]:
    """The three components' weights under the names of an original Stable Diffusion 1.x checkpoint."""
    attention_up_blocks = {i for i, kind in enumerate(unet.config.up_block_types) if "CrossAttn" in kind}
    tensors = {"model.diffusion_model." + ldm_unet_key(k, unet.config.layers_per_block, attention_up_blocks): v
               for k, v in unet.state_dict().items()}
    for k, v in vae.state_dict().items():
        name = ldm_vae_key(k, len(vae.config.block_out_channels))
        # LDM's VAE attention projects with 1x1 convolutions, diffusers' with linear layers.
        is_projection = re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", name)
        tensors["first_stage_model." + name] = v[:, :, None, None] if is_projection else v
    # transformers >= 5.6 flattened CLIPTextModel; checkpoints keep the older ``text_model.`` level.
    tensors |= {"cond_stage_model.transformer.text_model." + k.removeprefix("text_model."): v
                for k, v in text_encoder.state_dict().items()}
    return {k: v.contiguous() for k, v in tensors.items()}


def save_ldm_checkpoint(pipeline_dir: Path, path: Path) -> Path:
    """Write the diffusers pipeline at ``pipeline_dir`` (e.g. ``build_tiny_sd``'s) as one LDM-layout file ``path``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    components = (UNet2DConditionModel.from_pretrained(pipeline_dir / "unet"),
                  AutoencoderKL.from_pretrained(pipeline_dir / "vae"),
                  CLIPTextModel.from_pretrained(pipeline_dir / "text_encoder"))
    save_file(ldm_state_dict(*components), path)
    return path


def fake_hub_cache(cache: Path, repo: str, source: Path, commit: str = "0123456789abcdef" * 2 + "01234567") -> None:
    """Lay ``source`` out like huggingface_hub's cache: blobs named by sha256, snapshot symlinks, refs/main."""
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    for path in source.rglob("*"):
        if path.is_file():
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            blob = root / "blobs" / digest
            blob.parent.mkdir(exist_ok=True)
            shutil.copyfile(path, blob)
            link = root / "snapshots" / commit / path.relative_to(source)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(blob, link.parent))


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
