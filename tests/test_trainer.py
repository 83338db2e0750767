import json

import pytest
import torch

from rrf.errors import UserError
from rrf.losses import gradient_alignment_loss
from rrf.models import RewardMLP
from rrf.trainer import Trainer, TrainerConfig

DATA_X = torch.randn(256, 3, generator=torch.Generator().manual_seed(0))
DATA_T = torch.randint(0, 1000, (256,), generator=torch.Generator().manual_seed(1))
# A gradient field (of x^T A x / 2 with A symmetric), so the alignment loss can actually go down.
_A = torch.tensor([[1.0, 0.5, 0.0], [0.5, -1.0, 0.2], [0.0, 0.2, 2.0]])
DATA_H = DATA_X @ _A


def batches(step):
    idx = torch.randint(0, 256, (32,), generator=torch.Generator().manual_seed(step))
    return DATA_X[idx], DATA_T[idx], DATA_H[idx]


class Interrupt(Exception):
    pass


def make_loss(stop_at=None):
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if stop_at is not None and calls["n"] > stop_at:
            raise Interrupt  # a crash after a checkpoint, like a SIGKILL
        x, t, h = batch
        # Dropout-like noise from the global RNG: resume must reproduce it too.
        x = x + 0.01 * torch.randn_like(x)
        return gradient_alignment_loss(model, x, t, h)

    return loss_fn


def make_trainer(out, steps=20, stop_at=None, **cfg):
    torch.manual_seed(0)
    model = RewardMLP(transition_dim=3, hidden_dims=(16, 16))
    config = TrainerConfig(steps=steps, lr=1e-3, warmup_steps=3, checkpoint_every=5, log_every=2, progress=False,
                           **cfg)
    return Trainer(model, make_loss(stop_at), batches, config, out)


def _log(run):
    timing = {"seconds_per_step", "data_fraction"}
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(timing <= set(r) for r in lines if r["split"] == "train")
    return [{k: v for k, v in r.items() if k not in timing} for r in lines]


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_is_bitwise_equal_to_uninterrupted_run(tmp_path):
    full = make_trainer(tmp_path / "full").train()
    crashed = make_trainer(tmp_path / "resumed", stop_at=12)
    with pytest.raises(Interrupt):
        crashed.train()
    assert sorted(p.name for p in (tmp_path / "resumed" / "checkpoints").iterdir()) == ["step-0000005", "step-0000010"]
    resumed = make_trainer(tmp_path / "resumed").train()
    a, b = _state(full), _state(resumed)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    # Lines past the checkpoint were dropped and rewritten identically (wall-clock timings aside).
    assert _log(tmp_path / "full") == _log(tmp_path / "resumed")


def test_finished_run_returns_without_training_and_keeps_only_recent_checkpoints(tmp_path):
    make_trainer(tmp_path, keep_checkpoints=2).train()
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert names == ["step-0000015", "step-0000020"]
    again = make_trainer(tmp_path, stop_at=0, keep_checkpoints=2)  # any training step would raise
    again.train()
    assert again.step == 20


def test_resume_with_different_settings_is_refused(tmp_path):
    make_trainer(tmp_path, steps=10).train()
    with pytest.raises(UserError, match="different settings.*weight_decay"):
        make_trainer(tmp_path, steps=10, weight_decay=0.1).train()


def test_training_reduces_loss_and_logs_metrics(tmp_path):
    trainer = make_trainer(tmp_path, steps=60)
    trainer.train()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(2, 61, 2))
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert {"loss", "cosine", "lr", "grad_norm"} <= set(lines[-1])


def test_non_finite_loss_is_a_user_error(tmp_path):
    def bad_loss(model, batch):
        x, t, h = batch
        return model(x, t).sum() * float("nan"), {"loss": float("nan")}

    config = TrainerConfig(steps=3, progress=False)
    with pytest.raises(UserError, match="learning rate"):
        Trainer(RewardMLP(transition_dim=3), bad_loss, batches, config, tmp_path).train()
