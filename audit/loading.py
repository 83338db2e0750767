"""Find a model's files (hub cache, local directory or single file), fingerprint them, load each component once.

``locate(spec)`` turns a ``ModelSpec`` into local files: a hub id goes through ``snapshot_download``
(only the files a Stable Diffusion pipeline needs: safetensors weights, configs, tokenizer,
scheduler; offline and not cached is a one-line ``UserError`` naming the model and how to download
it); a local directory is used as is. A single ``.safetensors`` file is one of two kinds, told apart by
its key names (``single_file_components``):

* a UNet alone (diffusers keys, or the original LDM ``model.diffusion_model.*`` keys): a fine-tune
  (ESD/UCE-style) that takes every other component from a reference model (the other side of the pair);
* a full checkpoint in the original LDM/CompVis layout (``model.diffusion_model.*``,
  ``first_stage_model.*``, ``cond_stage_model.transformer.*``, as ``v1-5-pruned-emaonly.safetensors``):
  UNet, VAE and text encoder come from the file, converted by diffusers' single-file loaders. Their
  configs, the tokenizer and the scheduler come from the reference model if there is one, else from
  the hub repository diffusers names for that kind of checkpoint (``fetch_diffusers_config``; only its
  config files are fetched).

Every component gets a fingerprint (sha256 over its files; for hub snapshots the blob name already is
the file's sha256, so nothing large is re-read; a component read from a single file gets the file's
sha256 combined with the component's name). ``ComponentLoader`` loads a component once per
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
_CONFIG_FILES = ["model_index.json", "scheduler/*.json", "tokenizer/*", "*/config.json"]
_HUB_FILES = [*_CONFIG_FILES,
              *(f"{c}/{w}{s}" for c, w in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"),
                                           ("text_encoder", "model"))
                for s in (".safetensors", "-*-of-*.safetensors", ".safetensors.index.json"))]
LDM_PREFIXES = {"unet": "model.diffusion_model.", "vae": "first_stage_model.",
                "text_encoder": "cond_stage_model.transformer."}
"""Key prefix of each component in an original (LDM/CompVis) Stable Diffusion 1.x checkpoint."""
_LDM_OTHER_PARTS = ("first_stage_model.", "cond_stage_model.", "conditioner.")
"""Prefixes of anything but the UNet in an LDM checkpoint (any VAE or text encoder, including SD2's and SDXL's)."""
_DIFFUSERS_UNET_KEYS = {"conv_in.weight", "time_embedding.linear_1.weight"}
_PART_NAMES = {"unet": "UNet", "vae": "VAE", "text_encoder": "CLIP text encoder"}


@dataclass(frozen=True)
class SingleFile:
    """A ``.safetensors`` file that supplies some components of a model."""

    path: Path
    sha256: str
    prefixes: dict[str, str]
    """Key prefix of each component the file holds (``""``: the whole file is that component)."""
    configs: str
    """Where the components' configs, the tokenizer and the scheduler come from (a model name or hub id)."""

    def tensors(self, component: str) -> dict[str, torch.Tensor]:
        """The tensors of ``component`` under their names in the file (only those are read)."""
        from safetensors import safe_open

        prefix = self.prefixes[component]
        with safe_open(str(self.path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefix)}


@dataclass(frozen=True)
class LocatedModel:
    """A model's files on this machine: ``folders[component]`` and ``fingerprints[component]``."""

    spec: ModelSpec
    folders: dict[str, Path]
    fingerprints: dict[str, str]
    revision: str | None = None
    """Hub commit of the snapshot (for a single file: of the one its configs come from; None for local files)."""
    file: SingleFile | None = None
    """Set when some components come from a single ``.safetensors`` file."""

    def provenance(self) -> dict[str, Any]:
        record = {**self.spec.to_dict(), "revision": self.revision or self.spec.revision,
                  "unet_file": str(self.file.path) if self.file else None, "components": dict(self.fingerprints)}
        if self.file is not None:  # only then, so the records of directory models (resume identities) stay as they were
            record["single_file"] = {"sha256": self.file.sha256, "components": list(self.file.prefixes),
                                     "configs": self.file.configs}
        return record


def locate_pair(base: ModelSpec, expert: ModelSpec) -> tuple[LocatedModel, LocatedModel]:
    """Both sides of a pair; a single-file side takes what it lacks from the other, diffusers-format side."""
    if base.is_single_file and not expert.is_single_file:
        located_expert = locate(expert)
        return locate(base, reference=located_expert), located_expert
    located_base = locate(base)
    return located_base, locate(expert, reference=located_base)


def locate(spec: ModelSpec, reference: LocatedModel | None = None) -> LocatedModel:
    """Resolve ``spec`` to local folders and fingerprints (``reference`` supplies what a single file lacks)."""
    if spec.is_single_file:
        return _locate_file(spec, reference)
    if Path(spec.weights).is_dir():
        root, revision = Path(spec.weights), None
    elif Path(spec.weights).is_absolute():
        raise UserError(f"the weights of {spec.name!r} are missing ({spec.weights} does not exist); "
                        + ("restore them from the repository (git checkout -- audit/toy/weights) or rebuild them "
                           "with `rrf-audit toy train`" if spec.name.startswith("toy") else "check the path"))
    else:
        root = _hub_snapshot(spec)
        revision = root.name
    folders = _pipeline_folders(spec.name, root)
    return LocatedModel(spec, folders, {c: _fingerprint(folders[c]) for c in COMPONENTS}, revision)


