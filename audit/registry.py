"""Model aliases and how a name on the command line becomes a ``ModelSpec``.

A model is *weights* (a hub id, a local diffusers directory or a single ``.safetensors`` file)
plus, optionally, Safe Latent Diffusion guidance on top of them. ``resolve()`` accepts

* an alias (``rrf-audit models`` lists them):

  ==================================  ===================================================================
  alias                               resolves to
  ==================================  ===================================================================
  ``sd14``                            CompVis/stable-diffusion-v1-4
  ``sd15``                            stable-diffusion-v1-5/stable-diffusion-v1-5
  ``sd21``                            stabilityai/stable-diffusion-2-1-base
  ``safe-sd``                         SLD, MAX preset, on the sd15 weights (as the paper's code used)
  ``safe-sd-weak|medium|strong|max``  SLD with that preset on the sd15 weights
  ``toy``                             the shipped toy model, ``audit/toy/weights/toy``
  ``toy-safe``                        the toy with the concept "red" erased by fine-tuning
                                      (``audit/toy/weights/toy-safe``; only its UNet differs)
  ``toy-sld``                         SLD (MAX preset, concept "red") on the toy weights
  ==================================  ===================================================================

* ``sld``: SLD on the *other* model's weights (the safer side of ``generate BASE sld``);
* a hub id ``owner/name`` (optionally ``owner/name@revision``), a local diffusers directory, or a
  ``.safetensors`` file: a fine-tuned UNet (ESD/UCE-style; the rest comes from the other model) or a full
  original-layout checkpoint (``audit.loading``).

SLD settings of any SLD model are overridden by ``concept`` (the safety-concept text),
``sld_preset`` (weak|medium|strong|max) and individual ``sld_overrides`` (``SLDConfig`` field names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

from audit.sld import DEFAULT_SAFETY_CONCEPT, SLD_PRESETS, SLDConfig
from rrf.errors import UserError

TOY_WEIGHTS = Path(__file__).resolve().parent / "toy" / "weights"
TOY_CONCEPT = "red"
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass(frozen=True)
class ModelSpec:
    """What to load: ``weights`` (+ ``revision`` for hub ids) and optional SLD guidance on top."""

    name: str
    """What the user asked for (alias, ``sld``, hub id or path); shown in manifests and reports."""
    weights: str
    """Hub id, local diffusers directory, or a ``.safetensors`` file (a UNet, or a full checkpoint)."""
    revision: str | None = None
    sld: SLDConfig | None = None
    sld_preset: str | None = None
    """Name of the preset ``sld`` came from (None for custom settings or no SLD)."""
    description: str = ""

    @property
    def is_single_file(self) -> bool:
        return self.weights.endswith(".safetensors")

    def to_dict(self) -> dict:
        return {"name": self.name, "weights": self.weights, "revision": self.revision,
                "sld": self.sld.to_dict() if self.sld else None, "sld_preset": self.sld_preset}


def _sld(preset: str, weights: str, name: str, description: str, concept: str = DEFAULT_SAFETY_CONCEPT) -> ModelSpec:
    return ModelSpec(name, weights, sld=SLDConfig.preset(preset, concept), sld_preset=preset, description=description)


SD15 = "stable-diffusion-v1-5/stable-diffusion-v1-5"
ALIASES: dict[str, ModelSpec] = {
    "sd14": ModelSpec("sd14", "CompVis/stable-diffusion-v1-4", description="Stable Diffusion v1.4"),
    "sd15": ModelSpec("sd15", SD15, description="Stable Diffusion v1.5"),
    "sd21": ModelSpec("sd21", "stabilityai/stable-diffusion-2-1-base", description="Stable Diffusion v2.1 (512 px)"),
    "safe-sd": _sld("max", SD15, "safe-sd", "Safe Latent Diffusion (MAX) on sd15, the paper's expert"),
    **{f"safe-sd-{p}": _sld(p, SD15, f"safe-sd-{p}", f"Safe Latent Diffusion ({p.upper()}) on sd15")
       for p in SLD_PRESETS},
    "toy": ModelSpec("toy", str(TOY_WEIGHTS / "toy"), description="shipped toy text-to-image model (32 px shapes)"),
    "toy-safe": ModelSpec("toy-safe", str(TOY_WEIGHTS / "toy-safe"),
                          description=f"toy with the concept {TOY_CONCEPT!r} erased by fine-tuning"),
    "toy-sld": _sld("max", str(TOY_WEIGHTS / "toy"), "toy-sld", f"SLD (MAX, concept {TOY_CONCEPT!r}) on the toy",
                    concept=TOY_CONCEPT),
}


def resolve(name: str, *, other: ModelSpec | None = None, concept: str | None = None, sld_preset: str | None = None,
            sld_overrides: dict | None = None) -> ModelSpec:
    """Turn a command-line model name into a ``ModelSpec`` (see the module doc); ``other`` is the pair's other model."""
    spec = _lookup(name, other)
    sld_overrides = {k: v for k, v in (sld_overrides or {}).items() if v is not None}
    if concept is None and sld_preset is None and not sld_overrides:
        return spec
    if spec.sld is None:
        raise UserError(f"--concept/--sld-preset/--sld-* options apply to SLD models, and {name!r} is not one; "
                        "use an SLD model (safe-sd, toy-sld) or 'sld' (SLD on the other model's weights)")
    sld, preset = spec.sld, spec.sld_preset
    if sld_preset is not None:
        if sld_preset not in SLD_PRESETS:
            raise UserError(f"unknown SLD preset {sld_preset!r}; choose one of {', '.join(SLD_PRESETS)}")
        sld, preset = SLDConfig.preset(sld_preset, sld.concept), sld_preset
    if concept is not None:
        if not concept.strip():
            raise UserError("--concept is empty; give the text of the concept to steer away from")
        sld = replace(sld, concept=concept)
    if sld_overrides:
        sld, preset = replace(sld, **sld_overrides), None
    return replace(spec, sld=sld, sld_preset=preset)


def _lookup(name: str, other: ModelSpec | None) -> ModelSpec:
    if name in ALIASES:
        return ALIASES[name]
    if name == "sld":
        if other is None:
            raise UserError("'sld' means Safe Latent Diffusion on the other model's weights; use it as the safer model")
        base = replace(other, sld=None, sld_preset=None)
        # The name stays "sld" (what the user typed), so a manifest's names rebuild the same GenerateConfig.
        return replace(base, name="sld", sld=SLDConfig.preset("max"), sld_preset="max",
                       description=f"Safe Latent Diffusion (MAX) on {other.name}")
    path = Path(name).expanduser()
    if path.is_dir() or path.suffix == ".safetensors":
        if not path.exists():
            raise UserError(f"model file {name} does not exist; check the path")
        return ModelSpec(name, str(path.resolve()), description="local " + ("checkpoint file" if path.is_file() else "directory"))
    repo, _, revision = name.partition("@")
    if HUB_ID.match(repo) and not path.exists():
        return ModelSpec(name, repo, revision=revision or None, description="Hugging Face hub model")
    raise UserError(f"unknown model {name!r}; choose an alias ({', '.join(ALIASES)}), 'sld', a hub id (owner/name), "
                    "a local diffusers directory or a .safetensors checkpoint (see `rrf-audit models`)")
