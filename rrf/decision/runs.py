"""Run directories of trained models: ``out/model`` once finished, trainer checkpoints while training."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from rrf.manifest import provenance, write_json_atomic
from rrf.trainer import Trainer


def finished_model(out_dir: str | Path, marker: str) -> Path | None:
    """``out_dir/model`` if a finished model (holding ``marker``) is there, else None."""
    final = Path(out_dir) / "model"
    return final if (final / marker).is_file() else None


def save_finished(trainer: Trainer, model, manifest: dict[str, Any]) -> None:
    """Save ``model`` (``save_pretrained``) and its manifest as ``out_dir/model`` atomically, then drop
    the optimiser checkpoints, which only serve an interrupted run."""
    final = trainer.out_dir / "model"
    tmp = trainer.out_dir / ".model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    write_json_atomic(tmp / "manifest.json", {**manifest, "trainer": trainer.config.__dict__, "provenance": provenance()})
    tmp.rename(final)
    shutil.rmtree(trainer.checkpoint_dir, ignore_errors=True)
