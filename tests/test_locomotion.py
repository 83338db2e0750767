"""Locomotion pieces: the direct MuJoCo batch against gymnasium, episodes and files, ARS, the planner
objective, the discriminator guide and Algorithm 2 with inpainting (seconds; the end-to-end run is in
``test_locomotion_quick.py``)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from rrf.decision.ars import ARSConfig, ARSRun, LinearPolicy, train_ars
from rrf.decision.control import PlannerPolicy, StartConditionedDiffusion
from rrf.decision.datasets import load_d4rl
from rrf.decision.discriminator import DiscriminatorReward, score_to_mean_scale
from rrf.decision.locomotion import (
    ENVS,
    Episodes,
    MujocoBatch,
    get_env,
    load_episodes,
    make_gym_env,
    rollout,
    save_episodes,
)
from rrf.decision.locomotion_data import DatasetConfig, load_or_make, replay_end
from rrf.decision.planner import PlannerConfig, build_planner
from rrf.decision.validate_locomotion import LocomotionConfig, algorithm2_tuples, closed_loop, split_episodes
from rrf.errors import UserError
from rrf.guidance import RewardGuide
from rrf.models import TemporalRewardEncoder
from rrf.normalizers import MinMaxNormalizer


@pytest.mark.parametrize("name", list(ENVS))
def test_batch_is_gymnasium_bit_for_bit(name):
    """Resets by seed, observations, rewards and terminations equal gymnasium's exactly."""
    env = ENVS[name]
    gym_env = make_gym_env(env)
    batch = MujocoBatch(env, 2)
    seeds = np.array([11, 12])
    obs = batch.reset(seeds)
    rng = np.random.default_rng(0)
    terminated_somewhere = False
    for i, seed in enumerate(seeds.tolist()):
        g_obs, _ = gym_env.reset(seed=seed)
        assert np.array_equal(g_obs, obs[i])
        for _ in range(150):
            a = rng.uniform(-1, 1, batch.act_dim)
            g_obs, g_rew, g_term, _, _ = gym_env.step(a)
            b_obs, b_rew, b_term = batch.step(a[None], np.array([i]))
            assert np.array_equal(b_obs[0], g_obs) and b_rew[0] == g_rew and b_term[0] == g_term
            if g_term:
                terminated_somewhere = True
                break
    assert terminated_somewhere == env.terminates  # random actions make Hopper and Walker2d fall


def test_normalized_score_references():
    env = ENVS["hopper"]
    assert env.normalized_score(np.array([env.ref_random, env.ref_expert])) == pytest.approx([0.0, 100.0])
    # Shorter episodes compare per-step rates: half the expert's return in half the time is 100.
    assert env.normalized_score(np.array([env.ref_expert / 2]), episode_steps=500) == pytest.approx(
        [100.0 * (env.ref_expert / 2 - env.ref_random / 2) / ((env.ref_expert - env.ref_random) / 2)])


def test_rollout_episodes_end_at_termination_and_files_round_trip(tmp_path):
    env = ENVS["hopper"]
    batch = MujocoBatch(env, 4)
    eps = rollout(batch, lambda obs, idx: np.ones((len(obs), batch.act_dim)), np.arange(4), 300)
    assert (eps.lengths < 300).all() and eps.terminals.sum() == 4  # full throttle falls over
    ends = np.cumsum(eps.lengths) - 1
    assert eps.terminals[ends].all()
    assert eps.returns == pytest.approx([eps.rewards[s:e + 1].sum() for s, e in
                                          zip(ends - eps.lengths + 1, ends, strict=True)])
    path = tmp_path / "hopper.hdf5"
    save_episodes(path, eps, attrs={"kind": "test"})
    back = load_episodes(path)
    assert np.array_equal(back.trajectories.observations, eps.trajectories.observations)
    assert np.array_equal(back.lengths, eps.lengths) and np.array_equal(back.terminals, eps.terminals)
    assert back.rewards == pytest.approx(eps.rewards, rel=1e-6)
    assert np.array_equal(load_d4rl(path).episode_lengths, eps.lengths)  # a plain D4RL reader splits the same
    train, held = split_episodes(back, 0.25, seed=0)
    assert len(held.lengths) == 1 and len(train.lengths) == 3


