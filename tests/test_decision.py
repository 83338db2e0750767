"""The planner pieces: window data and file formats, denoisers, the Gaussian diffusion, training, extraction."""

import sys
import types

import h5py
import numpy as np
import pytest
import torch

from rrf.decision.datasets import Trajectories, WindowDataset, load_d4rl, load_minari, save_d4rl
from rrf.decision.diffusion import GaussianDiffusion, OracleGuide, check_compatible, pair_stepper
from rrf.decision.extract import PairTuples, RewardConfig, alignment_by_timestep, fit_reward, pair_tuples
from rrf.decision.planner import PlannerConfig, build_planner, train_planner
from rrf.decision.temporal import MLPDenoiser, TemporalUnet
from rrf.errors import UserError
from rrf.guidance import RewardGuide
from rrf.normalizers import MinMaxNormalizer


@pytest.fixture(autouse=True)
def one_thread():
    # Small models on a shared 2-core machine: a second intra-op thread makes every step wait for a
    # busy core (measured 12x slower under load), so these tests run single-threaded.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def toy_trajectories(lengths=(7, 5, 9), obs_dim=2, act_dim=1, seed=0) -> Trajectories:
    rng = np.random.default_rng(seed)
    n = sum(lengths)
    return Trajectories(rng.normal(size=(n, obs_dim)).astype(np.float32), rng.normal(size=(n, act_dim)).astype(np.float32),
                        np.asarray(lengths, dtype=np.int64), rng.normal(size=(n, 2)).astype(np.float32))


def tiny_planner(horizon=8, denoiser="MLPDenoiser", seed=0, **kwargs) -> GaussianDiffusion:
    torch.manual_seed(seed)
    norm = MinMaxNormalizer(3)
    norm.mins.copy_(torch.tensor([-2.0, -1.0, -1.0]))
    norm.maxs.copy_(torch.tensor([2.0, 3.0, 1.0]))
    dk = {"hidden_dims": (32, 32)} if denoiser == "MLPDenoiser" else {"dims": (8, 16)}
    cfg = PlannerConfig(denoiser=denoiser, denoiser_kwargs=dk, horizon=horizon, num_timesteps=10, **kwargs)
    return build_planner(cfg, norm, observation_dim=2).eval()


# -- data ------------------------------------------------------------------------------------------------


def test_windows_stay_inside_episodes_and_batches_depend_on_the_step_only():
    data = toy_trajectories()
    ds = WindowDataset(data, horizon=5, batch_size=16, seed=3)
    assert len(ds) == (7 - 4) + (5 - 4) + (9 - 4)
    episode_of = np.repeat(np.arange(3), data.episode_lengths)
    for start in ds.starts.numpy():
        assert len(set(episode_of[start:start + 5])) == 1
    w = ds.windows(torch.tensor([0, len(ds) - 1]))
    assert w.shape == (2, 5, 3)
    assert torch.equal(w[0], torch.from_numpy(data.transitions[:5]))
    assert torch.equal(ds.batch(7), ds.batch(7)) and not torch.equal(ds.batch(7), ds.batch(8))
    # Every 3rd step of each episode, restarting at every episode's first step.
    assert WindowDataset(data, horizon=5, batch_size=1, stride=3).starts.tolist() == [0, 7, 12, 15]
    with pytest.raises(UserError, match="no episode has 10 steps"):
        data.window_starts(10)


def test_select_episodes_keeps_steps_and_goals_together():
    data = toy_trajectories()
    sub = data.select_episodes(np.array([2, 0]))
    assert sub.episode_lengths.tolist() == [9, 7]
    assert np.array_equal(sub.observations[:9], data.observations[12:21])
    assert np.array_equal(sub.goals[9:], data.goals[:7])


