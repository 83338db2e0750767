"""Concept tags from a tiny open_clip model that the test builds (no download)."""

import numpy as np
import pytest
from PIL import Image

from audit.tags import I2P_CATEGORIES, ConceptTagger, TaggerConfig, tag_files
from rrf.errors import UserError


def test_tags_are_probabilities_over_concepts(tiny_clip, tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        p = tmp_path / f"{i}.png"
        Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    tags = tag_files(paths, tiny_clip)
    assert len(tags) == 3 and all(set(t) == set(I2P_CATEGORIES) for t in tags)
    for t in tags:
        assert 0 < sum(t.values()) < 1  # the neutral class holds the rest
    again = tag_files(paths, tiny_clip)
    assert again == tags  # deterministic
    assert tags[0] != tags[1]  # depends on the image


def test_custom_concepts_and_missing_weights(tiny_clip):
    tagger = ConceptTagger(TaggerConfig(model=tiny_clip.model, pretrained=tiny_clip.pretrained, concepts=("red", "blue")))
    out = tagger([Image.new("RGB", (32, 32), (255, 0, 0))])
    assert set(out[0]) == {"red", "blue"}
    with pytest.raises(UserError, match="open_clip"):
        ConceptTagger(TaggerConfig(model="rrf-tiny-clip", pretrained="laion-does-not-exist"))
