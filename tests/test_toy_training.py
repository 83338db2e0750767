"""Smoke runs of `toy train` and `toy erase` on the tiny profile: loss goes down, output loads, same seed same bytes."""

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from audit.toy import WEIGHTS, data
from audit.toy.erase import RECIPES, EraseConfig, erase, frozen_targets, steered_mask
from audit.toy.train import PIPELINE_FILES, ToyTrainConfig, train
from rrf.errors import UserError

UNET = Path("unet") / "diffusion_pytorch_model.safetensors"


def losses(metrics: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, metrics.read_text().splitlines()) if r["split"] == "train"]


@pytest.fixture(scope="module")
def tiny_toy(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy") / "model"
    train(out, ToyTrainConfig.tiny(), progress=False)
    return out


def test_tiny_training_lowers_both_losses_and_saves_a_pipeline_that_loads_offline(tiny_toy):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    for stage in ("vae", "denoiser"):
        curve = losses(tiny_toy / "training" / stage / "metrics.jsonl")
        assert curve[-1] < 0.7 * curve[0], (stage, curve)
        assert not (tiny_toy / "training" / stage / "checkpoints").exists()
    assert all((tiny_toy / name).exists() for name in PIPELINE_FILES)
    manifest = json.loads((tiny_toy / "manifest.json").read_text())
    assert manifest["kind"] == "toy-model" and manifest["seed"] == 0
    assert 0 <= manifest["quality"]["held-out"]["accuracy"] <= 1 and "packages" in manifest["provenance"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_toy, safety_checker=None, requires_safety_checker=False)
    assert isinstance(pipe.scheduler, DDIMScheduler)
    images = pipe(["a red circle", ""], num_inference_steps=3, output_type="pt").images
    assert images.shape == (2, 3, 32, 32)


def test_finished_training_is_not_redone_and_other_settings_are_refused(tiny_toy):
    before = (tiny_toy / UNET).stat().st_mtime_ns
    assert train(tiny_toy, ToyTrainConfig.tiny(), progress=False)["kind"] == "toy-model"
    assert (tiny_toy / UNET).stat().st_mtime_ns == before
    with pytest.raises(UserError, match="different settings"):
        train(tiny_toy, replace(ToyTrainConfig.tiny(), seed=1), progress=False)


def test_same_seed_gives_the_same_weight_bytes(tiny_toy, tmp_path):
    train(tmp_path / "again", ToyTrainConfig.tiny(), progress=False)
    for part in ("unet", "vae", "text_encoder"):
        name = "model.safetensors" if part == "text_encoder" else "diffusion_pytorch_model.safetensors"
        assert (tiny_toy / part / name).read_bytes() == (tmp_path / "again" / part / name).read_bytes(), part


def test_erase_changes_only_the_unet_and_learns(tiny_toy, tmp_path):
    out = tmp_path / "erased"
    manifest = erase(tiny_toy, out, EraseConfig.tiny("green"), progress=False)
    assert manifest["concept"] == "green" and manifest["kind"] == "toy-erased-model"
    curve = losses(out / "training" / "metrics.jsonl")
    assert sum(curve[-3:]) < sum(curve[:3]), curve
    before, after = load_file(tiny_toy / UNET), load_file(out / UNET)
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".attn2." in k for k in changed), sorted(changed)[:5]  # ESD-x: cross-attention only
    for name in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                 "tokenizer/tokenizer.json", "scheduler/scheduler_config.json"):
        assert (out / name).read_bytes() == (tiny_toy / name).read_bytes(), name


def test_steered_pairs_by_scope():
    from audit.toy.data import COLOURS

    captions = ["red circle", "circle", "blue square", "", "a small triangle", "blue circle"]
    images = torch.tensor([list(COLOURS).index(c) for c in ("red", "green", "red", "red", "red", "blue")])
    assert steered_mask(captions, images, "red", "concept").tolist() == [True, True, False, False, True, False]
    # "shown": a colour-free caption is steered only on an image of the concept; the empty caption never.
    assert steered_mask(captions, images, "red", "shown").tolist() == [True, False, True, False, True, False]


