"""The one trainer of the project: Adam, warm-up, gradient clipping, EMA, atomic checkpoints, exact resume.

It is domain-free: it sees a model, a ``loss_fn(model, batch) -> (loss, info)`` and a batch source
``batches(step) -> batch``. Making the batch *and* the global RNG a pure function of the step is what
lets an interrupted run continue to the bit-identical result of an uninterrupted one on CPU: nothing
about the data order or the noise draws has to be saved besides the step counter.

A run directory looks like::

    out/
      checkpoints/step-0000500/   model.safetensors, training_state.pt, trainer_state.json
      metrics.jsonl               one JSON object per logged step ({"step", "split", ...})

Multi-GPU / multi-node and multi-process CPU runs go through ``accelerate`` (``accelerate launch``); the
caller builds the ``Accelerator`` and gives each process its own slice of every batch.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from rrf.errors import UserError

LossFn = Callable[[nn.Module, Any], tuple[Tensor, dict[str, float]]]
BatchSource = Callable[[int], Any]
Validator = Callable[[nn.Module], dict[str, float]]

# Fields that may change between a run and its resumption without changing the result.
_RESUMABLE_FIELDS = {"steps", "checkpoint_every", "keep_checkpoints", "log_every", "eval_every", "progress"}


@dataclass
class TrainerConfig:
    steps: int = 6000
    """Optimiser steps in total (a resumed run may raise it to train further)."""
    lr: float = 1e-4
    """Adam learning rate after warm-up."""
    weight_decay: float = 0.0
    """AdamW weight decay (0 = plain Adam)."""
    warmup_steps: int = 100
    """Linear learning-rate warm-up from 0."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    ema_decay: float = 0.999
    """Decay of the exponential moving average of the weights; the EMA weights are what is returned."""
    checkpoint_every: int = 500
    """Write an atomic checkpoint every N steps (and at the end and on Ctrl-C)."""
    keep_checkpoints: int = 2
    """How many step checkpoints to keep on disk."""
    log_every: int = 50
    """Append training metrics to metrics.jsonl every N steps."""
    eval_every: int = 500
    """Run the validator (on EMA weights) every N steps; 0 disables it."""
    seed: int = 0
    """Seeds the per-step RNG; the same seed gives the same bytes."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast precision on GPU (fp16 uses a gradient scaler); CPU runs should keep "no"."""
    progress: bool = True
    """Show a rich progress bar."""


def step_seed(seed: int, step: int, rank: int = 0) -> int:
    """Seed of the global RNG for one step of one process (a pure function: resume needs no RNG state)."""
    return ((seed * 1_000_003 + step) * 1024 + rank) % (2**63)


