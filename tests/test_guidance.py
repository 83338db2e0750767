"""Sign test: guiding the base with +omega * grad rho moves its samples toward the expert."""

import pytest
import torch

from rrf.guidance import RewardGuide, guided_scheduler_step
from rrf.validation.gaussian import (
    GaussianValidationConfig,
    default_pairs,
    fit_reward,
    generate,
    make_scheduler,
)


@pytest.fixture(scope="module")
def shifted(tmp_path_factory):
    pair = next(p for p in default_pairs() if p.name == "shifted-2d")
    scheduler = make_scheduler(25)
    cfg = GaussianValidationConfig(train_trajectories=256, steps=400)
    reward = fit_reward(pair, generate(pair, scheduler, 256, seed=3), scheduler, cfg,
                        tmp_path_factory.mktemp("guide"), progress=False)
    return pair, scheduler, reward


def sample_base(pair, scheduler, guide, n=512, seed=11):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for t in scheduler.timesteps.tolist():
        abar = float(scheduler.alphas_cumprod[t])
        x = guided_scheduler_step(scheduler, pair.base.eps(x, abar), t, x, guide)
    return x


def mean_log_ratio(pair, x):
    return (pair.expert.log_prob(x, 1.0) - pair.base.log_prob(x, 1.0)).mean().item()


def test_positive_guidance_moves_base_toward_expert(shifted):
    pair, scheduler, reward = shifted
    reward = reward.double()
    plain = sample_base(pair, scheduler, None)
    toward = sample_base(pair, scheduler, RewardGuide(reward, scale=1.0))
    away = sample_base(pair, scheduler, RewardGuide(reward, scale=-1.0))
    # The expert's means are the base's shifted by (+0.6, +0.3): samples must follow that direction,
    # and the true log-likelihood ratio (expert vs base) of the samples must rise.
    shift = (toward.mean(0) - plain.mean(0)).tolist()
    assert shift[0] > 0.05 and shift[1] > 0.0
    assert mean_log_ratio(pair, toward) > mean_log_ratio(pair, plain) > mean_log_ratio(pair, away)


def test_no_guidance_below_t_stopgrad(shifted):
    pair, scheduler, reward = shifted
    guide = RewardGuide(reward.double(), scale=5.0, t_stopgrad=480)
    x = torch.randn(8, 2, dtype=torch.float64)
    _, grad_low = guide.gradients(x, torch.tensor(440))
    _, grad_high = guide.gradients(x, torch.tensor(480))
    assert torch.count_nonzero(grad_low) == 0 and torch.count_nonzero(grad_high) > 0
    mean = torch.zeros_like(x)
    assert torch.equal(guide.shift(mean, x, torch.tensor(0)), mean)