def test_stepping_on_threads_gives_the_same_bytes_and_an_ars_run_the_same_policies(tmp_path):
    """Copies stepped on 3 threads (some falling, so later steps index a subset) equal one thread's."""
    env = ENVS["walker2d"]

    def episodes(threads: int) -> Episodes:
        rng = np.random.default_rng(2)  # the policy draws from its own generator, the same in both runs
        return rollout(MujocoBatch(env, 7, threads), lambda obs, idx: rng.uniform(-1, 1, (len(obs), 6)),
                       np.arange(7), 200)

    one, three = episodes(1), episodes(3)
    assert len(set(one.lengths.tolist())) > 1  # episodes ended at different steps
    assert np.array_equal(one.trajectories.observations, three.trajectories.observations)
    assert np.array_equal(one.trajectories.actions, three.trajectories.actions)
    assert np.array_equal(one.rewards, three.rewards) and np.array_equal(one.terminals, three.terminals)

    cfg = ARSConfig(iterations=3, directions=4, top=2, episode_steps=60, eval_every=3, eval_episodes=2)
    runs = [train_ars(ENVS["hopper"], cfg, tmp_path / f"t{t}", threads=t) for t in (1, 2)]
    assert np.array_equal(runs[0].M, runs[1].M) and np.array_equal(runs[0].eval_returns, runs[1].eval_returns)
    with pytest.raises(ValueError, match="3 actions for 2 copies"):
        MujocoBatch(env, 2, threads=2).step(np.zeros((3, 6)), np.arange(2))


def test_rollout_from_observations_reproduces_the_reset_state():
    env = ENVS["halfcheetah"]
    batch = MujocoBatch(env, 3)
    actions = np.random.default_rng(1).uniform(-1, 1, (3, 5, batch.act_dim))
    policy = _replay(actions)
    a = rollout(batch, policy, np.arange(3), 5)
    b = rollout(MujocoBatch(env, 3), _replay(actions), None, 5, start=a.trajectories.observations[::5])
    # Observations are stored as float32, so the restart is exact up to that rounding.
    assert np.allclose(a.trajectories.observations, b.trajectories.observations, rtol=1e-4, atol=1e-5)
    assert b.rewards == pytest.approx(a.rewards, rel=1e-4, abs=1e-4)


def _replay(actions):
    step = [0]

    def policy(obs, idx):
        step[0] += 1
        return actions[idx, step[0] - 1]

    return policy


def test_ars_improves_and_resumes_to_the_same_bytes(tmp_path):
    env = ENVS["halfcheetah"]
    cfg = ARSConfig(iterations=6, directions=4, top=2, episode_steps=60, eval_every=3, eval_episodes=2,
                    checkpoint_every=3)
    full = train_ars(env, cfg, tmp_path / "full")
    assert full.M.shape == (7, 6, 17) and list(full.eval_iterations) == [0, 3, 6]
    assert full.eval_returns[-1].mean() > full.eval_returns[0].mean() + 5  # the zero policy barely moves
    # Interrupt at iteration 4 (after the checkpoint at 3), then rerun: it resumes from the checkpoint.
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        train_ars(env, cfg, part, progress=_InterruptAt(4))
    assert (part / "ars-checkpoint.npz").is_file() and not (part / "ars.npz").exists()
    resumed = train_ars(env, cfg, part)
    for field in ("M", "mean", "std", "eval_returns", "train_returns"):
        assert np.array_equal(getattr(resumed, field), getattr(full, field)), field
    assert isinstance(ARSRun.load(part / "ars.npz"), ARSRun)


