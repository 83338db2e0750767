import numpy as np
import pytest
import torch

from rrf.errors import UserError
from rrf.normalizers import MinMaxNormalizer, StreamingMoments, TimestepScale, TimestepStandardScaler


def test_streaming_scaler_equals_numpy_on_chunked_random_data():
    rng = np.random.default_rng(0)
    timesteps = [999, 500, 250, 1]
    shape = (2, 3, 3)
    n = 5000
    # A large offset with a small spread breaks the naive E[x^2] - E[x]^2 in float32; Chan's merge must not.
    # float32 data (what the store holds), reference statistics in float64 numpy.
    x = (rng.normal(1e4, 0.01, size=(n, *shape)) * rng.uniform(0.5, 2, size=shape)).astype(np.float32).astype(np.float64)
    t = rng.choice(timesteps, size=n)
    moments = StreamingMoments(timesteps, shape)
    for chunk in np.array_split(np.arange(n), 37):
        moments.update(torch.from_numpy(x[chunk]).float(), torch.from_numpy(t[chunk]))
    scaler = moments.to_scaler()
    for k, ts in enumerate(timesteps):
        sel = x[t == ts]
        np.testing.assert_allclose(moments.mean[k].numpy(), sel.mean(0), rtol=1e-12)
        np.testing.assert_allclose(moments.variance()[k].numpy(), sel.var(0), rtol=1e-7)
        np.testing.assert_allclose(scaler.std[k].numpy(), sel.std(0), rtol=1e-5)


def test_merging_two_accumulators_equals_one_pass():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(400, 5)))
    t = torch.from_numpy(rng.choice([3, 2, 1], size=400))
    whole, a, b = (StreamingMoments([3, 2, 1], (5,)) for _ in range(3))
    whole.update(x, t)
    a.update(x[:123], t[:123])
    b.update(x[123:], t[123:])
    a.merge(b)
    torch.testing.assert_close(a.mean, whole.mean)
    torch.testing.assert_close(a.m2, whole.m2)
    torch.testing.assert_close(a.count, whole.count)


def test_scaler_normalises_and_refuses_unknown_timesteps():
    scaler = TimestepStandardScaler([10, 20], (2,))
    scaler.mean.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    scaler.std.copy_(torch.tensor([[2.0, 2.0], [1.0, 0.5]]))
    x = torch.tensor([[3.0, 4.0], [3.0, 4.5]])
    t = torch.tensor([10, 20])
    torch.testing.assert_close(scaler.normalize(x, t), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))
    torch.testing.assert_close(scaler.unnormalize(scaler.normalize(x, t), t), x)
    with pytest.raises(UserError, match="not seen"):
        scaler.normalize(x, torch.tensor([10, 15]))


def test_minmax_maps_data_onto_unit_interval():
    data = torch.tensor([[0.0, 10.0], [2.0, 30.0], [1.0, 20.0]])
    norm = MinMaxNormalizer.fit(data)
    out = norm.normalize(data)
    assert out.min().item() == -1.0 and out.max().item() == 1.0
    torch.testing.assert_close(norm.unnormalize(out), data)


def test_timestep_scale_is_target_rms():
    t = torch.tensor([5, 5, 9, 9])
    h = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    scale = TimestepScale.fit(t, h)
    torch.testing.assert_close(scale(torch.tensor([5, 9])), torch.tensor([(12.5 / 2) ** 0.5, 1.0]))