def test_erase_targets_are_the_esd_formula_row_by_row(tiny_toy):
    """The batched frozen pass gives each row ESD's target (steered rows) or the frozen prediction (the rest)."""
    from audit.toy.quality import load_pipeline
    from audit.toy.train import encode_captions

    pipe = load_pipeline(str(tiny_toy))
    frozen = pipe.unet.eval()
    g = torch.Generator().manual_seed(0)
    noisy = torch.randn(5, frozen.config.in_channels, 8, 8, generator=g)
    t = torch.tensor([10, 300, 999, 500, 0])
    with torch.no_grad():
        emb = pipe.text_encoder(encode_captions(pipe.tokenizer, ["red circle", "circle", "blue square", "", "red"]))[0]
        concept, empty = pipe.text_encoder(encode_captions(pipe.tokenizer, ["red", ""]))[0]
        steered = torch.tensor([True, True, False, False, True])
        target, eps_empty = frozen_targets(frozen, noisy, t, emb, steered, concept, empty, 1.6)
        for i in range(5):
            def eps(e, i=i):
                return frozen(noisy[i:i + 1], t[i:i + 1], e[None]).sample[0]
            want = eps(emb[i]) - 1.6 * (eps(concept) - eps(empty)) if steered[i] else eps(emb[i])
            torch.testing.assert_close(target[i], want, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(eps_empty[i], eps(empty), atol=1e-5, rtol=1e-4)


def test_every_colour_has_a_default_recipe_and_reds_is_the_shipped_toy_safe():
    assert set(RECIPES) == set(data.COLOURS)
    blue = EraseConfig(concept="blue")
    assert (blue.steps, blue.lr) == RECIPES["blue"] and EraseConfig(concept="blue", lr=1e-4, steps=3).lr == 1e-4
    assert EraseConfig(concept="green", steps=3).steps == 3
    shipped = json.loads((WEIGHTS / "toy-safe" / "manifest.json").read_text())["config"]
    measurement_only = {"sampling", "eval_seeds_per_prompt"}  # settings of the before/after figures, not the weights
    default = {k: v for k, v in EraseConfig(concept="red").__dict__.items() if k not in measurement_only}
    assert {k: shipped[k] for k in default} == default


def test_erase_refuses_an_unknown_steer_before_claiming_the_output(tiny_toy, tmp_path):
    with pytest.raises(UserError, match="unknown --steer 'everything'; choose concept or shown"):
        erase(tiny_toy, tmp_path / "x", EraseConfig(steer="everything"), progress=False)
    with pytest.raises(UserError, match="--lr must be positive, got 0.0; the default for red is 0.0003"):
        erase(tiny_toy, tmp_path / "x", EraseConfig(lr=0.0), progress=False)
    assert not (tmp_path / "x").exists()


def test_erase_refuses_an_unknown_colour_in_one_line(tiny_toy, tmp_path):
    proc = subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", "toy", "erase",
                           "--concept", "purple", "--base", str(tiny_toy), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "red, green, blue, yellow" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def empty_caption_drift(base: Path, erased: Path) -> float:
    """Mean squared change of the empty caption's prediction (what CFG multiplies by 1 - w) on fixed noisy states."""
    from audit.toy.quality import load_pipeline
    from audit.toy.train import encode_captions

    a, b = load_pipeline(str(base)), load_pipeline(str(erased))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(16, a.unet.config.in_channels, 8, 8, generator=g)
    t = torch.randint(0, 1000, (16,), generator=g)
    with torch.no_grad():
        empty = a.text_encoder(encode_captions(a.tokenizer, [""]))[0].expand(16, -1, -1)
        return float((a.unet(x, t, empty).sample - b.unet(x, t, empty).sample).pow(2).mean())


def test_the_unconditional_term_holds_the_empty_caption_still(tiny_toy, tmp_path):
    free = erase(tiny_toy, tmp_path / "free", replace(EraseConfig.tiny("green"), uncond_weight=0.0), progress=False)
    held = erase(tiny_toy, tmp_path / "held", replace(EraseConfig.tiny("green"), uncond_weight=10.0), progress=False)
    assert free["config"]["uncond_weight"] == 0.0 and held["config"]["uncond_weight"] == 10.0
    drift_free, drift_held = (empty_caption_drift(tiny_toy, tmp_path / n) for n in ("free", "held"))
    assert drift_held < 0.5 * drift_free, (drift_free, drift_held)
    logged = [r for r in map(json.loads, (tmp_path / "held" / "training" / "metrics.jsonl").read_text().splitlines())
              if r["split"] == "train"]
    assert all("uncond_drift" in r for r in logged)
