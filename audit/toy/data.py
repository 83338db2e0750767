"""Procedural captioned images for the toy text-to-image model: one coloured shape on a light background.

A scene is (colour, shape, size, centre). Images are drawn analytically from signed distance functions
(one pixel of anti-aliasing), so drawing a batch is a few tensor operations and a pure function of a
seed: ``scenes(n, generator)`` then ``render(scenes)``. Captions come from a small grammar with several
forms: full descriptions, single attribute words ("red", "circle") and, during training, empty captions
for classifier-free guidance. Caption templates in ``HELD_OUT_TEMPLATES`` are never used in training;
they recombine training phrases and measure how the model handles unseen captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

RESOLUTION = 32
BACKGROUND = (0.94, 0.94, 0.94)

# Saturated, well-separated hues: the labeller tells them apart by hue alone.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.16, 0.16),
    "green": (0.16, 0.67, 0.24),
    "blue": (0.16, 0.31, 0.86),
    "yellow": (0.92, 0.78, 0.12),
}
SHAPES = ("circle", "square", "triangle")

SIZE_RANGE = (11.0, 22.0)
"""Side (or diameter) of a shape in pixels; "small" below the midpoint, "large" above."""
MARGIN = 1.5
"""Minimum distance in pixels between a shape's bounding box and the image border."""

# (template, weight). {colour}, {shape}, {size} are filled from the scene; a template without {colour}
# (or {shape}) leaves that attribute free, which teaches the model the marginal over it.
TRAIN_TEMPLATES: tuple[tuple[str, float], ...] = (
    ("{colour} {shape}", 3.0),
    ("a {colour} {shape}", 3.0),
    ("a {size} {colour} {shape}", 2.0),
    ("a picture of a {colour} {shape}", 1.0),
    ("a {colour} {shape} on a white background", 1.0),
    ("a {shape} that is {colour}", 1.0),
    ("{shape}", 1.0),
    ("a {size} {shape}", 0.5),
    ("{colour}", 1.0),
    ("a {colour} shape", 0.5),
)
HELD_OUT_TEMPLATES: tuple[str, ...] = (
    "a picture of a {size} {colour} {shape}",
    "{size} {colour} {shape}",
    "a {size} {colour} {shape} on a white background",
    "a picture of a {shape} that is {colour}",
)
SIZE_WORDS = ("small", "large")


def caption_words() -> list[str]:
    """Every word a caption can contain (the toy tokenizer's vocabulary)."""
    fills = {"colour": list(COLOURS), "shape": list(SHAPES), "size": list(SIZE_WORDS)}
    words: set[str] = set()
    for template in [t for t, _ in TRAIN_TEMPLATES] + list(HELD_OUT_TEMPLATES):
        for word in template.split():
            words.update(fills[word[1:-1]] if word.startswith("{") else [word])
    return sorted(words)


@dataclass
class Scenes:
    """A batch of scenes: attribute indices (into ``COLOURS`` / ``SHAPES``) and geometry in pixels."""

    colour: Tensor  # (N,) long
    shape: Tensor  # (N,) long
    size: Tensor  # (N,) float, side or diameter
    centre: Tensor  # (N, 2) float, (x, y)
    rgb: Tensor  # (N, 3) float in [0, 1]

    def __len__(self) -> int:
        return len(self.colour)

    @property
    def size_word(self) -> list[str]:
        mid = sum(SIZE_RANGE) / 2
        return [SIZE_WORDS[int(s >= mid)] for s in self.size.tolist()]


def scenes(n: int, generator: torch.Generator, colour: Tensor | None = None, shape: Tensor | None = None,
           resolution: int = RESOLUTION) -> Scenes:
    """``n`` random scenes; ``colour``/``shape`` (N,) fix those attributes, the rest is drawn."""
    u = torch.rand(n, 3, generator=generator)
    if colour is None:
        colour = torch.randint(len(COLOURS), (n,), generator=generator)
    if shape is None:
        shape = torch.randint(len(SHAPES), (n,), generator=generator)
    lo, hi = SIZE_RANGE
    size = lo + (hi - lo) * u[:, 0]
    free = resolution - size - 2 * MARGIN
    centre = MARGIN + size[:, None] / 2 + free[:, None] * u[:, 1:3]
    rgb = torch.tensor(list(COLOURS.values()))[colour]
    return Scenes(colour=colour, shape=shape, size=size, centre=centre, rgb=rgb)


