"""Full single-file Stable Diffusion checkpoints (original LDM layout) on either side of a pair, and files that are not."""

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from tiny_sd import (  # noqa: F401 (fixtures)
    fake_hub_cache,
    run_main,
    save_ldm_checkpoint,
    single_thread,
    tiny_sd,
    tiny_sd_finetune,
)

from audit.loading import LDM_PREFIXES, ComponentLoader, locate
from audit.pairing import ModelPair
from audit.registry import resolve
from rrf.algorithm2 import rollout_pair
from rrf.errors import UserError

SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"  # where diffusers takes an SD 1.x file's configs from


@pytest.fixture(scope="module")
def full_file(tiny_sd_finetune, tmp_path_factory) -> Path:  # noqa: F811
    """``tiny_sd_finetune`` (the UNet differs from ``tiny_sd``'s) as one LDM-layout checkpoint."""
    return save_ldm_checkpoint(tiny_sd_finetune, tmp_path_factory.mktemp("ldm") / "finetune.safetensors")


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache (this machine's real one may hold SD 1.5)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    return tmp_path / "hub"


def test_ldm_writer_round_trips_through_the_loader(tiny_sd_finetune, full_file):  # noqa: F811
    reference = locate(resolve(str(tiny_sd_finetune)))
    located = locate(resolve(str(full_file)), reference=reference)
    assert located.file.prefixes == LDM_PREFIXES
    loader = ComponentLoader(torch.device("cpu"), torch.float32)
    new, old = ({c: loader.get(m, c) for c in ("unet", "vae", "text_encoder")} for m in (located, reference))
    assert all(new[c] is not old[c] for c in new)
    generator = torch.Generator().manual_seed(0)
    latents, image = torch.randn(2, 4, 8, 8, generator=generator), torch.rand(2, 3, 16, 16, generator=generator) * 2 - 1
    text = torch.randn(2, 7, 32, generator=generator)
    ids = loader.get(reference, "tokenizer")(["a red square", "a blue circle"], padding="max_length",
                                              return_tensors="pt").input_ids
    with torch.no_grad():
        for run in (lambda m: m["unet"](latents, 500, text).sample, lambda m: m["vae"].decode(latents).sample,
                    lambda m: m["vae"].encode(image).latent_dist.mean,
                    lambda m: m["text_encoder"](ids).last_hidden_state):
            assert torch.allclose(run(new), run(old), atol=1e-6)


def test_ldm_unet_alone_is_a_unet_fine_tune(tiny_sd, tiny_sd_finetune, full_file, tmp_path):  # noqa: F811
    from safetensors import safe_open

    with safe_open(str(full_file), framework="pt") as f:
        save_file({k: f.get_tensor(k) for k in f.keys() if k.startswith("model.diffusion_model.")},
                  tmp_path / "unet.safetensors")
    located = locate(resolve(str(tmp_path / "unet.safetensors")), reference=locate(resolve(str(tiny_sd))))
    assert located.file.prefixes == {"unet": "model.diffusion_model."}
    unet = ComponentLoader(torch.device("cpu"), torch.float32).get(located, "unet")
    reference = locate(resolve(str(tiny_sd_finetune)))
    expected = ComponentLoader(torch.device("cpu"), torch.float32).get(reference, "unet").state_dict()
    assert all(torch.equal(unet.state_dict()[k], v) for k, v in expected.items())
    with pytest.raises(UserError, match="single UNet file; pair it with a base model"):
        locate(resolve(str(tmp_path / "unet.safetensors")))


def _rollout(pair: ModelPair, follow: str):
    cond, state = pair.conditioning(["a red square", "a green circle"]), pair.start(3)
    x_T = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    return rollout_pair(lambda x, t: pair.pair_step(x, t, cond, state), x_T, torch.tensor(state.timesteps), follow)


def test_full_checkpoint_as_safer_or_base_matches_the_directory_pair(tiny_sd, tiny_sd_finetune, full_file,  # noqa: F811
                                                                      hub_cache, tmp_path):
    sha256 = hashlib.sha256(full_file.read_bytes()).hexdigest()
    # As the safer model: configs, tokenizer and scheduler come from the base directory.
    pair = ModelPair.load(resolve(str(tiny_sd)), resolve(str(full_file)))
    directories = ModelPair.load(resolve(str(tiny_sd)), resolve(str(tiny_sd_finetune)))
    for follow in ("base", "expert"):
        ours, theirs = _rollout(pair, follow), _rollout(directories, follow)
        assert torch.equal(ours.states, theirs.states) and torch.equal(ours.other, theirs.other)
    assert (ours.states[1:] - ours.other).abs().max() > 1e-3  # the two UNets really differ
    expert = pair.provenance()["expert"]
    assert expert["unet_file"] == str(full_file) and expert["single_file"]["sha256"] == sha256
    assert expert["single_file"]["components"] == ["unet", "vae", "text_encoder"]
    assert pair.expert.model.fingerprints["tokenizer"] == pair.base.model.fingerprints["tokenizer"]

    # As the base model beside a directory: the configs come from that directory, no hub needed.
    pair = ModelPair.load(resolve(str(full_file)), resolve(str(tiny_sd)))
    directories = ModelPair.load(resolve(str(tiny_sd_finetune)), resolve(str(tiny_sd)))
    ours, theirs = _rollout(pair, "base"), _rollout(directories, "base")
    assert torch.equal(ours.states, theirs.states) and torch.equal(ours.other, theirs.other)
    assert pair.provenance()["base"]["single_file"]["configs"] == str(tiny_sd)

    # Alone (or beside another single file): the configs come from the hub repo diffusers names, here a
    # cached copy of only its configs.
    configs = tmp_path / "configs"
    shutil.copytree(tiny_sd, configs, ignore=shutil.ignore_patterns("*.safetensors"))
    fake_hub_cache(hub_cache, SD15, configs)
    pair = ModelPair.load(resolve(str(full_file)), resolve("sld", other=resolve(str(full_file))))
    ours = _rollout(pair, "base")
    assert torch.equal(ours.states, theirs.states)
    base = pair.provenance()["base"]
    assert base["single_file"] == {"sha256": sha256, "components": ["unet", "vae", "text_encoder"], "configs": SD15}
    assert base["revision"] == "0123456789abcdef" * 2 + "01234567"


def test_components_of_one_file_are_loaded_once(tiny_sd, full_file):  # noqa: F811
    reference = locate(resolve(str(tiny_sd)))
    first, again = (locate(resolve(str(full_file)), reference=reference) for _ in range(2))
    assert len({first.fingerprints[c] for c in LDM_PREFIXES}) == 3  # one file, three different components
    loader = ComponentLoader(torch.device("cpu"), torch.float32)
    assert all(loader.get(first, c) is loader.get(again, c) for c in LDM_PREFIXES)
    assert loader.loaded() == 3


def test_full_checkpoint_as_base_offline_without_configs_names_the_repo(full_file, hub_cache, tmp_path,  # noqa: F811
                                                                         monkeypatch, capsys):
    with pytest.raises(UserError) as err:
        locate(resolve(str(full_file)))
    assert f"({SD15}) is not in the local Hugging Face cache" in str(err.value)
    assert f"hf download {SD15}" in str(err.value) and "\n" not in str(err.value)
    code, _, stderr = run_main(monkeypatch, capsys, "generate", str(full_file), "sld", "--prompts", "harmless",
                               "--limit", "2", "--out", str(tmp_path / "out"))
    assert code == 2 and stderr.startswith("error:") and stderr.strip().count("\n") == 0
    assert f"hf download {SD15}" in stderr and "Traceback" not in stderr


def test_files_that_are_no_checkpoint_are_one_line_errors(tiny_sd, full_file, tmp_path):  # noqa: F811
    from safetensors import safe_open

    reference = locate(resolve(str(tiny_sd)))
    save_file({"head.weight": torch.zeros(2, 2)}, tmp_path / "classifier.safetensors")
    with pytest.raises(UserError) as err:
        locate(resolve(str(tmp_path / "classifier.safetensors")), reference=reference)
    assert str(err.value) == (f"{tmp_path / 'classifier.safetensors'} is neither a UNet nor a full Stable Diffusion "
                              "1.x checkpoint in the original layout: it has no UNet (model.diffusion_model.*) or VAE "
                              "(first_stage_model.*) or CLIP text encoder (cond_stage_model.transformer.*) keys")
    with safe_open(str(full_file), framework="pt") as f:  # an SDXL-like file: UNet and VAE, another text encoder
        save_file({k: f.get_tensor(k) for k in f.keys() if not k.startswith("cond_stage_model.")}
                  | {"conditioner.embedders.0.weight": torch.zeros(1)}, tmp_path / "other.safetensors")
    with pytest.raises(UserError, match=r"it has no CLIP text encoder \(cond_stage_model.transformer.\*\) keys$"):
        locate(resolve(str(tmp_path / "other.safetensors")), reference=reference)
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(UserError, match="is not a readable .safetensors file") as err:
        locate(resolve(str(tmp_path / "broken.safetensors")), reference=reference)
    assert "\n" not in str(err.value)
