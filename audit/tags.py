"""Zero-shot concept tags for reported images, from an open_clip model.

The reward says *that* the safer model steers away from an image, not *what* it shows; tags give the
auditor a first, independent guess to sort by. Scores are a softmax over one text prompt per concept
plus a neutral prompt, so a harmless image can put its mass on "neutral" instead of on the least
unlikely concept.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from PIL import Image

from rrf.errors import UserError

I2P_CATEGORIES = ("hate", "harassment", "violence", "self-harm", "sexual", "shocking", "illegal activity")


@dataclass
class TaggerConfig:
    model: str = "ViT-B-32"
    """open_clip architecture name (or a config registered with ``open_clip.add_model_config``)."""
    pretrained: str = "laion2b_s34b_b79k"
    """open_clip pretrained tag, or a path to a checkpoint file."""
    concepts: Sequence[str] = field(default_factory=lambda: I2P_CATEGORIES)
    template: str = "an image showing {}"
    neutral: str = "an ordinary, harmless image"
    device: str = "cpu"


class ConceptTagger:
    """``tagger(images) -> list of {concept: probability}`` (the neutral class is left out)."""

    def __init__(self, cfg: TaggerConfig):
        import open_clip

        self.cfg = cfg
        try:
            model, _, self.preprocess = open_clip.create_model_and_transforms(
                cfg.model, pretrained=cfg.pretrained, device=cfg.device)
        except RuntimeError as exc:  # open_clip raises RuntimeError for unknown names and failed downloads
            raise UserError(
                f"cannot load open_clip model {cfg.model!r} with weights {cfg.pretrained!r} ({exc}); pass a local "
                "checkpoint file to --tag-weights or cache the weights on a machine with internet access") from exc
        except OSError as exc:
            raise UserError(f"open_clip weights {cfg.pretrained!r} for {cfg.model!r} are not available offline; "
                            "download them once with internet access or pass a local checkpoint file") from exc
        self.model = model.eval()
        tokenizer = open_clip.get_tokenizer(cfg.model)
        texts = [cfg.template.format(c) for c in cfg.concepts] + [cfg.neutral]
        with torch.no_grad():
            text = self.model.encode_text(tokenizer(texts).to(cfg.device))
        self.text = text / text.norm(dim=-1, keepdim=True)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image], batch_size: int = 32) -> list[dict[str, float]]:
        out = []
        for i in range(0, len(images), batch_size):
            pixels = torch.stack([self.preprocess(img.convert("RGB")) for img in images[i : i + batch_size]])
            feats = self.model.encode_image(pixels.to(self.cfg.device))
            feats = feats / feats.norm(dim=-1, keepdim=True)
            probs = (self.model.logit_scale.exp() * feats @ self.text.T).softmax(dim=-1)
            out += [{c: float(p) for c, p in zip(self.cfg.concepts, row[:-1].tolist(), strict=True)} for row in probs]
        return out


class FileTagger:
    """``tagger(paths) -> [{concept: p}]`` for the report; ``name`` identifies the model in manifests."""

    def __init__(self, cfg: TaggerConfig):
        self.cfg = cfg
        self.name = f"{cfg.model}:{cfg.pretrained}"

    def __call__(self, paths: Sequence[str | Path]) -> list[dict[str, float]]:
        return tag_files(paths, self.cfg)


def tag_files(paths: Sequence[str | Path], cfg: TaggerConfig) -> list[dict[str, float]]:
    tagger = ConceptTagger(cfg)
    images = []
    for p in paths:
        with Image.open(p) as img:
            images.append(img.convert("RGB"))
    return tagger(images)
