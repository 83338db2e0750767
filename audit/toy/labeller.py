"""Pixel-rule labeller: the colour and shape of a toy image, the ground truth of the toy audit.

Rules (no learning, so the labeller cannot share a model's mistakes):

1. Foreground = pixels whose chroma (max - min of R, G, B) exceeds ``CHROMA_THRESHOLD``; the background
   is grey, every palette colour is saturated. Keep the largest 8-connected component.
2. Colour = majority vote of the foreground pixels' hues, each assigned to the nearest palette hue, or
   to "other" if it is more than ``HUE_TOLERANCE`` degrees from all of them.
3. Shape = the candidate (circle, square, triangle), drawn with the data module's own renderer into
   the component's bounding box (give or take a pixel of size and half a pixel of position), that
   overlaps the component best. Overlap is the soft intersection over union of pixel coverages; the
   component's coverage is its chroma relative to its median chroma, which keeps the anti-aliased and
   blurred edges that tell a small circle from a small square.

An image without a foreground component of at least ``MIN_AREA`` pixels is labelled "none"/"none".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from audit.toy import torch_threads
from audit.toy.data import COLOURS, SHAPES, coverage

CHROMA_THRESHOLD = 0.3
HUE_TOLERANCE = 30.0
MIN_AREA = 8
NONE = "none"
OTHER = "other"


@dataclass(frozen=True)
class Label:
    colour: str
    """A palette colour, "other" (a foreground of another hue) or "none" (no foreground)."""
    shape: str
    """A shape name or "none"."""
    shape_iou: float
    """Overlap of the foreground with the chosen shape (how clean the shape is)."""


def hue(rgb: Tensor) -> Tensor:
    """Hue angle in degrees [0, 360) of (..., 3) RGB values."""
    r, g, b = rgb.unbind(-1)
    return torch.rad2deg(torch.atan2(math.sqrt(3) * (g - b), 2 * r - g - b)) % 360


_PALETTE_HUES = hue(torch.tensor(list(COLOURS.values())))


def _colour(pixels: Tensor) -> str:
    """Majority palette colour of foreground pixels (K, 3)."""
    diff = (hue(pixels)[:, None] - _PALETTE_HUES[None, :]).abs()
    diff = torch.minimum(diff, 360 - diff)
    dist, nearest = diff.min(dim=1)
    votes = torch.where(dist <= HUE_TOLERANCE, nearest, len(COLOURS))
    winner = int(torch.bincount(votes, minlength=len(COLOURS) + 1).argmax())
    return [*COLOURS, OTHER][winner]


# Candidate placements around the bounding box: (size offset, x offset, y offset) in pixels.
_OFFSETS = torch.tensor([(ds, dx, dy) for ds in (-1.0, -0.5, 0.0, 0.5, 1.0) for dx in (-0.5, 0.0, 0.5)
                         for dy in (-0.5, 0.0, 0.5)])


def _shape(mask: np.ndarray, soft: np.ndarray) -> tuple[str, float]:
    """Best-fitting shape for a component: boolean ``mask`` and its coverage ``soft``, both (H, W)."""
    ys, xs = np.nonzero(mask)
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    n, k = len(SHAPES), len(_OFFSETS)
    size = ((x1 - x0) + (y1 - y0)) / 2 + _OFFSETS[:, 0]
    centre = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2]) + _OFFSETS[:, 1:]
    shapes = torch.arange(n).repeat_interleave(k)
    candidates = coverage(shapes, size.repeat(n), centre.repeat(n, 1), mask.shape[0]).numpy()
    iou = np.minimum(candidates, soft).sum(axis=(1, 2)) / np.maximum(candidates, soft).sum(axis=(1, 2))
    best = iou.reshape(n, k).max(axis=1)
    winner = int(best.argmax())
    return SHAPES[winner], float(best[winner])


def label(image: Tensor) -> Label:
    """Label one image (3, H, W) with values in [0, 1]."""
    rgb = image.float().clamp(0, 1).permute(1, 2, 0)
    chroma = rgb.max(dim=-1).values - rgb.min(dim=-1).values
    components, count = ndimage.label((chroma > CHROMA_THRESHOLD).numpy(), structure=np.ones((3, 3)))
    if count == 0:
        return Label(NONE, NONE, 0.0)
    areas = np.bincount(components.ravel())[1:]
    largest = int(areas.argmax()) + 1
    if areas[largest - 1] < MIN_AREA:
        return Label(NONE, NONE, 0.0)
    mask = components == largest
    level = chroma[torch.from_numpy(mask)].median()
    # Coverage of the component: its pixels plus a one-pixel rim (the faint edge below the threshold).
    soft = (chroma / level).clamp(0, 1).numpy() * ndimage.binary_dilation(mask, structure=np.ones((3, 3)))
    shape, iou = _shape(mask, soft)
    return Label(_colour(rgb[torch.from_numpy(mask)]), shape, iou)


def label_batch(images: Tensor) -> list[Label]:
    """Label images (N, 3, H, W) in [0, 1]."""
    # Per-image work is a few small tensors: one thread is several times faster than a thread pool.
    with torch_threads(1):
        return [label(im) for im in images]
