import torch

from rrf.losses import gradient_alignment_loss, relative_step, reward_gradient
from rrf.models import RewardMLP


def _reward(dim=3):
    torch.manual_seed(0)
    return RewardMLP(transition_dim=dim, horizon=1, hidden_dims=(16, 16), time_embed_dim=8).double()


def test_relative_step_is_expert_minus_base():
    base, expert = torch.tensor([1.0, 2.0]), torch.tensor([3.0, 1.0])
    assert torch.equal(relative_step(base, expert), torch.tensor([2.0, -1.0]))


def test_reward_gradient_matches_finite_differences():
    reward = _reward()
    x = torch.randn(4, 3, dtype=torch.float64)
    t = torch.tensor([0, 10, 100, 500])
    _, grad = reward_gradient(reward, x, t)
    eps = 1e-6
    for i in range(3):
        dx = torch.zeros_like(x)
        dx[:, i] = eps
        fd = (reward(x + dx, t) - reward(x - dx, t)) / (2 * eps)
        torch.testing.assert_close(grad[:, i], fd, rtol=1e-6, atol=1e-8)


def test_double_backprop_parameter_gradient_matches_finite_differences():
    """The loss differentiates grad_x rho w.r.t. the weights (create_graph=True); check it numerically."""
    reward = _reward()
    x = torch.randn(6, 3, dtype=torch.float64)
    t = torch.randint(0, 1000, (6,))
    target = torch.randn(6, 3, dtype=torch.float64)
    weight = torch.rand(6, dtype=torch.float64) + 0.5
    loss, _ = gradient_alignment_loss(reward, x, t, target, weight=weight)
    loss.backward()
    param = reward.mlp[0].weight
    analytic = param.grad.clone()
    eps = 1e-6
    for idx in [(0, 0), (3, 1), (7, 2), (15, 10)]:
        with torch.no_grad():
            param[idx] += eps
            up = gradient_alignment_loss(reward, x, t, target, weight=weight)[0].item()
            param[idx] -= 2 * eps
            down = gradient_alignment_loss(reward, x, t, target, weight=weight)[0].item()
            param[idx] += eps
        assert abs((up - down) / (2 * eps) - analytic[idx].item()) < 1e-6 * max(1.0, abs(analytic[idx].item()))


def test_loss_is_zero_when_gradient_matches_target():
    """A linear reward rho = <w, x> has grad w; the loss with target w vanishes and the cosine is 1."""

    class Linear(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64))

        def forward(self, x, t):
            return x @ self.w

    model = Linear()
    x = torch.randn(5, 3, dtype=torch.float64)
    loss, info = gradient_alignment_loss(model, x, torch.zeros(5), model.w.detach().expand(5, 3))
    assert loss.item() == 0.0
    assert abs(info["cosine"] - 1.0) < 1e-6 and abs(info["explained"] - 1.0) < 1e-6
    loss, info = gradient_alignment_loss(model, x, torch.zeros(5), -model.w.detach().expand(5, 3))
    assert abs(info["cosine"] + 1.0) < 1e-6 and loss.item() > 0