_ARS_BYTES = """
import hashlib, tempfile
from threadpoolctl import threadpool_info
from rrf.decision.ars import ARSConfig, train_ars
from rrf.decision.locomotion import get_env
cfg = ARSConfig(iterations=3, directions=8, top=4, episode_steps=200, eval_every=1, eval_episodes=2)
run = train_ars(get_env("hopper"), cfg, tempfile.mkdtemp())
kernels = sorted(str(i.get("architecture")) for i in threadpool_info() if i.get("internal_api") == "openblas")
print(",".join(kernels) or "no-openblas", hashlib.sha256(run.M.tobytes() + run.eval_returns.tobytes()).hexdigest())
"""


def test_ars_is_the_same_whichever_blas_kernels_the_cpu_gets():
    """OpenBLAS rounds differently per CPU family; ARS must not depend on it (it did: 2 iterations sufficed)."""
    out = {}
    for core in ("Haswell", "SandyBridge"):
        env = {**os.environ, "OPENBLAS_CORETYPE": core, "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-c", _ARS_BYTES], env=env, capture_output=True, text=True, check=True)
        kernels, digest = proc.stdout.split()
        out[kernels] = digest
    if len(out) < 2:
        pytest.skip(f"numpy's OpenBLAS ignores OPENBLAS_CORETYPE here (kernels {list(out)}), so there is nothing to compare")
    assert len(set(out.values())) == 1, out


class _InterruptAt:
    """A stand-in for a rich ``Progress`` that raises Ctrl-C once ``completed`` reaches ``step``."""

    def __init__(self, step: int):
        self.step = step

    def add_task(self, *args, **kwargs) -> int:
        return 0

    def update(self, task, completed: int, **kwargs) -> None:
        if completed >= self.step:
            raise KeyboardInterrupt


def test_linear_policy_clips_and_batches():
    pol = LinearPolicy(np.full((2, 3), 10.0), np.zeros(3), np.ones(3))
    assert np.array_equal(pol(np.ones((4, 3))), np.ones((4, 2)))
    batched = LinearPolicy(np.stack([np.eye(2, 3), -np.eye(2, 3)]), np.zeros(3), np.ones(3))
    out = batched(np.full((2, 3), 0.5), np.array([1, 0]))
    assert np.allclose(out, [[-0.5, -0.5], [0.5, 0.5]])


def test_datasets_are_cached_and_reproducible(tmp_path):
    env = ENVS["halfcheetah"]
    ars = ARSConfig(iterations=4, directions=4, top=2, episode_steps=40, eval_every=2, eval_episodes=2)
    cfg = DatasetConfig(replay_episodes=6, expert_episodes=4, probe_episodes=3, episode_steps=40, batch=4)
    first, manifest = load_or_make(env, ars, cfg, tmp_path / "a", seed=3)
    again, _ = load_or_make(env, ars, cfg, tmp_path / "a", seed=3)  # from the cache
    fresh, _ = load_or_make(env, ars, cfg, tmp_path / "b", seed=3)  # recomputed elsewhere
    assert set(first) == {"replay", "expert", "probe"}
    for kind in first:
        for other in (again, fresh):
            assert np.array_equal(first[kind].trajectories.actions, other[kind].trajectories.actions)
        assert manifest["returns"][kind]["episodes"] == len(first[kind].lengths)
    assert manifest["policy"]["expert_iteration"] in (0, 2, 4)


