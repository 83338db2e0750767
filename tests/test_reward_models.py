import pytest
import torch

from rrf.errors import UserError
from rrf.models import LatentRewardEncoder, RewardMLP, TemporalRewardEncoder
from rrf.normalizers import MinMaxNormalizer, StreamingMoments, TimestepScale
from rrf.reward import RelativeReward

CASES = [
    (lambda: RewardMLP(transition_dim=6, horizon=4, hidden_dims=(32, 16)), (3, 16, 6)),
    (lambda: TemporalRewardEncoder(transition_dim=6, dims=(16, 16, 32, 32)), (3, 32, 6)),
    (lambda: LatentRewardEncoder(in_channels=4, dims=(8, 16, 32, 32)), (3, 4, 16, 16)),
]


@pytest.mark.parametrize("make,shape", CASES)
def test_reward_net_save_load_round_trip(tmp_path, make, shape):
    torch.manual_seed(0)
    net = make()
    x, t = torch.randn(shape), torch.tensor([1, 500, 999])
    out = net(x, t)
    assert out.shape == (3,)
    net.save_pretrained(tmp_path)
    loaded = type(net).from_pretrained(tmp_path)
    torch.testing.assert_close(loaded(x, t), out, rtol=1e-6, atol=1e-7)


def test_relative_reward_round_trip_keeps_normaliser_and_scale(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(8, 4, 8, 8) * 3 + 1
    t = torch.tensor([981, 21] * 4)
    moments = StreamingMoments([981, 21], (4, 8, 8))
    moments.update(x, t)
    scale = TimestepScale.fit(t, torch.randn(8, 4, 8, 8))
    reward = RelativeReward(LatentRewardEncoder(dims=(8, 16)), moments.to_scaler(), scale)
    rho, grad = reward.gradient(x, t)
    reward.save_pretrained(tmp_path)
    loaded = RelativeReward.from_pretrained(tmp_path)
    rho2, grad2 = loaded.gradient(x, t)
    torch.testing.assert_close(rho2, rho, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(grad2, grad, rtol=1e-5, atol=1e-9)

    mm = RelativeReward(RewardMLP(transition_dim=4, horizon=2), MinMaxNormalizer.fit(torch.randn(50, 4)))
    mm.save_pretrained(tmp_path / "mm")
    y = torch.randn(2, 5, 4)
    assert torch.equal(RelativeReward.from_pretrained(tmp_path / "mm")(y, torch.zeros(2)), mm(y, torch.zeros(2)))


def test_wrong_shapes_and_missing_paths_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"expects \(B, 4, H, W\)"):
        LatentRewardEncoder(dims=(8,))(torch.randn(2, 3, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match="RewardMLP expects"):
        RewardMLP(transition_dim=3, horizon=4)(torch.randn(2, 2, 3), torch.zeros(2))
    with pytest.raises(UserError, match="no reward model"):
        RelativeReward.from_pretrained(tmp_path / "missing")


def test_mlp_reward_is_mean_over_windows():
    torch.manual_seed(0)
    net = RewardMLP(transition_dim=2, horizon=3, hidden_dims=(8,))
    x, t = torch.randn(1, 5, 2), torch.tensor([7])
    windows = [net(x[:, i : i + 3], t) for i in range(3)]
    torch.testing.assert_close(net(x, t), torch.stack(windows).mean(0))
