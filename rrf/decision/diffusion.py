"""``GaussianDiffusion``: a DDPM over state-action windows (jannerm/diffuser's ``GaussianDiffusion``).

The planner sees raw transitions at its edges (``loss`` takes dataset windows, ``sample`` returns
trajectories in environment units, conditions are raw observations) and works inside on windows
min-max normalised to [-1, 1] with the normaliser of the base dataset (Diffuser's convention; an
expert fine-tuned from a base keeps the base's normaliser, or the two models' steps would live in
different spaces and their difference would mean nothing). The noisy state ``x_t`` that rewards and
guides see is in that normalised space.

Notation (DDPM, Ho et al. 2020) -> variable:

================================  ==========================================
alpha_bar_t                       ``alphas_cumprod[t]`` (diffusers' scheduler schedule)
x_0 prediction, eq. (15)          ``predict_start``: from the noise or directly (``prediction_type``)
posterior mean mu~_t, eq. (7)     ``posterior_mean``: ``coef_x0 * x0_hat + coef_xt * x_t``
posterior variance beta~_t        ``posterior_std ** 2`` (zero at t = 0: the last step adds no noise)
================================  ==========================================

Timesteps are step indices ``0 .. T-1``; the step at index ``t`` maps ``x_t`` to ``x_{t-1}`` and
rewards are evaluated as ``rho(x_t, t)`` with the same ``t``. Start-state inpainting (Diffuser's
``apply_conditioning``) overwrites the observation part of chosen window positions before every
step and after the last.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Literal

import torch
from diffusers import DDPMScheduler
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rrf.decision.temporal import DENOISERS
from rrf.errors import UserError
from rrf.guidance import Guide, active_steps
from rrf.losses import relative_step
from rrf.normalizers import MinMaxNormalizer

PredictionType = Literal["epsilon", "sample"]
Conditions = Mapping[int, Tensor]  # window position -> raw observations (B, obs_dim)


class GaussianDiffusion(nn.Module):
    """A denoiser over (B, H, D) windows plus the DDPM schedule and the data normaliser."""

    def __init__(self, denoiser: nn.Module, normalizer: MinMaxNormalizer, observation_dim: int,
                 num_timesteps: int = 100, prediction_type: PredictionType = "epsilon", clip_denoised: bool = True,
                 beta_schedule: str = "squaredcos_cap_v2"):
        super().__init__()
        if prediction_type not in ("epsilon", "sample"):
            raise ValueError(f"prediction_type must be 'epsilon' or 'sample', not {prediction_type!r}")
        self.denoiser = denoiser
        self.normalizer = normalizer
        self.settings = {"observation_dim": observation_dim, "num_timesteps": num_timesteps,
                         "prediction_type": prediction_type, "clip_denoised": clip_denoised,
                         "beta_schedule": beta_schedule}
        # The schedule is diffusers' (cosine = Diffuser's default); the posterior is DDPM eq. (7).
        abar = DDPMScheduler(num_train_timesteps=num_timesteps, beta_schedule=beta_schedule).alphas_cumprod.double()
        abar_prev = torch.cat([torch.ones(1, dtype=abar.dtype), abar[:-1]])
        betas = 1 - abar / abar_prev
        self.register_buffer("alphas_cumprod", abar.float())
        self.register_buffer("coef_x0", (abar_prev.sqrt() * betas / (1 - abar)).float())
        self.register_buffer("coef_xt", ((1 - betas).sqrt() * (1 - abar_prev) / (1 - abar)).float())
        self.register_buffer("posterior_std", (betas * (1 - abar_prev) / (1 - abar)).sqrt().float())

    # -- shapes and units ----------------------------------------------------------------------------

    @property
    def horizon(self) -> int:
        return self.denoiser.config.horizon

    @property
    def transition_dim(self) -> int:
        return self.denoiser.config.transition_dim

    @property
    def num_timesteps(self) -> int:
        return self.settings["num_timesteps"]

    @property
    def observation_dim(self) -> int:
        return self.settings["observation_dim"]

    def normalize(self, windows: Tensor) -> Tensor:
        return self.normalizer.normalize(windows)

    def unnormalize(self, x: Tensor) -> Tensor:
        return self.normalizer.unnormalize(x)

    # -- training ------------------------------------------------------------------------------------

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        abar = self.alphas_cumprod[t].view(-1, 1, 1)
        return abar.sqrt() * x0 + (1 - abar).sqrt() * noise

    def loss(self, windows: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Denoising loss on raw dataset windows (B, H, D): MSE of the noise (or x_0) prediction."""
        x0 = self.normalize(windows)
        t = torch.randint(0, self.num_timesteps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0)
        pred = self.denoiser(self.q_sample(x0, t, noise), t)
        target = noise if self.settings["prediction_type"] == "epsilon" else x0
        loss = (pred - target).pow(2).mean()
        return loss, {"loss": loss.item()}

    # -- one reverse step ----------------------------------------------------------------------------

    def predict_start(self, x: Tensor, t: Tensor) -> Tensor:
        """x_0 estimate from x_t, eq. (15) for noise prediction; clipped to the data range [-1, 1]."""
        out = self.denoiser(x, t)
        if self.settings["prediction_type"] == "epsilon":
            abar = self.alphas_cumprod[t].view(-1, 1, 1)
            out = (x - (1 - abar).sqrt() * out) / abar.sqrt()
        return out.clamp(-1, 1) if self.settings["clip_denoised"] else out

    def posterior_mean(self, x: Tensor, t: Tensor) -> Tensor:
        """mu~_t(x_t, x0_hat) (B, H, D) for x (B, H, D) at step indices t (B,)."""
        x0 = self.predict_start(x, t)
        return self.coef_x0[t].view(-1, 1, 1) * x0 + self.coef_xt[t].view(-1, 1, 1) * x

    def condition(self, x: Tensor, cond: Conditions | None) -> Tensor:
        """Inpaint raw observations at window positions (normalised with the window's first coordinates)."""
        if not cond:
            return x
        x = x.clone()
        d = self.observation_dim
        for k, obs in cond.items():
            padded = torch.zeros(obs.shape[0], self.transition_dim, dtype=x.dtype, device=x.device)
            padded[:, :d] = obs
            x[:, k, :d] = self.normalize(padded)[:, :d]
        return x

    # -- sampling ------------------------------------------------------------------------------------

    @torch.no_grad()
    def sample(self, batch_size: int, cond: Conditions | None = None, guide: Guide | None = None,
               generator: torch.Generator | None = None, return_chain: bool = False) -> Tensor:
        """Sample (B, H, D) raw trajectories; with ``guide`` the mean is shifted by ``omega grad rho(x_t, t)``.

        ``return_chain=True`` returns the normalised chain (T + 1, B, H, D) from x_T to x_0 instead.
        """
        device = self.alphas_cumprod.device
        shape = (batch_size, self.horizon, self.transition_dim)
        x = self.condition(torch.randn(shape, generator=generator, device=device), cond)
        chain = [x]
        for step in reversed(range(self.num_timesteps)):
            t = torch.full((batch_size,), step, device=device, dtype=torch.long)
            mean = self.posterior_mean(x, t)
            if guide is not None:
                mean = guide.shift(mean, x, t)
            x = self.condition(mean + self.posterior_std[step] * torch.randn(shape, generator=generator, device=device),
                               cond)
            chain.append(x)
        return torch.stack(chain) if return_chain else self.unnormalize(x)

    # -- save / load ---------------------------------------------------------------------------------

    def save_pretrained(self, path: str | Path) -> None:
        """``path/``: the denoiser (diffusers layout), ``diffusion.json`` and ``normalizer.safetensors``."""
        path = Path(path)
        self.denoiser.save_pretrained(path)
        (path / "diffusion.json").write_text(json.dumps(self.settings, indent=2))
        save_file({k: v.contiguous() for k, v in self.normalizer.state_dict().items()}, path / "normalizer.safetensors")

    @classmethod
    def from_pretrained(cls, path: str | Path, device: str | torch.device = "cpu") -> GaussianDiffusion:
        path = Path(path)
        if not (path / "diffusion.json").is_file() or not (path / "config.json").is_file():
            raise UserError(f"no planner at {path} (diffusion.json or config.json missing); "
                            "pass a directory written by GaussianDiffusion.save_pretrained")
        name = json.loads((path / "config.json").read_text()).get("_class_name")
        if name not in DENOISERS:
            raise UserError(f"{path / 'config.json'} names denoiser {name!r}; known: {', '.join(DENOISERS)}")
        denoiser = DENOISERS[name].from_pretrained(path)
        normalizer = MinMaxNormalizer(denoiser.config.transition_dim)
        normalizer.load_state_dict(load_file(path / "normalizer.safetensors"))
        settings = json.loads((path / "diffusion.json").read_text())
        return cls(denoiser, normalizer, **settings).to(device).eval()