def test_replay_end_evaluates_the_skipped_iterations_as_ars_would_and_stops_before_medium(tmp_path):
    env = ENVS["hopper"]
    settings = dict(iterations=12, directions=4, top=2, episode_steps=60, eval_episodes=2)
    sparse_cfg = ARSConfig(eval_every=4, **settings)
    sparse = train_ars(env, sparse_cfg, tmp_path / "sparse")
    dense = train_ars(env, ARSConfig(eval_every=1, **settings), tmp_path / "dense")
    assert np.array_equal(sparse.M, dense.M)  # evaluating does not disturb the search
    curve = dict(zip(dense.eval_iterations.tolist(), dense.eval_returns.mean(axis=1), strict=True))
    means = sparse.eval_returns.mean(axis=1)
    inside = 0
    for fraction in np.linspace(0.05, 1.0, 20):
        end, evaluated = replay_end(env, sparse, sparse_cfg, float(fraction))
        for i, r in evaluated.items():
            assert r == curve[i]  # the same episodes as an ARS run that evaluated every iteration
        target = means[0] + fraction * (means.max() - means[0])
        assert curve[end] < target <= curve[end + 1]
        assert all(curve[i] < target for i in evaluated if i <= end)
        inside += end % 4 != 3  # ends that only the dense evaluations could find
    assert inside > 0


def _tiny_planner(obs_dim=3, act_dim=2, horizon=4, action_weight=10.0, uncond_fraction=0.0):
    torch.manual_seed(0)
    norm = MinMaxNormalizer.fit(torch.randn(64, obs_dim + act_dim))
    cfg = PlannerConfig(denoiser_kwargs={"hidden_dims": (32,)}, horizon=horizon, num_timesteps=5,
                        prediction_type="sample")
    return StartConditionedDiffusion.wrap(build_planner(cfg, norm, obs_dim), action_weight, uncond_fraction)


def test_closed_loop_returns_what_a_resumed_run_reads(tmp_path):
    env = get_env("hopper")
    planner = _tiny_planner(obs_dim=11, act_dim=3).eval()
    cfg = LocomotionConfig.quick(episode_steps=6, rollout_batch=2, progress=False)
    seeds = np.array([3, 4, 5])
    fresh = closed_loop(env, planner, None, seeds, cfg, tmp_path / "e.hdf5", "test", sample_seed=0)
    resumed = closed_loop(env, planner, None, seeds, cfg, tmp_path / "e.hdf5", "test", sample_seed=0)
    assert np.array_equal(fresh.returns, resumed.returns) and np.array_equal(fresh.lengths, resumed.lengths)
    assert fresh.returns.dtype == np.float64 and np.all(fresh.lengths <= 6)


def test_start_conditioned_loss_ignores_the_given_start_and_weights_the_first_action():
    planner = _tiny_planner()
    windows = torch.randn(8, 4, 5)
    out_grads = {}

    def capture(module, inputs, output):
        output.retain_grad()
        out_grads["out"] = output

    handle = planner.denoiser.register_forward_hook(capture)
    loss, _ = planner.loss(windows)
    loss.backward()
    handle.remove()
    g = out_grads["out"].grad.abs()
    assert torch.all(g[:, 0, :3] == 0)  # the start observation is given, not predicted
    assert g[:, 0, 3:].mean() > 3 * g[:, 1:, :].mean()  # the executed action weighs ~10x


def test_unconditional_fraction_trains_the_start_too():
    planner = _tiny_planner(uncond_fraction=1.0)
    out = {}
    def capture(module, inputs, output):
        output.retain_grad()
        out["o"] = output

    handle = planner.denoiser.register_forward_hook(capture)
    planner.loss(torch.randn(8, 4, 5))[0].backward()
    handle.remove()
    assert torch.all(out["o"].grad[:, 0, :3] != 0)


def test_planner_policy_executes_the_first_action_of_a_plan_from_the_observation():
    planner = _tiny_planner().eval()
    obs = np.random.default_rng(0).normal(size=(6, 3))
    policy = PlannerPolicy(planner, seed=5)
    plans = PlannerPolicy(planner, seed=5).plan(obs)
    assert torch.allclose(plans[:, 0, :3], torch.as_tensor(obs, dtype=torch.float32), atol=1e-5)
    assert np.allclose(policy(obs), plans[:, 0, 3:].double().numpy())


