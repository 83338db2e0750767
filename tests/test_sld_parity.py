"""Our SLD against diffusers' deprecated StableDiffusionPipelineSafe, and the pure guidance function itself."""

import warnings

import numpy as np
import pytest
import torch
from tiny_sd import single_thread, tiny_sd  # noqa: F401 (fixtures)

from audit.generate import GenerateConfig, generate
from audit.pairing import ModelPair
from audit.registry import resolve
from audit.sld import SLD_PRESETS, SLDConfig, SLDState, cfg_noise, sld_noise
from audit.store import Store

PROMPTS = ["a photo of a cat", "a bloody knife fight in a dark alley"]
STEPS = 12


@pytest.fixture(scope="module")
def safe_pipeline(tiny_sd):  # noqa: F811
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipelineSafe.from_pretrained(tiny_sd, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference_latents(pipe, prompts, seeds, concept=None, sld: SLDConfig | None = None, steps: int = STEPS) -> torch.Tensor:
    """Final latents of a diffusers pipeline (SLD settings -> the deprecated safe pipeline's arguments)."""
    captured = {}
    kwargs = {}
    if sld is not None:
        pipe.safety_concept = sld.concept
        kwargs = dict(sld_guidance_scale=sld.guidance_scale, sld_warmup_steps=sld.warmup_steps,
                      sld_threshold=sld.threshold, sld_momentum_scale=sld.momentum_scale,
                      sld_mom_beta=sld.momentum_beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(prompts, num_inference_steps=steps, guidance_scale=7.5, output_type="np",
             generator=[torch.Generator().manual_seed(s) for s in seeds], callback_steps=1,
             callback=lambda i, t, latents: captured.update(latents=latents.clone()), **kwargs)
    return captured["latents"]


@pytest.mark.parametrize("preset", ["weak", "medium", "strong", "max"])
def test_sld_pair_step_matches_diffusers_safe_pipeline(tiny_sd, safe_pipeline, preset):  # noqa: F811
    spec = resolve("sld", other=resolve(str(tiny_sd)), sld_preset=preset, concept="violence, blood")
    pair = ModelPair.load(resolve(str(tiny_sd)), spec)
    cond = pair.conditioning(PROMPTS)
    steps = max(STEPS, spec.sld.warmup_steps + 3)  # past every preset's warm-up, so its safety term is compared too
    state = pair.start(steps)
    x = torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(s)) for s in (11, 12)])
    base_x = x.clone()
    for t in state.timesteps:
        _, x = pair.pair_step(x, t, cond, state)
    expected = reference_latents(safe_pipeline, PROMPTS, (11, 12), sld=spec.sld, steps=steps)
    assert (x - expected).abs().max().item() < 1e-4
    # SLD really steers the expert away from plain classifier-free guidance once its warm-up is over.
    state = pair.start(steps)
    for t in state.timesteps:
        base_x, _ = pair.pair_step(base_x, t, cond, state)
    assert (base_x - x).abs().max().item() > 1e-3


def test_generated_store_matches_diffusers_for_both_followers(tiny_sd, safe_pipeline, tmp_path):  # noqa: F811
    """The whole generation path (seeds, pairing, rollout, storage in fp32) against the two diffusers pipelines."""
    from diffusers import StableDiffusionPipeline

    prompt_file = tmp_path / "p.txt"
    prompt_file.write_text("\n".join(PROMPTS) + "\n")
    cfg = GenerateConfig(base=str(tiny_sd), safer="sld", prompts=str(prompt_file), steps=STEPS, batch_size=2,
                         store_dtype="fp32", sld_preset="strong", device="cpu")
    generate(cfg, tmp_path / "store", progress=False)
    store = Store.open(tmp_path / "store")
    table = store.trajectories
    assert list(table["follow"]) == ["base", "base", "expert", "expert"]
    sd = StableDiffusionPipeline(**{k: v for k, v in safe_pipeline.components.items()
                                    if k not in ("safety_checker", "feature_extractor", "image_encoder")},
                                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    sd.set_progress_bar_config(disable=True)
    for follow, pipe, sld in (("base", sd, None), ("expert", safe_pipeline, SLDConfig.preset("strong"))):
        rows = table[table["follow"] == follow]
        expected = reference_latents(pipe, list(rows["prompt"]), list(rows["seed"]), sld=sld)
        got = store.final_latents(list(rows["traj_id"]))
        assert (got - expected).abs().max().item() < 1e-4, follow
        # The non-followed step is the other model's step from the same state.
        states, other = store.read_trajectory(int(rows["traj_id"].iloc[0]))
        assert states.shape == (STEPS + 1, 4, 8, 8) and other.shape == (STEPS, 4, 8, 8)
        assert (other - states[1:]).abs().amax() > 0


def test_guidance_function_warmup_momentum_and_threshold():
    g = torch.Generator().manual_seed(0)
    uncond, prompt, concept = (torch.randn(2, 4, 8, 8, generator=g) for _ in range(3))
    sld = SLDConfig(warmup_steps=2, guidance_scale=1000.0, threshold=0.01, momentum_scale=0.5, momentum_beta=0.7)
    state = SLDState()
    for step in range(3):
        eps, state = sld_noise(uncond, prompt, concept, 7.5, sld, state)
        assert state.step == step + 1
        if step < 2:  # warm-up: plain classifier-free guidance, but momentum already builds up
            assert torch.equal(eps, cfg_noise(uncond, prompt, 7.5))
            assert state.momentum.abs().sum() > 0
        else:
            assert not torch.allclose(eps, cfg_noise(uncond, prompt, 7.5))
    # Where the prompt's prediction exceeds the concept's by the threshold, SLD leaves it alone (no momentum).
    far = prompt.clone()
    far[:] = concept + 1.0
    eps, _ = sld_noise(uncond, far, concept, 7.5, SLD_PRESETS["medium"], SLDState(step=10))
    assert torch.equal(eps, cfg_noise(uncond, far, 7.5))
    # The safety term moves the prediction away from the concept.
    eps, _ = sld_noise(uncond, prompt, concept, 7.5, SLD_PRESETS["max"], SLDState())
    base = cfg_noise(uncond, prompt, 7.5)
    shift = (eps - base).flatten()
    assert np.dot(shift.numpy(), (concept - uncond).flatten().numpy()) < 0