def check_compatible(base: GaussianDiffusion, expert: GaussianDiffusion) -> None:
    """A base/expert pair must share window shape, schedule and normaliser, or their steps cannot be compared."""
    problems = []
    if (base.horizon, base.transition_dim) != (expert.horizon, expert.transition_dim):
        problems.append(f"windows {base.horizon}x{base.transition_dim} vs {expert.horizon}x{expert.transition_dim}")
    if base.settings != expert.settings:
        problems.append(f"settings {base.settings} vs {expert.settings}")
    if not (torch.equal(base.normalizer.mins, expert.normalizer.mins)
            and torch.equal(base.normalizer.maxs, expert.normalizer.maxs)):
        problems.append("different normalisers (fit the expert with the base's normaliser)")
    if problems:
        raise UserError(f"the base and expert planners are not a pair: {'; '.join(problems)}")


def pair_stepper(base: GaussianDiffusion, expert: GaussianDiffusion,
                 generator: torch.Generator | None = None) -> Callable[[Tensor, int], tuple[Tensor, Tensor]]:
    """``(x_t, t) -> (base x_{t-1}, expert x_{t-1})`` from the same x_t and the same noise (Algorithm 2).

    Sharing the noise makes the difference of the two steps exactly the difference of their means.
    """
    check_compatible(base, expert)

    def step(x: Tensor, t: int) -> tuple[Tensor, Tensor]:
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        noise = base.posterior_std[t] * torch.randn(x.shape, generator=generator, device=x.device)
        return base.posterior_mean(x, tt) + noise, expert.posterior_mean(x, tt) + noise

    return step


class OracleGuide:
    """Guide the base by ``omega * h_t``, the exact target ``grad rho`` is fitted to (no guidance where ``t < t_stopgrad``).

    ``h_t = mu_expert(x_t, t) - mu_base(x_t, t)`` (``relative_step``), so a perfectly fitted reward steers
    exactly like this, and ``omega = 1, t_stopgrad = 0`` samples the expert. It separates the two ways
    reward guidance can fail: a reward fitted badly, or a direction that does not help at that omega.
    Only a diagnostic: it needs both planners at every step, which the reward exists to avoid. Pass it to
    ``base.sample``: the sampler's unguided ``mean`` is the base's step, so only the expert's is computed.
    """

    def __init__(self, base: GaussianDiffusion, expert: GaussianDiffusion, scale: float, t_stopgrad: float = 0):
        check_compatible(base, expert)
        self.expert, self.scale, self.t_stopgrad = expert, scale, t_stopgrad

    @torch.no_grad()
    def shift(self, mean: Tensor, x: Tensor, t: Tensor) -> Tensor:
        h = relative_step(mean, self.expert.posterior_mean(x, t))
        return mean + self.scale * h * active_steps(t, self.t_stopgrad, h)