def test_discriminator_guide_is_the_scaled_log_probability_gradient():
    planner = _tiny_planner()
    scale = score_to_mean_scale(planner)
    # c_t is d(posterior mean)/d(score): coef_x0 * (1 - abar_t) / sqrt(abar_t) (Tweedie's x0 estimate).
    expected = planner.coef_x0 * (1 - planner.alphas_cumprod) / planner.alphas_cumprod.sqrt()
    assert torch.allclose(scale, expected, rtol=1e-5)
    torch.manual_seed(1)
    clf = TemporalRewardEncoder(5, dims=(8,), time_embed_dim=8)
    reward = DiscriminatorReward(clf, scale)
    x, t = torch.randn(4, 4, 5), torch.tensor([0, 1, 2, 4])
    _, grad = RewardGuide(reward, 1.0).gradients(x, t)
    x_req = x.clone().requires_grad_(True)
    logits = clf(x_req, t)
    (dlogit,) = torch.autograd.grad(logits.sum(), x_req)
    manual = (scale[t] * (1 - torch.sigmoid(logits.detach())))[:, None, None] * dlogit
    assert torch.allclose(grad, manual, atol=1e-6)


def test_algorithm2_with_inpainting_keeps_the_start_fixed_and_its_target_zero():
    base = _tiny_planner().eval()
    torch.manual_seed(7)
    expert = copy.deepcopy(base)
    for p in expert.denoiser.parameters():
        p.data += 0.05 * torch.randn_like(p)
    starts = {"base": np.zeros((3, 3), np.float32), "expert": np.ones((2, 3), np.float32)}
    tuples = algorithm2_tuples(base, expert, starts, unconditional=4, seed=0)
    steps = base.num_timesteps
    assert len(tuples) == steps * (4 + 3 + 4 + 2)
    h = tuples.target
    conditioned = torch.zeros(len(tuples), dtype=torch.bool)
    # Layout per follower: unconditional windows then conditioned ones, each (steps * n) tuples.
    offset = 0
    for n_uncond, n_cond in ((4, 3), (4, 2)):
        offset += steps * n_uncond
        conditioned[offset: offset + steps * n_cond] = True
        offset += steps * n_cond
    assert torch.all(h[conditioned][:, 0, :3] == 0)
    assert h[~conditioned][:, 0, :3].abs().sum() > 0
    start_vals = base.normalize(torch.cat([torch.zeros(1, 5), torch.ones(1, 5)]))[:, :3]
    cond_x = tuples.x[conditioned][:, 0, :3]
    assert all(torch.isclose(row, start_vals[0]).all() or torch.isclose(row, start_vals[1]).all() for row in cond_x)


def test_config_options_are_checked():
    cfg = LocomotionConfig.from_options("quick", sweep="0.1,0.3", datasets=["halfcheetah:replay=a.hdf5",
                                                                            "halfcheetah:expert=minari:x"])
    assert cfg.sweep_omegas == (0.1, 0.3) and cfg.datasets == {"halfcheetah": {"replay": "a.hdf5",
                                                                               "expert": "minari:x"}}
    assert LocomotionConfig.from_options("paper").gate_episodes == 32
    assert LocomotionConfig.from_options("paper", gate_episodes=128).gate_episodes == 128
    for bad in ({"profile": "fast"}, {"profile": "quick", "sweep": "a,b"},
                {"profile": "quick", "datasets": ["halfcheetah=a.hdf5"]},
                {"profile": "quick", "datasets": ["ant:replay=a.hdf5"]}):
        with pytest.raises(UserError):
            LocomotionConfig.from_options(**bad)


def test_episodes_select_and_concat_agree():
    env = ENVS["halfcheetah"]
    eps = rollout(MujocoBatch(env, 3), lambda o, i: np.zeros((len(o), 6)), np.arange(3), 7)
    picked = eps.select(np.array([2, 0]))
    joined = Episodes.concat([eps.select(np.array([2])), eps.select(np.array([0]))])
    assert np.array_equal(picked.trajectories.observations, joined.trajectories.observations)
    assert picked.returns == pytest.approx(eps.returns[[2, 0]])
