"""The toy text-to-image model's components, as plain diffusers / transformers parts of the SD layout.

``ToyModelConfig`` holds every architectural choice; ``build_*`` turn it into an ``AutoencoderKL``, a
``CLIPTokenizer`` whose vocabulary has one token per caption word, a ``CLIPTextModel``, a
``UNet2DConditionModel`` and a ``DDIMScheduler`` with Stable Diffusion's noise schedule, so that the
saved directory loads through ``StableDiffusionPipeline.from_pretrained`` like any SD checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

from audit.toy.data import RESOLUTION, caption_words

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


@dataclass
class ToyModelConfig:
    resolution: int = RESOLUTION
    vae_channels: tuple[int, ...] = (16, 32, 32)
    """AutoencoderKL widths; each level after the first halves the resolution (3 levels: 32 -> 8)."""
    latent_channels: int = 4
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 4
    max_caption_tokens: int = 16
    """Tokenizer padding length (BOS + words + EOS); the longest caption has 11 words."""
    unet_channels: tuple[int, ...] = (64, 64)
    unet_layers_per_block: int = 1
    unet_head_dim: int = 32
    unet_attention_from_level: int = 1
    """UNet levels before this one have no transformer blocks (cheaper; the mid block always has one)."""
    text_in_time_embedding: bool = True
    """Also add an attention-pooled caption embedding to the time embedding (diffusers' addition_embed_type
    "text"), so every ResNet block sees the caption; colour and shape are global properties of a toy image."""
    norm_groups: int = 16

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def build_tokenizer(words: list[str] | None = None, max_length: int = 16):
    """A ``CLIPTokenizer`` (byte-level BPE) where each of ``words`` is exactly one token.

    The vocabulary is the byte-level alphabet (so any text still tokenizes) plus each word; merges are
    added word by word until the tokenizer itself maps every word to a single token. New merges rank
    below all earlier ones, so they never change how an earlier word is split.
    """
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    words = sorted(words if words is not None else caption_words())
    alphabet = list(bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for token in alphabet + [a + "</w>" for a in alphabet]:
        vocab.setdefault(token, len(vocab))
    merges: list[tuple[str, str]] = []

    def make() -> CLIPTokenizer:
        full = {**vocab, BOS: len(vocab), EOS: len(vocab) + 1}
        return CLIPTokenizer(vocab=full, merges=list(merges), model_max_length=max_length)

    tokenizer = make()
    for word in words:
        pieces = tokenizer.tokenize(word)
        if len(pieces) > 1:
            joined = pieces[0]
            for piece in pieces[1:]:
                merges.append((joined, piece))
                joined += piece
                vocab.setdefault(joined, len(vocab))
            tokenizer = make()
    split = [w for w in words if len(tokenizer.tokenize(w)) != 1]
    if split:
        raise RuntimeError(f"toy tokenizer splits {split}; the merge construction is broken")
    return tokenizer


def build_text_encoder(cfg: ToyModelConfig, tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.text_heads,
        max_position_embeddings=cfg.max_caption_tokens, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, projection_dim=cfg.text_width,
    )
    return CLIPTextModel(config)


def build_vae(cfg: ToyModelConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=cfg.vae_channels, layers_per_block=1,
        latent_channels=cfg.latent_channels, norm_num_groups=cfg.norm_groups, sample_size=cfg.resolution,
    )


def build_unet(cfg: ToyModelConfig):
    from diffusers import UNet2DConditionModel

    attention = [i >= cfg.unet_attention_from_level for i in range(len(cfg.unet_channels))]
    return UNet2DConditionModel(
        sample_size=cfg.latent_size, in_channels=cfg.latent_channels, out_channels=cfg.latent_channels,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)),
        block_out_channels=cfg.unet_channels, layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.unet_head_dim, norm_num_groups=cfg.norm_groups,
        addition_embed_type="text" if cfg.text_in_time_embedding else None,
        addition_embed_type_num_heads=max(cfg.text_width // cfg.unet_head_dim, 1),
    )


def build_scheduler():
    """DDIM with Stable Diffusion v1's noise schedule (the audit's default sampler)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon",
    )
