"""`rrf-audit fit`: train the relative reward of a generated store (the paper's Stable Diffusion setup).

A numbered recipe, like a diffusers pipeline's ``__call__``:

1. open the store and claim the run directory (same settings resume, different ones are refused);
2. split by prompt (seeded, stratified by category, balanced by follower) -> ``split.csv``;
3. one streaming pass over the training trajectories fits the per-(timestep, coordinate) latent
   scaling and the per-timestep target scale (``scaling.safetensors``);
4. build ``RelativeReward(LatentRewardEncoder(dims), scaler, scale)``;
5. train with the shared ``rrf.trainer.Trainer`` on tuples streamed from the shards (memory bounded),
   validating on held-out tuples of test prompts;
6. save the EMA reward to ``reward/`` and a manifest.

Multi-GPU / multi-process: run under ``accelerate launch``; each process draws its own slice of every
global batch and gradients are averaged by accelerate's DDP wrapper.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import pandas as pd
import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file

from audit.split import split_prompts
from audit.store import Store
from rrf.errors import UserError
from rrf.losses import gradient_alignment_loss, relative_step
from rrf.manifest import claim_output_dir, provenance, write_json_atomic
from rrf.models import LatentRewardEncoder
from rrf.normalizers import TimestepScale, TimestepStandardScaler
from rrf.reward import RelativeReward
from rrf.trainer import Trainer, TrainerConfig


@dataclass
class FitConfig:
    dims: tuple[int, ...] = (32, 64, 128, 256)
    """Channel widths of the 2-D UNet-encoder reward (paper Table 3)."""
    layers_per_level: int = 1
    """ResNet blocks per resolution."""
    lr: float = 1e-4
    """Adam learning rate (paper: 1e-4)."""
    batch_size: int = 64
    """Global batch of tuples (paper: 64), split across processes."""
    steps: int = 6000
    """Training steps (paper: 6000)."""
    max_samples_per_trajectory: float | None = 900.0
    """Cap on steps x batch / training trajectories (None: no cap). Neighbouring tuples of a trajectory are
    nearly the same state, so trajectories, not tuples, measure how much data a small store holds, and on
    one the paper's 6000 steps overfit: on the toy audit (214 training trajectories, the cap is 3010
    steps) the held-out loss is lowest near 3000 steps and rises after, and on another split accuracy fell
    from 96.3% at 3000 steps to 90.7% at 6000. An I2P store (7524 training trajectories) is never capped."""
    warmup_steps: int = 100
    ema_decay: float = 0.999
    test_fraction: float = 0.2
    """Share of prompts held out for evaluation (never trained on)."""
    seed: int = 0
    val_tuples: int = 512
    """Held-out tuples of test prompts scored for the validation loss."""
    eval_every: int = 500
    checkpoint_every: int = 500
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast on GPU; CPU runs use fp32."""

    def __post_init__(self) -> None:
        # Checked when the settings are made, so that `compare` refuses before it generates anything.
        if not self.lr > 0:
            raise UserError(f"the reward's learning rate must be positive, got {self.lr} (paper: 1e-4)")

    def training_steps(self, train_trajectories: int) -> int:
        """``steps``, capped by ``max_samples_per_trajectory`` (at least one step)."""
        if self.max_samples_per_trajectory is None:
            return self.steps
        cap = math.ceil(self.max_samples_per_trajectory * train_trajectories / self.batch_size)
        return max(1, min(self.steps, cap))


def _claim(run_dir: Path, store: Store, cfg: FitConfig, accelerator: Accelerator) -> None:
    """The run is tied to the store's exact content (manifest hash): new data means a new run."""
    manifest_sha = hashlib.sha256((store.root / "manifest.json").read_bytes()).hexdigest()
    config = {**asdict(cfg), "store": str(store.root.resolve()), "store_manifest_sha256": manifest_sha}
    # The main process creates run.json first; the others then only check it.
    with accelerator.main_process_first():
        claim_output_dir(run_dir, "fit", config)


def load_split(run_dir: Path) -> pd.DataFrame:
    path = run_dir / "split.csv"
    if not path.is_file():
        raise UserError(f"{run_dir} has no split.csv; it is not a finished `rrf-audit fit` run directory")
    return pd.read_csv(path)


def _split(store: Store, run_dir: Path, cfg: FitConfig, accelerator: Accelerator) -> pd.DataFrame:
    path = run_dir / "split.csv"
    if accelerator.is_main_process and not path.is_file():
        split = split_prompts(store.trajectories, cfg.test_fraction, cfg.seed)
        tmp = path.with_name(".split.csv.tmp")
        split[["traj_id", "prompt_id", "follow", "split"]].to_csv(tmp, index=False)
        tmp.replace(path)
    accelerator.wait_for_everyone()
    return load_split(run_dir)


def _scaling(store: Store, train_ids: list[int], run_dir: Path,
             accelerator: Accelerator) -> tuple[TimestepStandardScaler, TimestepScale]:
    """Fit (or reload) the latent scaler and the target scale with one streaming pass on the main process."""
    path = run_dir / "scaling.safetensors"
    if accelerator.is_main_process and not path.is_file():
        x_moments, target_moments = store.fit_moments(train_ids)
        scaler, scale = x_moments.to_scaler(), TimestepScale.from_moments(target_moments)
        tmp = path.with_name(".scaling.safetensors.tmp")
        save_file({**{f"scaler.{k}": v for k, v in scaler.state_dict().items()},
                   **{f"scale.{k}": v for k, v in scale.state_dict().items()}}, tmp)
        tmp.replace(path)
    accelerator.wait_for_everyone()
    tensors = load_file(path)
    scaler = TimestepStandardScaler(store.timesteps, store.latent_shape)
    scaler.load_state_dict({k.removeprefix("scaler."): v for k, v in tensors.items() if k.startswith("scaler.")})
    scale = TimestepScale(store.timesteps)
    scale.load_state_dict({k.removeprefix("scale."): v for k, v in tensors.items() if k.startswith("scale.")})
    return scaler, scale