class Trainer:
    """Fits ``model`` by minimising ``loss_fn`` over ``batches(step)`` for ``config.steps`` steps."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        batches: BatchSource,
        config: TrainerConfig,
        out_dir: str | Path,
        validate: Validator | None = None,
        accelerator: Accelerator | None = None,
        description: str = "training",
    ):
        self.config = config
        self.out_dir = Path(out_dir)
        self.loss_fn = loss_fn
        self.batches = batches
        self.validate = validate
        self.description = description
        self.accelerator = accelerator or Accelerator(mixed_precision=config.mixed_precision)
        torch.manual_seed(config.seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        scheduler = get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=config.warmup_steps)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.ema = EMAModel(self._unwrapped().parameters(), decay=config.ema_decay, foreach=False)
        self.step = 0
        self._seconds = {"data": 0.0, "step": 0.0, "count": 0}  # since the last log line

    # -- public ------------------------------------------------------------------------------------

    def train(self) -> nn.Module:
        """Train (resuming from the newest checkpoint if there is one) and return the EMA model."""
        self.step = self._resume()
        self._truncate_metrics(self.step)
        cfg = self.config
        acc = self.accelerator
        show = cfg.progress and acc.is_main_process
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"), disable=not show,
        ) as progress:
            task = progress.add_task(self.description, total=cfg.steps, completed=self.step, rate="", info="")
            try:
                while self.step < cfg.steps:
                    info = self._train_step()
                    self.step += 1
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        self._log({"split": "train", **info, **self._timing()})
                    if self.validate and cfg.eval_every and (self.step % cfg.eval_every == 0 or self.step == cfg.steps):
                        self._log({"split": "val", **self._run_validation()})
                    if self.step % cfg.checkpoint_every == 0 or self.step == cfg.steps:
                        self.save_checkpoint()
                    progress.update(task, completed=self.step, info=f"loss {info['loss']:.4g}",
                                    rate=f"{progress.tasks[task].speed or 0:.1f} it/s")
            except KeyboardInterrupt:
                self.save_checkpoint()
                raise UserError(
                    f"interrupted at step {self.step}/{cfg.steps}; checkpoint saved in {self.out_dir / 'checkpoints'}, "
                    "rerun the same command to resume"
                ) from None
        return self.ema_model()

    def ema_model(self) -> nn.Module:
        """A copy of the model holding the EMA weights (what validation, evaluation and saving use)."""
        model = copy.deepcopy(self._unwrapped())
        self.ema.copy_to(model.parameters())
        return model.eval()

    # -- one step ------------------------------------------------------------------------------------

    def _train_step(self) -> dict[str, float]:
        acc = self.accelerator
        start = time.perf_counter()
        torch.manual_seed(step_seed(self.config.seed, self.step, acc.process_index))
        batch = self.batches(self.step)
        self._seconds["data"] += time.perf_counter() - start
        self.model.train()
        with acc.autocast():
            loss, info = self.loss_fn(self.model, batch)
        if not torch.isfinite(loss):
            raise UserError(
                f"loss became {loss.item()} at step {self.step}; lower the learning rate (now {self.config.lr}) "
                "or check the data for NaN/inf"
            )
        acc.backward(loss)
        if self.config.grad_clip is not None and acc.sync_gradients:
            info["grad_norm"] = float(acc.clip_grad_norm_(self.model.parameters(), self.config.grad_clip))
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.ema.step(self._unwrapped().parameters())
        info["lr"] = self.scheduler.get_last_lr()[0]
        self._seconds["step"] += time.perf_counter() - start
        self._seconds["count"] += 1
        return info

    def _timing(self) -> dict[str, float]:
        """Seconds per step and the share of it spent waiting for data, over the steps since the last log."""
        data, total, count = self._seconds["data"], self._seconds["step"], self._seconds["count"]
        self._seconds = {"data": 0.0, "step": 0.0, "count": 0}
        return {"seconds_per_step": total / max(count, 1), "data_fraction": data / total if total else 0.0}

    def _run_validation(self) -> dict[str, float]:
        with torch.no_grad():
            return self.validate(self.ema_model())

    # -- checkpoints ---------------------------------------------------------------------------------

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    def _unwrapped(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model)

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step-N`` atomically (temp dir + rename); prune old ones. Main process only."""
        final = self.checkpoint_dir / f"step-{self.step:07d}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process and not final.exists():
            tmp = self.checkpoint_dir / f".step-{self.step:07d}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({k: v.detach().contiguous().cpu() for k, v in self._unwrapped().state_dict().items()},
                      tmp / "model.safetensors")
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "ema": self.ema.state_dict()}, tmp / "training_state.pt")
            state = {"step": self.step, "config": dataclasses.asdict(self.config)}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
            _fsync_dir(tmp)
            os.replace(tmp, final)
            for old in self._checkpoints()[: -self.config.keep_checkpoints]:
                shutil.rmtree(old, ignore_errors=True)
        self.accelerator.wait_for_everyone()
        return final

    def _checkpoints(self) -> list[Path]:
        if not self.checkpoint_dir.is_dir():
            return []
        return sorted(p for p in self.checkpoint_dir.glob("step-*") if (p / "trainer_state.json").is_file())

    def _resume(self) -> int:
        checkpoints = self._checkpoints()
        if not checkpoints:
            return 0
        latest = checkpoints[-1]
        state = json.loads((latest / "trainer_state.json").read_text())
        self._check_compatible(state["config"], latest)
        self._unwrapped().load_state_dict(load_file(latest / "model.safetensors"))
        training = torch.load(latest / "training_state.pt", map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(training["optimizer"])
        self.scheduler.load_state_dict(training["scheduler"])
        self.ema.load_state_dict(training["ema"])
        return int(state["step"])

    def _check_compatible(self, saved: dict, where: Path) -> None:
        current = dataclasses.asdict(self.config)
        diffs = [f"{k}: {saved.get(k)!r} there vs {v!r} now" for k, v in current.items()
                 if k not in _RESUMABLE_FIELDS and saved.get(k) != v]
        if diffs:
            raise UserError(
                f"{where} was trained with different settings ({'; '.join(diffs)}); "
                "rerun with the same settings to resume, or choose a new output directory"
            )
        if saved.get("steps", 0) > current["steps"]:
            raise UserError(f"{where} is past the requested {current['steps']} steps; ask for at least {saved['steps']}")

    # -- metrics -------------------------------------------------------------------------------------

    @property
    def metrics_file(self) -> Path:
        return self.out_dir / "metrics.jsonl"

    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            self.metrics_file.parent.mkdir(parents=True, exist_ok=True)
            with self.metrics_file.open("a") as f:
                f.write(json.dumps({"step": self.step, **record}) + "\n")

    def _truncate_metrics(self, step: int) -> None:
        """Drop log lines past the resumed step, so a resumed log reads like an uninterrupted one."""
        if not self.accelerator.is_main_process or not self.metrics_file.is_file():
            return
        kept = [line for line in self.metrics_file.read_text().splitlines() if json.loads(line)["step"] <= step]
        tmp = self.metrics_file.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.metrics_file)


def _fsync_dir(path: Path) -> None:
    for p in path.iterdir():
        with p.open("rb") as f:
            os.fsync(f.fileno())
