"""The built-in prompt set of the toy audit: every caption form over every colour and shape.

Each prompt carries ``categories`` (``colour:red``, ``shape:circle``; a prompt names one or both), which
is what the audit breaks results down by, and a ``split``: ``seen`` captions are strings the toy model
was trained on, ``held-out`` ones recombine training phrases into strings it never saw (the toy's
quality figure is measured on those).

``concept_prompts(colour)`` is the *audit* set of a toy model that suppresses that colour, what I2P is
for Stable Diffusion: prompts that invite the concept (every prompt naming it, and the colour-free ones,
which the base model draws in it a quarter of the time), plus a few controls naming each other colour.
On the balanced set a precise eraser leaves three quarters of the samples unchanged, and no reward can
separate unchanged samples: base-vs-safer accuracy is capped near 63% there, as it would be for an SD
audit on everyday prompts.

The sets ship as ``prompts/sets/toy.csv`` and ``prompts/sets/toy-<colour>.csv`` (regenerate with
``python -m prompts.toy``), so ``--prompts toy-red`` reads one like any other prompt file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from audit.toy.data import (
    COLOURS,
    HELD_OUT_TEMPLATES,
    SHAPES,
    SIZE_WORDS,
    TRAIN_TEMPLATES,
    fill,
    training_captions,
)

Split = Literal["all", "seen", "held-out"]


@dataclass(frozen=True)
class ToyPrompt:
    prompt_id: str
    prompt: str
    categories: tuple[str, ...]
    split: str

    def attribute(self, name: str) -> str | None:
        """The prompt's ``colour`` or ``shape``, or None if it leaves it open."""
        return next((c.split(":", 1)[1] for c in self.categories if c.startswith(name + ":")), None)


def toy_prompts(split: Split = "all") -> list[ToyPrompt]:
    """Prompts in a fixed order with stable ids (``toy-000``...).

    Templates with a size word get "small" and "large" alternately, so each (colour, shape) pair
    appears once per template.
    """
    if split not in ("all", "seen", "held-out"):
        raise ValueError(f"unknown toy prompt split {split!r}; choose all, seen or held-out")
    seen = training_captions()
    texts: dict[str, tuple[str, ...]] = {}
    for template in [t for t, _ in TRAIN_TEMPLATES] + list(HELD_OUT_TEMPLATES):
        colours = list(COLOURS) if "{colour}" in template else [None]
        shapes = list(SHAPES) if "{shape}" in template else [None]
        k = 0
        for colour in colours:
            for shape in shapes:
                text = fill(template, colour or "", shape or "", SIZE_WORDS[k % len(SIZE_WORDS)])
                k += 1
                categories = tuple(c for c in (colour and f"colour:{colour}", shape and f"shape:{shape}") if c)
                texts.setdefault(text, categories)
    prompts = [ToyPrompt(f"toy-{i:03d}", text, cats, "seen" if text in seen else "held-out")
               for i, (text, cats) in enumerate(texts.items())]
    return [p for p in prompts if split == "all" or p.split == split]


CONTROLS_PER_COLOUR = 2
"""Control prompts per other colour in a concept's audit set (the first ones of the balanced set)."""


def concept_prompts(concept: str) -> list[ToyPrompt]:
    """The audit set for a model that suppresses ``concept`` (see the module doc); ids as in the balanced set."""
    if concept not in COLOURS:
        raise ValueError(f"unknown toy colour {concept!r}; choose one of {', '.join(COLOURS)}")
    prompts = toy_prompts()
    keep = {p.prompt_id for p in prompts if p.attribute("colour") in (concept, None)}
    for colour in COLOURS:
        if colour != concept:
            keep |= {p.prompt_id for p in [q for q in prompts if q.attribute("colour") == colour][:CONTROLS_PER_COLOUR]}
    return [p for p in prompts if p.prompt_id in keep]


SETS_DIR = Path(__file__).resolve().parent / "sets"
CSV_PATH = SETS_DIR / "toy.csv"


def concept_csv_path(concept: str) -> Path:
    return SETS_DIR / f"toy-{concept}.csv"


def to_frame(prompts: list[ToyPrompt]) -> pd.DataFrame:
    """The shipped-set CSV layout of ``prompts.load`` (categories comma-separated)."""
    return pd.DataFrame({"prompt_id": [p.prompt_id for p in prompts], "prompt": [p.prompt for p in prompts],
                         "categories": [",".join(p.categories) for p in prompts], "split": [p.split for p in prompts]})


if __name__ == "__main__":
    # Regenerate the shipped CSVs (`python -m prompts.toy`); a test checks that they match the code.
    to_frame(toy_prompts()).to_csv(CSV_PATH, index=False)
    for colour in COLOURS:
        to_frame(concept_prompts(colour)).to_csv(concept_csv_path(colour), index=False)
    print(f"wrote {CSV_PATH} and the concept sets beside it")
