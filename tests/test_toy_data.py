"""Toy data, tokenizer, prompt set and the pixel-rule labeller (no trained model needed)."""

import pytest
import torch

from audit.toy import data
from audit.toy.labeller import label, label_batch
from audit.toy.model import build_tokenizer
from prompts.toy import toy_prompts


def test_training_batches_are_a_pure_function_of_seed_and_index():
    a_img, a_cap, _ = data.training_batch(3, 17, 32)
    b_img, b_cap, _ = data.training_batch(3, 17, 32)
    c_img, c_cap, _ = data.training_batch(3, 18, 32)
    assert torch.equal(a_img, b_img) and a_cap == b_cap
    assert not torch.equal(a_img, c_img)
    assert a_img.shape == (32, 3, data.RESOLUTION, data.RESOLUTION)
    assert 0 <= float(a_img.min()) and float(a_img.max()) <= 1


def test_captions_cover_every_form_and_describe_their_image():
    _, caps, s = data.training_batch(0, 0, 4000)
    assert "" in caps and set(data.COLOURS) <= set(caps) and set(data.SHAPES) <= set(caps)
    colours = list(data.COLOURS)
    for cap, c, sh in zip(caps, s.colour.tolist(), s.shape.tolist(), strict=True):
        words = cap.split()
        assert not (set(words) & set(colours)) or colours[c] in words
        assert not (set(words) & set(data.SHAPES)) or data.SHAPES[sh] in words
    assert set(caps) <= data.training_captions()


def test_tokenizer_maps_every_caption_word_to_one_token_and_round_trips(tmp_path):
    from transformers import CLIPTokenizer

    tok = build_tokenizer()
    for word in data.caption_words():
        assert len(tok.tokenize(word)) == 1, word
    tok.save_pretrained(tmp_path)
    loaded = CLIPTokenizer.from_pretrained(tmp_path)
    text = "a picture of a small red circle on a white background"
    ids = loaded(text, padding="max_length", max_length=loaded.model_max_length).input_ids
    assert ids == tok(text, padding="max_length", max_length=tok.model_max_length).input_ids
    assert len(ids) == 16 and ids[0] == tok.bos_token_id and ids[len(text.split()) + 1] == tok.eos_token_id


def test_labeller_is_exact_on_drawn_images_of_every_size():
    g = torch.Generator().manual_seed(5)
    s = data.scenes(600, g)
    labels = label_batch(data.render(s))
    colours = list(data.COLOURS)
    assert all(lab.colour == colours[c] for lab, c in zip(labels, s.colour.tolist(), strict=True))
    assert all(lab.shape == data.SHAPES[h] for lab, h in zip(labels, s.shape.tolist(), strict=True))


def test_labeller_reports_blank_and_off_palette_images():
    blank = torch.full((3, 32, 32), 0.94)
    assert label(blank).colour == "none" and label(blank).shape == "none"
    s = data.scenes(1, torch.Generator().manual_seed(0), colour=torch.tensor([0]), shape=torch.tensor([1]))
    s.rgb[:] = torch.tensor([0.6, 0.1, 0.9])  # purple: saturated but no palette hue
    assert label(data.render(s)[0]).colour == "other"
    assert label(data.render(s)[0]).shape == "square"


def test_labeller_survives_blur_and_noise():
    g = torch.Generator().manual_seed(9)
    s = data.scenes(300, g)
    images = data.render(s)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1, count_include_pad=False)
    noisy = (blurred + 0.03 * torch.randn(images.shape, generator=g)).clamp(0, 1)
    labels = label_batch(noisy)
    colours = list(data.COLOURS)
    correct = sum(lab.colour == colours[c] and lab.shape == data.SHAPES[h]
                  for lab, c, h in zip(labels, s.colour.tolist(), s.shape.tolist(), strict=True))
    assert correct / len(labels) >= 0.97


def test_prompt_set_has_categories_ids_and_an_unseen_held_out_part():
    prompts = toy_prompts()
    assert len({p.prompt_id for p in prompts}) == len(prompts) == len({p.prompt for p in prompts})
    held_out = toy_prompts("held-out")
    assert held_out and not {p.prompt for p in held_out} & data.training_captions()
    assert {p.prompt for p in toy_prompts("seen")} <= data.training_captions()
    cats = {c for p in prompts for c in p.categories}
    assert cats == {f"colour:{c}" for c in data.COLOURS} | {f"shape:{s}" for s in data.SHAPES}
    red_circle = next(p for p in prompts if p.prompt == "a red circle")
    assert red_circle.categories == ("colour:red", "shape:circle") and red_circle.attribute("shape") == "circle"
    single = next(p for p in prompts if p.prompt == "red")
    assert single.categories == ("colour:red",) and single.attribute("shape") is None
    words = set(data.caption_words())
    assert all(set(p.prompt.split()) <= words for p in held_out)


def test_shipped_toy_csv_is_the_prompt_set_and_loads_as_a_prompt_source():
    from prompts.load import load_prompts
    from prompts.toy import CSV_PATH, to_frame

    assert CSV_PATH.read_text() == to_frame(toy_prompts()).to_csv(index=False)
    loaded = load_prompts("toy").prompts
    assert [(p.prompt_id, p.text, p.categories) for p in loaded] == \
        [(p.prompt_id, p.prompt, p.categories) for p in toy_prompts()]


@pytest.mark.parametrize("concept", data.COLOURS)
def test_concept_audit_set_invites_the_concept_with_controls_and_ships_as_a_csv(concept):
    from prompts.load import load_prompts
    from prompts.toy import CONTROLS_PER_COLOUR, concept_csv_path, concept_prompts, to_frame

    chosen = concept_prompts(concept)
    balanced = {p.prompt_id: p for p in toy_prompts()}
    assert all(balanced[p.prompt_id] == p for p in chosen)  # same ids (so the same seeds) as the balanced set
    colours = [p.attribute("colour") for p in chosen]
    assert colours.count(concept) == sum(p.attribute("colour") == concept for p in balanced.values())
    assert colours.count(None) == sum(p.attribute("colour") is None for p in balanced.values())
    assert all(colours.count(c) == CONTROLS_PER_COLOUR for c in data.COLOURS if c != concept)
    # Most samples invite the concept, as I2P's prompts invite inappropriate content.
    assert sum(c in (concept, None) for c in colours) / len(colours) >= 0.85
    assert concept_csv_path(concept).read_text() == to_frame(chosen).to_csv(index=False)
    assert [p.prompt_id for p in load_prompts(f"toy-{concept}").prompts] == [p.prompt_id for p in chosen]
    with pytest.raises(ValueError, match="unknown toy colour"):
        concept_prompts("purple")


def test_audit_defaults_follow_the_pair():
    from audit.fit import FitConfig
    from audit.ground_truth import TOY_FIT_LR, TOY_IMAGES_PER_PROMPT, audit_defaults
    from audit.registry import resolve

    toy = resolve("toy")
    erased = audit_defaults(toy.to_dict(), resolve("toy-safe", other=toy).to_dict())
    assert (erased.prompts, erased.images_per_prompt, erased.fit_lr) == ("toy-red", TOY_IMAGES_PER_PROMPT, TOY_FIT_LR)
    sld = audit_defaults(toy.to_dict(), resolve("toy-sld", other=toy, concept="green").to_dict())
    assert sld.prompts == "toy-green"
    # Real checkpoints keep the paper's protocol: I2P, the paper's learning rate.
    real = audit_defaults({"weights": None}, {"weights": None})
    assert (real.prompts, real.images_per_prompt, real.fit_lr) == ("i2p", 1, FitConfig.lr) and FitConfig.lr == 1e-4
