"""Find a model's files (hub cache, local directory or single file), fingerprint them, load each component once.

``locate(spec)`` turns a ``ModelSpec`` into local files: a hub id goes through ``snapshot_download``
(only the files a Stable Diffusion pipeline needs: safetensors weights, configs, tokenizer,
scheduler; offline and not cached is a one-line ``UserError`` naming the model and how to download
it); a local directory is used as is; a ``.safetensors`` file supplies a fine-tuned UNet and takes
every other component from a reference model (the other side of the pair).

Every component gets a fingerprint (sha256 over its files; for hub snapshots the blob name already is
the file's sha256, so nothing large is re-read). ``ComponentLoader`` loads a component once per
fingerprint, which is how a pair such as ``toy`` / ``toy-safe`` (identical VAE, text encoder and
tokenizer, different UNet) or ``sd15`` / ``safe-sd`` (identical everything) shares memory.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from audit.registry import ModelSpec
from audit.store import sha256_file
from rrf.errors import UserError

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
_WEIGHTS = re.compile(r"^(diffusion_pytorch_model|model)(-\d+-of-\d+)?\.safetensors(\.index\.json)?$")
_HUB_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*", "*/config.json",
              *(f"{c}/{w}{s}" for c, w in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                                           ("text_encoder", "model"))
                for s in (".safetensors", "-*-of-*.safetensors", ".safetensors.index.json"))]


@dataclass(frozen=True)
class LocatedModel:
    """A model's files on this machine: ``folders[component]`` and ``fingerprints[component]``."""

    spec: ModelSpec
    folders: dict[str, Path]
    fingerprints: dict[str, str]
    revision: str | None = None
    """Hub commit of the snapshot (None for local files)."""
    unet_file: Path | None = None
    """Set when the UNet comes from a single ``.safetensors`` file."""

    def provenance(self) -> dict[str, Any]:
        return {**self.spec.to_dict(), "revision": self.revision or self.spec.revision,
                "unet_file": str(self.unet_file) if self.unet_file else None, "components": dict(self.fingerprints)}


def locate(spec: ModelSpec, reference: LocatedModel | None = None) -> LocatedModel:
    """Resolve ``spec`` to local folders and fingerprints (``reference`` supplies what a UNet file lacks)."""
    if spec.is_single_file:
        if reference is None:
            raise UserError(f"{spec.name} is a single UNet file; pair it with a base model in diffusers format "
                            "(a hub id or directory), which supplies the VAE, text encoder and scheduler")
        path = Path(spec.weights)
        fingerprints = {**reference.fingerprints, "unet": _sha256_file(path)}
        return LocatedModel(spec, dict(reference.folders), fingerprints, reference.revision, unet_file=path)
    if Path(spec.weights).is_dir():
        root, revision = Path(spec.weights), None
    elif Path(spec.weights).is_absolute():
        raise UserError(f"the weights of {spec.name!r} are missing ({spec.weights} does not exist); "
                        + ("restore them from the repository (git checkout -- audit/toy/weights) or rebuild them "
                           "with `rrf-audit toy train`" if spec.name.startswith("toy") else "check the path"))
    else:
        root = _hub_snapshot(spec)
        revision = root.name
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise UserError(f"{spec.name} ({root}) lacks the folders {', '.join(missing)} of a Stable Diffusion pipeline; "
                        "point to a diffusers directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/)")
    folders = {c: root / c for c in COMPONENTS}
    return LocatedModel(spec, folders, {c: _fingerprint(folders[c]) for c in COMPONENTS}, revision)


def _hub_snapshot(spec: ModelSpec) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(spec.weights, revision=spec.revision, allow_patterns=_HUB_FILES))
    except LocalEntryNotFoundError:
        raise UserError(
            f"model {spec.name!r} ({spec.weights}) is not in the local Hugging Face cache and the hub cannot be "
            f"reached; on a machine with internet run `hf download {spec.weights}` and copy the cache "
            "(~/.cache/huggingface, or set HF_HOME), or pass a local diffusers directory"
        ) from None
    except (RepositoryNotFoundError, HfHubHTTPError) as exc:
        raise UserError(f"cannot download model {spec.name!r} ({spec.weights}): {str(exc).splitlines()[0]}; "
                        "check the hub id and your access token (hf auth login)") from None


def _fingerprint(folder: Path) -> str:
    """sha256 over (file name, file sha256) of the files diffusers/transformers load from ``folder``."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".json" or _WEIGHTS.match(p.name)
                                                                   or folder.name == "tokenizer"))
    weights = [p for p in files if p.name.endswith(".safetensors")]
    if folder.name in ("unet", "vae", "text_encoder") and not weights:
        raise UserError(f"{folder} has no .safetensors weights; convert the checkpoint to safetensors "
                        "(diffusers: pipe.save_pretrained(dir)) and retry")
    digest = hashlib.sha256()
    for p in files:
        digest.update(f"{p.name}\0{_sha256_file(p)}\n".encode())
    return digest.hexdigest()


def _sha256_file(path: Path) -> str:
    # Hub snapshots are symlinks to blobs named by their sha256 (LFS files): no need to read gigabytes.
    target = Path(os.path.realpath(path))
    if path.is_symlink() and re.fullmatch(r"[0-9a-f]{64}", target.name):
        return target.name
    return sha256_file(target)


@dataclass
class ComponentLoader:
    """Loads components onto ``device`` in ``dtype``, each distinct fingerprint once."""

    device: torch.device
    dtype: torch.dtype
    _cache: dict[tuple[str, str], Any] = field(default_factory=dict)

    def get(self, model: LocatedModel, component: str) -> Any:
        key = (component, model.fingerprints[component])
        if key not in self._cache:
            self._cache[key] = self._load(model, component)
        return self._cache[key]

    def loaded(self) -> int:
        return len(self._cache)

    def scheduler_config(self, model: LocatedModel) -> dict:
        from diffusers import DDIMScheduler

        return dict(DDIMScheduler.load_config(model.folders["scheduler"]))

    def _load(self, model: LocatedModel, component: str) -> Any:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from diffusers.utils import logging as diffusers_logging
        from transformers import CLIPTextModel, CLIPTokenizer
        from transformers.utils import logging as transformers_logging

        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        folder = model.folders[component]
        if component == "tokenizer":
            return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        if component == "unet" and model.unet_file is not None:
            module = UNet2DConditionModel.from_single_file(str(model.unet_file), config=str(folder.parent),
                                                           subfolder="unet", local_files_only=True,
                                                           torch_dtype=self.dtype)
        elif component == "unet":
            module = UNet2DConditionModel.from_pretrained(folder, local_files_only=True, torch_dtype=self.dtype)
        elif component == "vae":
            module = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=self.dtype)
        elif component == "text_encoder":
            module = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        else:
            raise ValueError(f"no loader for component {component!r}")
        return module.to(self.device).eval().requires_grad_(False)
