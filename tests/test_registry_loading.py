"""Model aliases, SLD options, locating models (local, single file, hub offline) and loading components once."""

import os

import pytest
import torch
from safetensors.torch import save_file
from tiny_sd import fake_hub_cache, run_main, single_thread, tiny_sd, tiny_sd_finetune  # noqa: F401 (fixtures)

from audit.loading import ComponentLoader, locate
from audit.pairing import ModelPair
from audit.registry import ALIASES, TOY_WEIGHTS, resolve
from audit.sld import DEFAULT_SAFETY_CONCEPT, SLD_PRESETS, SLDConfig
from rrf.errors import UserError


def test_aliases_resolve_to_the_documented_models():
    assert resolve("sd14").weights == "CompVis/stable-diffusion-v1-4"
    assert resolve("sd15").weights == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert resolve("sd21").weights == "stabilityai/stable-diffusion-2-1-base"
    safe = resolve("safe-sd")
    assert safe.weights == resolve("sd15").weights and safe.sld == SLDConfig.preset("max")
    assert safe.sld.concept == DEFAULT_SAFETY_CONCEPT
    for preset in ("weak", "medium", "strong", "max"):
        assert resolve(f"safe-sd-{preset}").sld == SLD_PRESETS[preset]
    assert SLD_PRESETS["strong"] == SLDConfig(7, 2000, 0.025, 0.5, 0.7)
    assert resolve("toy").weights == str(TOY_WEIGHTS / "toy")
    assert resolve("toy-safe").weights == str(TOY_WEIGHTS / "toy-safe") and resolve("toy-safe").sld is None
    toy_sld = resolve("toy-sld")
    assert toy_sld.weights == resolve("toy").weights and toy_sld.sld.concept == "red"


def test_sld_options_concept_preset_custom_and_sld_on_the_other_model():
    spec = resolve("toy-sld", concept="green", sld_preset="strong")
    assert spec.sld == SLDConfig.preset("strong", "green") and spec.sld_preset == "strong"
    custom = resolve("safe-sd", sld_overrides={"guidance_scale": 1500.0, "threshold": None})
    assert custom.sld.guidance_scale == 1500.0 and custom.sld.threshold == 1.0 and custom.sld_preset is None
    sld = resolve("sld", other=resolve("sd21"), sld_preset="medium")
    assert sld.weights == "stabilityai/stable-diffusion-2-1-base" and sld.sld == SLD_PRESETS["medium"]
    with pytest.raises(UserError, match="apply to SLD models, and 'sd15' is not one"):
        resolve("sd15", concept="red")
    with pytest.raises(UserError, match="unknown SLD preset 'extreme'; choose one of weak, medium, strong, max"):
        resolve("safe-sd", sld_preset="extreme")


def test_hub_ids_paths_and_unknown_names(tmp_path):
    spec = resolve("someone/esd-model@v2")
    assert (spec.weights, spec.revision) == ("someone/esd-model", "v2")
    assert resolve(str(tmp_path)).weights == str(tmp_path.resolve())
    with pytest.raises(UserError, match=r"unknown model 'sd16'; choose an alias \(sd14, sd15"):
        resolve("sd16")
    with pytest.raises(UserError, match="does not exist"):
        resolve(str(tmp_path / "missing.safetensors"))


def test_offline_and_not_cached_is_one_line_naming_the_model_and_how_to_download(tmp_path, monkeypatch, capsys):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(UserError) as err:
        locate(resolve("rrf-audit-tests/no-such-model"))
    message = str(err.value)
    assert "'rrf-audit-tests/no-such-model' (rrf-audit-tests/no-such-model) is not in the local Hugging Face" in message
    assert "hf download rrf-audit-tests/no-such-model" in message and "\n" not in message
    code, _, stderr = run_main(monkeypatch, capsys, "generate", "rrf-audit-tests/no-such-model", "sld",
                               "--prompts", "harmless", "--limit", "2", "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.startswith("error:") and stderr.strip().count("\n") == 0
    assert "hf download" in stderr and "Traceback" not in stderr


def test_models_command_lists_every_alias(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "200")
    code, stdout, _ = run_main(monkeypatch, capsys, "models")
    assert code == 0
    for alias in ALIASES:
        assert alias in stdout
    assert "CompVis/stable-diffusion-v1-4" in stdout and "SLD max" in stdout


def test_identical_components_are_loaded_once(tiny_sd, tiny_sd_finetune):  # noqa: F811
    base, finetune = locate(resolve(str(tiny_sd))), locate(resolve(str(tiny_sd_finetune)))
    same = [c for c in base.fingerprints if base.fingerprints[c] == finetune.fingerprints[c]]
    assert same == ["vae", "text_encoder", "tokenizer", "scheduler"]
    loader = ComponentLoader(torch.device("cpu"), torch.float32)
    assert loader.get(base, "vae") is loader.get(finetune, "vae")
    assert loader.get(base, "text_encoder") is loader.get(finetune, "text_encoder")
    assert loader.get(base, "unet") is not loader.get(finetune, "unet")
    assert loader.loaded() == 4


def test_single_safetensors_unet_file_takes_the_rest_from_the_base(tiny_sd, tiny_sd_finetune, tmp_path):  # noqa: F811
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd_finetune / "unet")
    save_file(unet.state_dict(), tmp_path / "esd-unet.safetensors")
    pair = ModelPair.load(resolve(str(tiny_sd)), resolve(str(tmp_path / "esd-unet.safetensors")))
    assert pair.evaluations_per_step == 4 and pair.base.text_encoder is pair.expert.text_encoder
    for name, param in unet.state_dict().items():
        assert torch.equal(pair.expert.unet.state_dict()[name], param)
    with pytest.raises(UserError, match="single UNet file; pair it with a base model"):
        locate(resolve(str(tmp_path / "esd-unet.safetensors")))


def test_hub_ids_load_from_the_offline_cache_with_revision_and_blob_hashes(tiny_sd, tmp_path, monkeypatch):  # noqa: F811
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    fake_hub_cache(tmp_path, "tiny-org/tiny-sd", tiny_sd)
    located = locate(resolve("tiny-org/tiny-sd"))
    assert located.revision == "0123456789abcdef" * 2 + "01234567"
    assert located.fingerprints == locate(resolve(str(tiny_sd))).fingerprints  # blob names are the sha256
    pair = ModelPair.load(resolve("tiny-org/tiny-sd"), resolve("sld", other=resolve("tiny-org/tiny-sd")))
    assert pair.provenance()["base"]["revision"] == located.revision and pair.evaluations_per_step == 3