def _locate_file(spec: ModelSpec, reference: LocatedModel | None) -> LocatedModel:
    path = Path(spec.weights)
    prefixes = single_file_components(path)
    sha256 = _sha256_file(path)
    # The component name is part of the digest: one file holds several different components.
    from_file = {c: hashlib.sha256(f"{sha256}\0{c}".encode()).hexdigest() for c in prefixes}
    if reference is not None:
        return LocatedModel(spec, dict(reference.folders), {**reference.fingerprints, **from_file}, reference.revision,
                            SingleFile(path, sha256, prefixes, reference.spec.name))
    if set(prefixes) == {"unet"}:
        raise UserError(f"{spec.name} is a single UNet file; pair it with a base model (a hub id, a diffusers "
                        "directory or a full .safetensors checkpoint), which supplies the VAE, text encoder and scheduler")
    repo = _config_repo(path)
    root = _hub_snapshot(ModelSpec(f"configs of {path.name}", repo), _CONFIG_FILES)
    folders = _pipeline_folders(repo, root)
    fingerprints = {c: from_file[c] if c in from_file else _fingerprint(folders[c]) for c in COMPONENTS}
    return LocatedModel(spec, folders, fingerprints, root.name, SingleFile(path, sha256, prefixes, repo))


def single_file_components(path: Path) -> dict[str, str]:
    """Key prefix of each component in a ``.safetensors`` file: a UNet alone, or UNet, VAE and text encoder of a
    full LDM checkpoint. Reads only the file's header."""
    keys = set(_meta_checkpoint(path))
    if _DIFFUSERS_UNET_KEYS <= keys:
        return {"unet": ""}
    found = {c: p for c, p in LDM_PREFIXES.items() if any(k.startswith(p) for k in keys)}
    if "unet" in found and not any(k.startswith(_LDM_OTHER_PARTS) for k in keys):
        return {"unet": found["unet"]}
    if len(found) == len(LDM_PREFIXES):
        return found
    lacks = " or ".join(f"{_PART_NAMES[c]} ({p}*)" for c, p in LDM_PREFIXES.items() if c not in found)
    raise UserError(f"{path} is neither a UNet nor a full Stable Diffusion 1.x checkpoint in the original layout: "
                    f"it has no {lacks} keys")


def _meta_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors as shape-only (meta) tensors: what diffusers' model-type detection inspects, read from the
    header alone."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: torch.empty(f.get_slice(k).get_shape(), device="meta") for k in f.keys()}
    except SafetensorError as exc:
        raise UserError(f"{path} is not a readable .safetensors file ({exc})") from None


def _config_repo(path: Path) -> str:
    """The hub repository whose configs diffusers uses for the kind of checkpoint ``path`` is (SD 1.5 for SD 1.x)."""
    from diffusers.loaders.single_file_utils import fetch_diffusers_config

    return fetch_diffusers_config(_meta_checkpoint(path))["pretrained_model_name_or_path"]


def _pipeline_folders(name: str, root: Path) -> dict[str, Path]:
    missing = [c for c in COMPONENTS if not (root / c).is_dir()]
    if missing:
        raise UserError(f"{name} ({root}) lacks the folders {', '.join(missing)} of a Stable Diffusion pipeline; "
                        "point to a diffusers directory (model_index.json, unet/, vae/, text_encoder/, tokenizer/, "
                        "scheduler/)")
    return {c: root / c for c in COMPONENTS}


def _hub_snapshot(spec: ModelSpec, files: list[str] = _HUB_FILES) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(spec.weights, revision=spec.revision, allow_patterns=files))
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


def silence_library_progress() -> None:
    """Turn off diffusers' and transformers' loading bars (process-wide): our own bars report the work."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


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
        from transformers import CLIPTextModel, CLIPTokenizer

        silence_library_progress()
        folder = model.folders[component]
        if component == "tokenizer":
            return CLIPTokenizer.from_pretrained(folder, local_files_only=True)
        if model.file is not None and component in model.file.prefixes:
            module = _from_single_file(model.file, component, folder.parent, self.dtype)
        elif component == "unet":
            module = UNet2DConditionModel.from_pretrained(folder, local_files_only=True, torch_dtype=self.dtype)
        elif component == "vae":
            module = AutoencoderKL.from_pretrained(folder, local_files_only=True, torch_dtype=self.dtype)
        elif component == "text_encoder":
            module = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=self.dtype)
        else:
            raise ValueError(f"no loader for component {component!r}")
        return module.to(self.device).eval().requires_grad_(False)


def _from_single_file(file: SingleFile, component: str, configs: Path, dtype: torch.dtype) -> torch.nn.Module:
    """``component`` from ``file`` (converted from the LDM layout if need be) with the architecture in
    ``configs/<component>/config.json``, through diffusers' single-file loaders."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    tensors = file.tensors(component)
    if component == "text_encoder":  # what StableDiffusionPipeline.from_single_file does for the CLIP text encoder
        return create_diffusers_clip_model_from_ldm(CLIPTextModel, tensors, subfolder=component, config=str(configs),
                                                    torch_dtype=dtype, local_files_only=True)
    model_class = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}[component]
    return model_class.from_single_file(tensors, config=str(configs), subfolder=component, local_files_only=True,
                                        torch_dtype=dtype)