def test_d4rl_round_trip_and_real_d4rl_flags(tmp_path):
    data = toy_trajectories()
    path = tmp_path / "d.hdf5"
    save_d4rl(path, data, attrs={"source": "test"})
    back = load_d4rl(path)
    for field in ("observations", "actions", "episode_lengths", "goals"):
        assert np.array_equal(getattr(back, field), getattr(data, field))
    with h5py.File(path) as f:
        assert f.attrs["source"] == "test" and f["timeouts"][6] and not f["timeouts"][5]

    # A D4RL file as published: terminals end episodes too, no goals, the last episode unflagged.
    raw = tmp_path / "raw.hdf5"
    with h5py.File(raw, "w") as f:
        f["observations"] = np.arange(20, dtype=np.float32).reshape(10, 2)
        f["actions"] = np.zeros((10, 1), dtype=np.float32)
        f["terminals"] = np.array([0, 0, 1, 0, 0, 0, 0, 0, 0, 0], dtype=bool)
        f["timeouts"] = np.array([0, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)
    got = load_d4rl(raw)
    assert got.episode_lengths.tolist() == [3, 3, 4] and got.goals is None


def test_d4rl_errors_are_one_line_user_errors(tmp_path):
    with pytest.raises(UserError, match="no dataset file"):
        load_d4rl(tmp_path / "missing.hdf5")
    bad = tmp_path / "bad.hdf5"
    with h5py.File(bad, "w") as f:
        f["observations"] = np.zeros((3, 2))
    with pytest.raises(UserError, match="lacks the D4RL key"):
        load_d4rl(bad)
    broken = tmp_path / "broken.hdf5"
    broken.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(UserError, match="cannot read"):
        load_d4rl(broken)


def test_minari_episodes_become_trajectories(monkeypatch):
    # A stand-in for the optional `minari` package with its episode layout: one more observation than actions.
    def episode(n, offset):
        obs = np.arange((n + 1) * 4, dtype=np.float64).reshape(n + 1, 4) + offset
        return types.SimpleNamespace(
            observations={"observation": obs, "achieved_goal": obs[:, :2], "desired_goal": np.full((n + 1, 2), offset)},
            actions=np.ones((n, 2)))

    fake = types.ModuleType("minari")
    fake.load_dataset = lambda dataset_id: types.SimpleNamespace(iterate_episodes=lambda: iter([episode(3, 0), episode(2, 100)]))
    monkeypatch.setitem(sys.modules, "minari", fake)
    data = load_minari("D4RL/pointmaze/umaze-v2")
    assert data.episode_lengths.tolist() == [3, 2]
    assert data.observations.shape == (5, 4) and data.observations[3, 0] == 100
    assert data.goals[4].tolist() == [100, 100]

    def unavailable(dataset_id):
        raise FileNotFoundError("not here")

    fake.load_dataset = unavailable
    with pytest.raises(UserError, match="minari download"):
        load_minari("D4RL/pointmaze/umaze-v2")
    monkeypatch.setitem(sys.modules, "minari", None)
    with pytest.raises(UserError, match="pip install"):
        load_minari("x")


# -- denoisers and diffusion ---------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,kwargs", [(MLPDenoiser, {"hidden_dims": (16,)}), (TemporalUnet, {"dims": (8, 16)})])
def test_denoisers_keep_the_window_shape_and_round_trip(tmp_path, cls, kwargs):
    net = cls(transition_dim=3, horizon=8, **kwargs).eval()
    x, t = torch.randn(2, 8, 3), torch.tensor([0, 5])
    assert net(x, t).shape == (2, 8, 3)
    net.save_pretrained(tmp_path)
    assert torch.allclose(cls.from_pretrained(tmp_path)(x, t), net(x, t))
    with pytest.raises(ValueError, match="windows"):
        net(torch.randn(2, 7, 3), t)


def test_temporal_unet_needs_a_divisible_horizon():
    with pytest.raises(ValueError, match="divisible by 4"):
        TemporalUnet(transition_dim=3, horizon=10, dims=(8, 16, 32))


@pytest.mark.parametrize("prediction_type", ["epsilon", "sample"])
def test_last_reverse_step_returns_the_clipped_x0_prediction(prediction_type):
    planner = tiny_planner(prediction_type=prediction_type)
    x, t0 = torch.randn(4, 8, 3), torch.zeros(4, dtype=torch.long)
    assert float(planner.posterior_std[0]) == 0.0
    assert torch.allclose(planner.posterior_mean(x, t0), planner.predict_start(x, t0), atol=1e-6)
    assert planner.predict_start(x * 100, t0).abs().max() <= 1.0


def test_posterior_mean_is_the_ddpm_posterior_of_the_true_x0():
    # A denoiser that knows x0 exactly: the posterior mean must match q(x_{t-1} | x_t, x0) computed from betas.
    planner = tiny_planner(prediction_type="sample")
    x0 = torch.rand(3, 8, 3) * 2 - 1
    planner.denoiser.forward = lambda x, t: x0
    abar = planner.alphas_cumprod.double()
    t = 6
    x_t = torch.randn(3, 8, 3)
    beta = 1 - abar[t] / abar[t - 1]
    expected = (abar[t - 1].sqrt() * beta * x0 + (1 - beta).sqrt() * (1 - abar[t - 1]) * x_t) / (1 - abar[t])
    got = planner.posterior_mean(x_t, torch.full((3,), t))
    assert torch.allclose(got, expected.float(), atol=1e-5)


def test_sampling_is_seeded_and_inpaints_the_start_state(tmp_path):
    planner = tiny_planner()
    start = torch.tensor([[1.5, 2.0], [-1.0, 0.5]])
    a = planner.sample(2, cond={0: start}, generator=torch.Generator().manual_seed(0))
    b = planner.sample(2, cond={0: start}, generator=torch.Generator().manual_seed(0))
    assert a.shape == (2, 8, 3) and torch.equal(a, b)
    assert torch.allclose(a[:, 0, :2], start, atol=1e-5)
    chain = planner.sample(2, generator=torch.Generator().manual_seed(0), return_chain=True)
    assert chain.shape == (11, 2, 8, 3)

    planner.save_pretrained(tmp_path / "p")
    loaded = GaussianDiffusion.from_pretrained(tmp_path / "p")
    c = loaded.sample(2, cond={0: start}, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(a, c, atol=1e-6)
    with pytest.raises(UserError, match="no planner"):
        GaussianDiffusion.from_pretrained(tmp_path)


def test_reward_guidance_moves_samples_toward_higher_reward():
    planner = tiny_planner()
    # rho = mean of the first coordinate: guidance must raise it, and omega = 0 must change nothing.
    guide = RewardGuide(lambda x, t: x[..., 0].mean(dim=1), scale=2.0)
    plain = planner.sample(64, generator=torch.Generator().manual_seed(1))
    guided = planner.sample(64, guide=guide, generator=torch.Generator().manual_seed(1))
    zero = planner.sample(64, guide=RewardGuide(guide.reward, scale=0.0), generator=torch.Generator().manual_seed(1))
    assert guided[..., 0].mean() > plain[..., 0].mean() + 0.1
    assert torch.equal(zero, plain)


def test_oracle_guide_at_omega_one_samples_the_expert_and_at_zero_the_base():
    base, expert = tiny_planner(), tiny_planner(seed=1)
    start = torch.tensor([[1.5, 2.0], [-1.0, 0.5], [0.0, 0.0]])

    def sample(planner, guide=None):
        return planner.sample(3, cond={0: start}, guide=guide, generator=torch.Generator().manual_seed(4))

    plain, other = sample(base), sample(expert)
    assert (plain - other).abs().max() > 0.1  # the two planners differ, so the checks below can fail
    assert torch.allclose(sample(base, OracleGuide(base, expert, 1.0)), other, atol=1e-5)
    assert torch.equal(sample(base, OracleGuide(base, expert, 0.0)), plain)
    # t_stopgrad above every step: no guidance at all; at the last step only: the expert's except there.
    assert torch.equal(sample(base, OracleGuide(base, expert, 1.0, t_stopgrad=base.num_timesteps)), plain)
    late = sample(base, OracleGuide(base, expert, 1.0, t_stopgrad=1))
    assert not torch.allclose(late, other, atol=1e-5) and (late - other).abs().max() < (plain - other).abs().max()


def test_alignment_by_timestep_measures_each_step():
    torch.manual_seed(0)
    t = torch.arange(3).repeat_interleave(5)
    x = torch.randn(15, 4, 3)
    c = torch.tensor([1.0, 2.0, 3.0])
    tuples = PairTuples(t, x, c[t].view(-1, 1, 1) * x)  # h = grad of rho = c_t |x|^2 / 2

    def exact(x, t):
        return 0.5 * c[t] * x.flatten(1).pow(2).sum(1)

    def wrong_at_step_1(x, t):  # the right gradient except at t = 1, where it points the other way
        return exact(x, t) * torch.where(t == 1, -1.0, 1.0)

    fit = alignment_by_timestep(exact, tuples)
    assert fit["tuples"] == 15 and fit["t"] == [2, 1, 0]
    assert fit["cosine"] == pytest.approx(1.0) and fit["explained"] == pytest.approx(1.0)
    fit = alignment_by_timestep(wrong_at_step_1, tuples)
    assert fit["cosine_by_t"] == pytest.approx([1.0, -1.0, 1.0])
    assert fit["explained_by_t"] == pytest.approx([1.0, -3.0, 1.0])  # 1 - |-h - h|^2 / |h|^2
    assert fit["explained"] < 0.5


def test_pairs_must_share_shape_schedule_and_normaliser():
    base, other = tiny_planner(), tiny_planner(seed=1)
    check_compatible(base, other)
    other.normalizer.maxs[0] += 1
    with pytest.raises(UserError, match="normaliser"):
        check_compatible(base, other)
    with pytest.raises(UserError, match="windows"):
        check_compatible(base, tiny_planner(horizon=16))


def test_pair_steps_share_the_noise_so_their_difference_is_the_mean_difference():
    base, expert = tiny_planner(seed=0), tiny_planner(seed=1)
    step = pair_stepper(base, expert, torch.Generator().manual_seed(0))
    x = torch.randn(5, 8, 3)
    b, e = step(x, 7)
    t = torch.full((5,), 7)
    assert torch.allclose(e - b, expert.posterior_mean(x, t) - base.posterior_mean(x, t), atol=1e-5)
    assert not torch.allclose(b, base.posterior_mean(x, t))  # noise was added


# -- training and extraction ----------------------------------------------------------------------------------


def line_data(offset: float, episodes=40, length=12, seed=0) -> Trajectories:
    """Points drifting right along y = offset (+ small noise); action = constant drift."""
    rng = np.random.default_rng(seed)
    x = np.linspace(-1, 1, length)[None, :] + rng.uniform(-1, 1, (episodes, 1))
    y = np.full_like(x, offset) + 0.05 * rng.normal(size=x.shape)
    obs = np.stack([x, y], -1).reshape(-1, 2).astype(np.float32)
    act = np.full((len(obs), 1), 0.5, dtype=np.float32)
    return Trajectories(obs, act, np.full(episodes, length, dtype=np.int64))


def test_planners_learn_their_data_and_fine_tuned_experts_keep_the_base_normaliser(tmp_path):
    base_data = line_data(offset=0.0)
    both = Trajectories(np.concatenate([base_data.observations, line_data(1.0).observations]),
                        np.concatenate([base_data.actions, line_data(1.0).actions]),
                        np.r_[base_data.episode_lengths, base_data.episode_lengths])
    cfg = PlannerConfig(denoiser_kwargs={"hidden_dims": (64, 64)}, horizon=8, num_timesteps=20, prediction_type="sample",
                        steps=400, finetune_steps=300, batch_size=64, lr=2e-3, ema_decay=0.9)
    base = train_planner(both, cfg, tmp_path / "base", seed=0)
    expert = train_planner(line_data(1.0, seed=1), cfg, tmp_path / "expert", seed=0, init=base)
    check_compatible(base, expert)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    y_base = base.sample(128, generator=gen())[..., 1].mean(dim=1)
    y_expert = expert.sample(128, generator=gen())[..., 1].mean(dim=1)
    assert 0.25 < float((y_base > 0.5).float().mean()) < 0.75  # both lines
    assert float((y_expert > 0.5).float().mean()) > 0.9  # the expert's line
    # A finished run is loaded, not retrained: same weights, and no optimiser checkpoints left behind.
    again = train_planner(both, cfg, tmp_path / "base", seed=0)
    assert torch.equal(again.sample(4, generator=gen()), base.sample(4, generator=gen()))
    assert not (tmp_path / "base" / "checkpoints").exists()

    # The extracted reward prefers the expert's line: rho is higher on expert-like windows.
    tuples = pair_tuples(base, expert, trajectories=64, seed=0)
    assert len(tuples) == 2 * 64 * 20 and tuples.x.shape[1:] == (8, 3)
    reward = fit_reward(tuples, RewardConfig(model_kwargs={"horizon": 2, "hidden_dims": (32, 32)}, steps=300, lr=3e-3),
                        tmp_path / "reward", seed=0)
    t = torch.full((256,), 2)
    windows = lambda off: base.normalize(  # noqa: E731
        WindowDataset(line_data(off, seed=5), 8, 1).windows(torch.arange(256) % 200))
    with torch.no_grad():
        assert float((reward(windows(1.0), t) > reward(windows(0.0), t)).float().mean()) > 0.9
