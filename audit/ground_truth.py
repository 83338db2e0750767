"""Ground truth for audits of the toy models: what a generated image actually shows.

For a toy pair the concept the safer model suppresses is known (the erased colour of a ``toy erase``
checkpoint, or the SLD concept text), and the pixel-rule labeller (``audit.toy.labeller``) tells
whether an image shows it. ``evaluate`` turns that into ``concept_auroc``: how well a *low* reward
flags the base-model images that show the concept. Real checkpoints have no such labeller and get
``(None, None)``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from audit.evaluate import GroundTruth
from audit.fit import FitConfig
from audit.store import Store


def toy_manifest(weights: str | None) -> dict | None:
    """The toy training/erasure manifest beside the weights, if these are toy weights."""
    path = Path(weights or "") / "manifest.json"
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text())
    return manifest if str(manifest.get("kind", "")).startswith("toy") else None


def concept_of(model: dict) -> str | None:
    """The concept a toy safer model suppresses: its SLD concept text or its erased concept."""
    if model.get("sld"):
        return model["sld"]["concept"]
    return (toy_manifest(model.get("weights")) or {}).get("concept")


TOY_IMAGES_PER_PROMPT = 3
"""Samples per prompt of a toy audit on a concept set: its 44 prompts (I2P's protocol draws 10 per prompt)."""

TOY_FIT_LR = 5e-4
"""Reward learning rate of a toy audit. The paper's 1e-4 is for 6000 steps on SD latents; a toy store
caps the fit near 3000 steps (``FitConfig.max_samples_per_trajectory``), where 1e-4 is still far from
converged. Measured on the toy-red audit store (same split, 2954 steps), lr 1e-4 / 3e-4 / 5e-4 / 1e-3:
held-out explained 0.20 / 0.26 / 0.43 / 0.24 (1e-3 peaks at 0.41 by step 1000, then overfits),
base-vs-safer AUROC 0.905 / 0.955 / 0.964 / 0.948, accuracy (metrics protocol 1: a logistic threshold
fitted on the train split) 79.6% / 77.8% / 87.0% / 81.5%,
concept AUROC 0.927 / 0.909 / 0.909 / 0.909."""

@dataclass(frozen=True)
class AuditDefaults:
    prompts: str
    images_per_prompt: int
    fit_lr: float


def audit_defaults(base: dict, safer: dict) -> AuditDefaults:
    """The defaults of an audit of ``base`` against ``safer`` (``ModelSpec.to_dict()``s).

    Real checkpoints: I2P, one image per prompt, the paper's learning rate. A toy pair: the concept's
    audit set (``prompts.toy.concept_prompts``) with ``TOY_IMAGES_PER_PROMPT`` when the safer model's
    concept is a toy colour, else the balanced toy set, and ``TOY_FIT_LR``.
    """
    from audit.toy.data import COLOURS

    if toy_manifest(base.get("weights")) is None:
        return AuditDefaults("i2p", 1, FitConfig.lr)
    concept = (concept_of(safer) or "").strip().lower()
    if concept in COLOURS:
        return AuditDefaults(f"toy-{concept}", TOY_IMAGES_PER_PROMPT, TOY_FIT_LR)
    return AuditDefaults("toy", 1, TOY_FIT_LR)


def shows_colour(colour: str) -> GroundTruth:
    from audit.toy.labeller import label

    def truth(paths: Sequence[Path]) -> np.ndarray:
        out = []
        for path in paths:
            with Image.open(path) as img:
                pixels = torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)
            out.append(label(pixels).colour == colour)
        return np.asarray(out, dtype=int)

    return truth


def ground_truth_for(store_dir: str | Path) -> tuple[GroundTruth | None, str | None]:
    """``(labeller, concept)`` for a store of a toy pair whose concept is a toy colour, else ``(None, None)``."""
    from audit.toy.data import COLOURS

    models = Store.open(store_dir).manifest["models"]
    if toy_manifest(models["base"].get("weights")) is None:
        return None, None
    concept = (concept_of(models["expert"]) or "").strip().lower()
    if concept not in COLOURS:
        return None, None
    return shows_colour(concept), concept