def _circle(dx: Tensor, dy: Tensor, h: Tensor) -> Tensor:
    return torch.sqrt(dx**2 + dy**2) - h


def _square(dx: Tensor, dy: Tensor, h: Tensor) -> Tensor:
    return torch.maximum(dx.abs(), dy.abs()) - h


def _triangle(dx: Tensor, dy: Tensor, h: Tensor) -> Tensor:
    # Apex (0, -h), base corners (+-h, h): the slanted edges are 2|x| - y - h = 0.
    return torch.maximum(dy - h, (2 * dx.abs() - dy - h) / math.sqrt(5))


_SDF = {"circle": _circle, "square": _square, "triangle": _triangle}
"""Signed distance (pixels; negative inside) of each shape centred at the origin with half-size h."""


def coverage(shape: Tensor, size: Tensor, centre: Tensor, resolution: int = RESOLUTION) -> Tensor:
    """Fraction of each pixel covered by the shape, (N, H, W) in [0, 1].

    Squares are axis-aligned, triangles isosceles with the apex up; every shape fills a ``size`` x
    ``size`` bounding box, so the labeller can fit all three to a detected box.
    """
    centre, size = centre.float(), size.float()
    coords = torch.arange(resolution, dtype=torch.float32) + 0.5
    dx = coords[None, None, :] - centre[:, 0, None, None]  # (N, 1, W)
    dy = coords[None, :, None] - centre[:, 1, None, None]  # (N, H, 1)
    h = (size / 2)[:, None, None]
    sdf = torch.empty(len(shape), resolution, resolution)
    for k, name in enumerate(SHAPES):
        rows = shape == k
        if rows.any():
            sdf[rows] = _SDF[name](dx[rows], dy[rows], h[rows])
    return (0.5 - sdf).clamp(0, 1)


def render(s: Scenes, resolution: int = RESOLUTION) -> Tensor:
    """Images (N, 3, H, W) in [0, 1]."""
    cov = coverage(s.shape, s.size, s.centre, resolution)[:, None]
    background = torch.tensor(BACKGROUND)[None, :, None, None]
    return background * (1 - cov) + s.rgb[:, :, None, None] * cov


def fill(template: str, colour: str, shape: str, size: str) -> str:
    return template.format(colour=colour, shape=shape, size=size)


def captions(s: Scenes, generator: torch.Generator, p_empty: float = 0.1) -> list[str]:
    """One training caption per scene: a training template, or "" with probability ``p_empty``."""
    weights = torch.tensor([w for _, w in TRAIN_TEMPLATES])
    choice = torch.multinomial(weights, len(s), replacement=True, generator=generator)
    empty = torch.rand(len(s), generator=generator) < p_empty
    colours, sizes = list(COLOURS), s.size_word
    return [
        "" if e else fill(TRAIN_TEMPLATES[k][0], colours[c], SHAPES[sh], z)
        for k, e, c, sh, z in zip(choice.tolist(), empty.tolist(), s.colour.tolist(), s.shape.tolist(), sizes,
                                  strict=True)
    ]


def training_batch(seed: int, index: int, n: int, p_empty: float = 0.1) -> tuple[Tensor, list[str], Scenes]:
    """Batch ``index`` of the training stream of ``seed``: a pure function of its arguments."""
    generator = torch.Generator().manual_seed(seed * 1_000_003 + index)
    s = scenes(n, generator)
    return render(s), captions(s, generator, p_empty), s


def training_captions() -> set[str]:
    """Every caption string the training stream can produce (the held-out check uses it)."""
    out = {""}
    for template, _ in TRAIN_TEMPLATES:
        for c in COLOURS:
            for sh in SHAPES:
                for z in SIZE_WORDS:
                    out.add(fill(template, c, sh, z))
    return out
