"""ModelPair: shared UNet passes (3 evaluations per tuple for SLD, 4 for two checkpoints) and scheduler safety."""

import copy
import warnings

import pytest
import torch
from tiny_sd import single_thread, tiny_sd, tiny_sd_finetune  # noqa: F401 (fixtures)

from audit.pairing import ModelPair, check_pairable, make_scheduler
from audit.registry import resolve
from rrf.algorithm2 import rollout_pair
from rrf.errors import UserError

PROMPTS = ["a red square", "a green circle", "a blue triangle"]
STEPS = 6


def noise(n: int, seed: int = 0) -> torch.Tensor:
    return torch.cat([torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(seed + i)) for i in range(n)])


def count_unet_evaluations(pair: ModelPair, follow: str = "base") -> tuple[int, int]:
    """(latents pushed through any UNet, tuples produced) for one rollout of len(PROMPTS) trajectories."""
    seen = []
    hooks = [unet.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
             for unet, _ in pair.groups]
    cond, state = pair.conditioning(PROMPTS), pair.start(STEPS)
    rollout_pair(lambda x, t: pair.pair_step(x, t, cond, state), noise(len(PROMPTS)), torch.tensor(state.timesteps),
                 follow)
    for hook in hooks:
        hook.remove()
    assert state.unet_evaluations == sum(seen)
    return sum(seen), len(PROMPTS) * STEPS


def test_sld_pair_costs_three_unet_evaluations_per_tuple_in_one_call(tiny_sd):  # noqa: F811
    base = resolve(str(tiny_sd))
    pair = ModelPair.load(base, resolve("sld", other=base))
    assert len(pair.groups) == 1 and pair.base.unet is pair.expert.unet and pair.evaluations_per_step == 3
    evaluations, tuples = count_unet_evaluations(pair)
    assert evaluations / tuples == 3


def test_two_checkpoints_cost_four_evaluations_and_share_vae_and_text_encoder(tiny_sd, tiny_sd_finetune):  # noqa: F811
    pair = ModelPair.load(resolve(str(tiny_sd)), resolve(str(tiny_sd_finetune)))
    assert len(pair.groups) == 2 and pair.evaluations_per_step == 4
    assert pair.base.text_encoder is pair.expert.text_encoder and pair.base.unet is not pair.expert.unet
    evaluations, tuples = count_unet_evaluations(pair, follow="expert")
    assert evaluations / tuples == 4
    cond, state = pair.conditioning(PROMPTS), pair.start(STEPS)
    base_next, expert_next = pair.pair_step(noise(3), state.timesteps[0], cond, state)
    assert (base_next - expert_next).abs().max() > 1e-3  # different UNets really give different steps


def _followed_and_reference(tiny_sd, scheduler_name: str):  # noqa: F811
    """Final latents of the pair following the expert (SLD) vs diffusers' safe pipeline with the same sampler."""
    from diffusers.pipelines.deprecated.stable_diffusion_safe import StableDiffusionPipelineSafe

    base = resolve(str(tiny_sd))
    expert = resolve("sld", other=base, sld_preset="strong")
    pair = ModelPair.load(base, expert, scheduler=scheduler_name)
    cond, state = pair.conditioning(PROMPTS[:2]), pair.start(STEPS)
    x_T = noise(2) * state.schedulers[0].init_noise_sigma
    rollout = rollout_pair(lambda x, t: pair.pair_step(x, t, cond, state), x_T, torch.tensor(state.timesteps),
                           "expert")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe = StableDiffusionPipelineSafe.from_pretrained(tiny_sd, safety_checker=None, feature_extractor=None,
                                                           requires_safety_checker=False)
    pipe.scheduler = copy.deepcopy(pair.scheduler)
    pipe.safety_concept = expert.sld.concept
    pipe.set_progress_bar_config(disable=True)
    captured = {}
    sld = expert.sld
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pipe(PROMPTS[:2], num_inference_steps=STEPS, output_type="np",
             generator=[torch.Generator().manual_seed(i) for i in range(2)],
             callback=lambda i, t, latents: captured.update(latents=latents.clone()),
             sld_guidance_scale=sld.guidance_scale, sld_warmup_steps=sld.warmup_steps, sld_threshold=sld.threshold,
             sld_momentum_scale=sld.momentum_scale, sld_mom_beta=sld.momentum_beta)
    return rollout.final, captured["latents"]


@pytest.mark.parametrize("scheduler", ["dpm", "euler"])
def test_multistep_and_sigma_schedulers_step_each_model_once(tiny_sd, scheduler):  # noqa: F811
    """Each model has its own scheduler copy: the followed trajectory equals the model sampled alone."""
    ours, reference = _followed_and_reference(tiny_sd, scheduler)
    assert (ours - reference).abs().max().item() < 1e-4


def test_a_shared_multistep_scheduler_would_be_advanced_twice(tiny_sd):  # noqa: F811
    """The hazard the per-side copies avoid: one DPM-Solver stepped by both models runs ahead and drifts."""
    base = resolve(str(tiny_sd))
    pair = ModelPair.load(base, resolve("sld", other=base), scheduler="dpm")
    cond, own, shared = pair.conditioning(PROMPTS[:2]), pair.start(STEPS), pair.start(STEPS)
    shared.schedulers[1] = shared.schedulers[0]
    x_own = x_shared = noise(2)
    for t in own.timesteps[:3]:
        x_own = pair.pair_step(x_own, t, cond, own)[0]
        x_shared = pair.pair_step(x_shared, t, cond, shared)[0]
    assert [s.step_index for s in own.schedulers] == [3, 3] and shared.schedulers[0].step_index == 6
    assert (x_own - x_shared).abs().max().item() > 1e-3


def test_schedulers_that_cannot_pair_are_refused_with_a_fix(tiny_sd):  # noqa: F811
    base = resolve(str(tiny_sd))
    pair = ModelPair.load(base, resolve("sld", other=base), scheduler="pndm")
    with pytest.raises(UserError, match="PNDMScheduler sampler repeats timesteps.*--scheduler ddim"):
        pair.start(STEPS)
    config = dict(pair.scheduler.config)
    for stochastic in ("DDPMScheduler", "EulerAncestralDiscreteScheduler"):
        scheduler = make_scheduler("model", {**config, "_class_name": stochastic})
        scheduler.set_timesteps(STEPS)
        with pytest.raises(UserError, match=f"the {stochastic} sampler is stochastic"):
            check_pairable(scheduler)
    with pytest.raises(UserError, match="unknown scheduler 'heun2'; choose one of ddim, dpm"):
        make_scheduler("heun2", config)


def test_sld_needs_classifier_free_guidance(tiny_sd):  # noqa: F811
    base = resolve(str(tiny_sd))
    with pytest.raises(UserError, match="safety guidance needs classifier-free guidance"):
        ModelPair.load(base, resolve("sld", other=base), guidance_scale=1.0)