def heldout_tuples(store: Store, test_ids: list[int], n: int, seed: int) -> tuple[torch.Tensor, ...]:
    """A fixed, seeded sample of ``n`` tuples from held-out trajectories: ``(t, x, target)``."""
    batch = store.tuple_batches(test_ids, n, seed=seed + 10_007)(0)
    t, x, base_next, expert_next = batch
    return t, x, relative_step(base_next, expert_next)


def _loss(model, batch):
    t, x, base_next, expert_next = batch
    reward = model.module if hasattr(model, "module") else model
    return gradient_alignment_loss(model, x, t, relative_step(base_next, expert_next), weight=reward.loss_weight(t))


def fit(store_dir: str | Path, run_dir: str | Path, cfg: FitConfig, device: str | None = None,
        progress: bool = True) -> RelativeReward:
    """Train the reward of the store at ``store_dir`` into ``run_dir``; return the EMA reward."""
    run_dir = Path(run_dir)
    # 1. Open the store and claim the run directory.
    cpu = _select_device(device) == "cpu"
    store = Store.open(store_dir)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=cpu)
    _claim(run_dir, store, cfg, accelerator)

    # 2. Split by prompt.
    split = _split(store, run_dir, cfg, accelerator)
    train_ids = split.loc[split["split"] == "train", "traj_id"].astype(int).tolist()
    test_ids = split.loc[split["split"] == "test", "traj_id"].astype(int).tolist()

    # 3. Scaling of inputs and targets, from the training trajectories only.
    scaler, scale = _scaling(store, train_ids, run_dir, accelerator)

    # 4. The reward model.
    torch.manual_seed(cfg.seed)
    net = LatentRewardEncoder(in_channels=store.latent_shape[0], dims=cfg.dims, layers_per_level=cfg.layers_per_level)
    reward = RelativeReward(net, scaler, scale)

    # 5. Train on streamed tuples; validate on held-out ones.
    world = accelerator.num_processes
    if cfg.batch_size % world:
        raise UserError(f"batch size {cfg.batch_size} does not split evenly over {world} processes")
    batches = store.tuple_batches(train_ids, cfg.batch_size // world, cfg.seed, accelerator.process_index, world)
    val = heldout_tuples(store, test_ids, min(cfg.val_tuples, len(test_ids) * store.num_steps), cfg.seed)

    def validate(model: RelativeReward) -> dict[str, float]:
        t, x, target = (v.to(accelerator.device) for v in val)
        _, info = gradient_alignment_loss(model, x, t, target, weight=model.loss_weight(t))
        return {f"val_{k}": v for k, v in info.items()}

    steps = cfg.training_steps(len(train_ids))
    trainer_cfg = TrainerConfig(steps=steps, lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay,
                                checkpoint_every=cfg.checkpoint_every, eval_every=cfg.eval_every, seed=cfg.seed,
                                mixed_precision=cfg.mixed_precision, progress=progress,
                                log_every=max(1, min(50, steps // 20)))
    trainer = Trainer(reward.to(accelerator.device), _loss, _to_device(batches, accelerator.device), trainer_cfg,
                      run_dir, validate=validate, accelerator=accelerator, description="fitting reward")
    ema = trainer.train()

    # 6. Save the EMA reward and the manifest.
    if accelerator.is_main_process:
        ema.to("cpu").save_pretrained(run_dir / "reward")
        final_val = validate(ema.to(accelerator.device))
        write_json_atomic(run_dir / "manifest.json", {
            "kind": "fit", "store": str(store.root.resolve()), "config": asdict(cfg),
            "n_train_trajectories": len(train_ids), "n_test_trajectories": len(test_ids), "steps_trained": steps,
            "timesteps": store.timesteps, "final_validation": final_val,
            "models": store.manifest.get("models"), "provenance": provenance(),
        })
    accelerator.wait_for_everyone()
    return ema


def _select_device(device: str | None) -> str | None:
    """Check ``device`` and make a single process's ``cuda:N`` the current CUDA device (Accelerator's).

    Accelerator places a non-distributed run on ``cuda``, the current device; under ``accelerate
    launch`` it gives each process its own GPU, so naming one there is refused.
    """
    if device in (None, "cpu"):
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError:
        raise UserError(f"unknown --device {device!r}; use cpu, cuda, cuda:N or auto") from None
    if parsed.type != "cuda":
        raise UserError(f"--device {device!r} is not supported by fit; use cpu, cuda, cuda:N or auto")
    if not torch.cuda.is_available():
        raise UserError(f"--device {device} asks for CUDA, which this machine does not have; use --device cpu")
    if parsed.index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UserError(f"--device {device} names one GPU, but this is a multi-process run where accelerate "
                            "gives each process its own; use --device cuda (or choose GPUs with CUDA_VISIBLE_DEVICES)")
        if parsed.index >= torch.cuda.device_count():
            raise UserError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        torch.cuda.set_device(parsed.index)
    return device


def _to_device(batches, device: torch.device):
    if device.type == "cpu":
        return batches
    return lambda step: tuple(v.to(device, non_blocking=True) for v in batches(step))


def load_fit_manifest(run_dir: str | Path) -> dict:
    path = Path(run_dir) / "manifest.json"
    if not path.is_file():
        raise UserError(f"{run_dir} is not a finished fit run (no manifest.json); run `rrf-audit fit DATA --out {run_dir}`")
    return json.loads(path.read_text())


