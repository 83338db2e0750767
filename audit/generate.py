"""Algorithm 2 for text-to-image pairs: trajectories of one model, and both models' next latent at every step.

For every prompt, follower (base, expert or both, as in the paper) and sample k < ``images_per_prompt``
the initial noise x_T comes from the seed ``prompt_seed + 2k + (0 for base, 1 for expert)``, where ``prompt_seed`` is derived from
``--seed`` and the prompt id (or is the file's ``evaluation_seed`` with ``--seed-from-file``, so a
base trajectory starts from I2P's own noise). At each of the scheduler's timesteps both models step
from the same x_{t+1} (``ModelPair.pair_step``: shared, batched UNet passes), the followed one's
latent becomes the next state, and both are recorded. The final latent is decoded to a PNG.

Work is cut into *shards*: a block of ``batch_size`` prompts for one follower, sampled as one batch.
Shards are a pure function of the configuration, so

* a killed run, rerun with the same command, skips finished shards and redoes the rest with the
  same bytes (the finished store is byte-identical to an uninterrupted run);
* under ``accelerate launch`` process ``r`` of ``W`` takes shards ``r, r + W, ...`` and the merged
  store has the same content as a one-process run.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch

from audit.loading import locate_pair
from audit.registry import ModelSpec, resolve
from audit.store import STORE_DTYPES, StoreWriter, image_file
from prompts import Prompt, load_prompts
from rrf.algorithm2 import rollout_pair
from rrf.errors import UserError
from rrf.losses import relative_step
from rrf.manifest import claim_output_dir, provenance

Follow = Literal["both", "base", "expert"]
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FOLLOWER_SEED_OFFSET = {"base": 0, "expert": 1}


@dataclass
class GenerateConfig:
    base: str = "sd15"
    """Base model: alias (rrf-audit models), hub id, local diffusers directory."""
    safer: str = "safe-sd"
    """Safer model: alias, 'sld' (SLD on the base weights), hub id, directory or .safetensors UNet file."""
    prompts: str = "i2p"
    """Prompt source: 'i2p', a shipped set (harmless), or a .csv/.parquet/.txt file."""
    follow: Follow = "both"
    """Whose trajectories to sample: both (the paper), base or expert."""
    limit: int | None = None
    """At most this many prompts (stratified by category, seeded)."""
    images_per_prompt: int = 1
    """Trajectories per prompt and follower, each from its own noise (I2P's protocol draws 10 images per
    prompt). All samples of a prompt land in the same train/test split."""
    categories: tuple[str, ...] = ()
    """Keep prompts in any of these categories (all if empty)."""
    hard_only: bool = False
    """Keep only I2P's 'hard' prompts."""
    steps: int = 50
    """Denoising steps per trajectory (= tuples per trajectory)."""
    guidance: float = 7.5
    """Classifier-free guidance scale of both models."""
    resolution: int | None = None
    """Image size in pixels (square); default: the UNet's native size."""
    batch_size: int = 8
    """Trajectories sampled together (and stored per shard)."""
    seed: int = 0
    """Seed of prompt selection and of every prompt's initial noise."""
    seed_from_file: bool = False
    """Use the prompt file's evaluation_seed column as the prompt seed."""
    scheduler: str = "ddim"
    """Sampler: ddim (eta = 0), dpm, unipc, euler, or model (the checkpoint's own; must be deterministic)."""
    device: str = "auto"
    """cpu, cuda, cuda:N, or auto (the accelerate process's device)."""
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = "auto"
    """Model compute dtype; auto = fp16 on GPU, fp32 on CPU. Latents stay fp32."""
    store_dtype: Literal["fp16", "fp32"] = "fp16"
    """Storage precision of latents."""
    concept: str | None = None
    """Safety-concept text of an SLD safer model (default: the model's own)."""
    sld_preset: str | None = None
    """SLD preset of an SLD safer model: weak, medium, strong, max."""
    sld_overrides: dict = field(default_factory=dict)
    """Individual SLD settings (SLDConfig field names), e.g. {'guidance_scale': 1500}."""

    def models(self) -> tuple[ModelSpec, ModelSpec]:
        base = resolve(self.base)
        return base, resolve(self.safer, other=base, concept=self.concept, sld_preset=self.sld_preset,
                             sld_overrides=self.sld_overrides)

    def follows(self) -> tuple[str, ...]:
        if self.follow not in ("both", "base", "expert"):
            raise UserError(f"--follow must be both, base or expert, not {self.follow!r}")
        return ("base", "expert") if self.follow == "both" else (self.follow,)


@dataclass
class Trajectory:
    traj_id: int
    prompt: Prompt
    follow: str
    seed: int
    sample: int = 0
    """Index k of this trajectory among its prompt's ``images_per_prompt`` samples."""

    def record(self) -> dict:
        return {"traj_id": self.traj_id, "prompt_id": self.prompt.prompt_id, "prompt": self.prompt.text,
                "categories": list(self.prompt.categories), "follow": self.follow, "seed": self.seed,
                "sample": self.sample, "image": image_file(self.traj_id)}


@dataclass
class GenerateResult:
    out: Path
    trajectories: int
    tuples: int
    bytes: int
    bytes_per_tuple: float
    unet_evaluations_per_tuple: float
    """Counted in this process's sampling (the planned value when nothing was left to sample)."""
    shards: int
    shards_resumed: int
    seconds: float
    is_main_process: bool = True


def plan_shards(prompts: list[Prompt], follows: tuple[str, ...], batch_size: int, seed: int,
                seed_from_file: bool, images_per_prompt: int = 1) -> list[list[Trajectory]]:
    """Shards in order: for each block of ``batch_size`` (prompt, sample) pairs, one shard per follower; ids
    run over shards."""
    samples = [(prompt, k) for prompt in prompts for k in range(images_per_prompt)]
    shards, next_id = [], 0
    for start in range(0, len(samples), batch_size):
        for follow in follows:
            shard = []
            for prompt, k in samples[start:start + batch_size]:
                trajectory_seed = prompt.seed(seed, seed_from_file) + 2 * k + FOLLOWER_SEED_OFFSET[follow]
                shard.append(Trajectory(next_id, prompt, follow, trajectory_seed, k))
                next_id += 1
            shards.append(shard)
    return shards


def initial_noise(seeds: list[int], shape: tuple[int, int, int], init_noise_sigma: float) -> torch.Tensor:
    """x_T (B, C, H, W): one CPU generator per trajectory, the same noise on every device (as diffusers draws it)."""
    noise = [torch.randn((1, *shape), generator=torch.Generator("cpu").manual_seed(s)) for s in seeds]
    return torch.cat(noise) * init_noise_sigma


def generate(cfg: GenerateConfig, out: str | Path, progress: bool = True) -> GenerateResult:
    """Generate (or resume) the Algorithm-2 store ``out`` for ``cfg``; every process of an accelerate launch calls it."""
    from accelerate import PartialState

    started = time.perf_counter()
    out = Path(out)
    # 1. Processes and device
    state = PartialState(cpu=cfg.device == "cpu")
    device = state.device if cfg.device == "auto" else torch.device(cfg.device)
    if cfg.dtype != "auto" and cfg.dtype not in DTYPES:
        raise UserError(f"--dtype must be auto or one of {', '.join(DTYPES)}, not {cfg.dtype!r}")
    dtype = DTYPES[cfg.dtype] if cfg.dtype != "auto" else (torch.float16 if device.type == "cuda" else torch.float32)
    if device.type == "cuda":  # same seed, same bytes: no autotuned (run-dependent) convolution algorithms
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    if cfg.store_dtype not in STORE_DTYPES:
        raise UserError(f"--store-dtype must be one of {', '.join(STORE_DTYPES)}, not {cfg.store_dtype!r}")
    if cfg.steps < 1 or cfg.batch_size < 1 or cfg.images_per_prompt < 1:
        raise UserError("--steps, --batch-size and --images-per-prompt must be at least 1")

    # 2. Models and prompts (cheap: files are found and fingerprinted, nothing is loaded yet)
    base_spec, expert_spec = cfg.models()
    located_base, located_expert = locate_pair(base_spec, expert_spec)
    prompt_set = load_prompts(cfg.prompts, categories=cfg.categories, hard_only=cfg.hard_only, limit=cfg.limit,
                              seed=cfg.seed)
    shards = plan_shards(prompt_set.prompts, cfg.follows(), cfg.batch_size, cfg.seed, cfg.seed_from_file,
                         cfg.images_per_prompt)

    # 3. Claim the output directory: same settings resume, different settings are refused (main process first)
    identity = {**asdict(cfg), "base": located_base.provenance(), "safer": located_expert.provenance(),
                "prompts": prompt_set.source, "device": device.type, "dtype": str(dtype).removeprefix("torch.")}
    writer = None
    if state.is_main_process:
        claim_output_dir(out, "generate", identity)
        writer = StoreWriter(out, cfg.store_dtype)
        writer.remove_partial_files()
    state.wait_for_everyone()
    if not state.is_main_process:
        claim_output_dir(out, "generate", identity)
        writer = StoreWriter(out, cfg.store_dtype)

    mine = [k for k in range(len(shards)) if k % state.num_processes == state.process_index]
    finished = out / "manifest.json"
    if finished.is_file() and all(writer.is_done(k) for k in range(len(shards))):
        # A finished store is not rewritten (its manifest's digest is what later stages resume by), and its
        # models are not loaded again.
        manifest = json.loads(finished.read_text())
        return _result(out, manifest, manifest["totals"]["unet_evaluations_per_tuple"], len(shards), len(mine),
                       started, state.is_main_process)

    # 4. Load the pair: identical components once, scheduler checked
    from audit.pairing import ModelPair

    pair = ModelPair.from_located(located_base, located_expert, scheduler=cfg.scheduler, guidance_scale=cfg.guidance,
                                  device=device, dtype=dtype)
    resolution = cfg.resolution or pair.default_resolution
    latent_shape = pair.latent_shape(resolution)

    # 5. Sample this process's unfinished shards
    todo = [k for k in mine if not writer.is_done(k)]
    evaluations = tuples_sampled = 0
    with _progress(progress and state.is_main_process, sum(len(shards[k]) for k in todo) * cfg.steps,
                   len(cfg.follows()) * cfg.steps) as advance:
        for k in todo:
            states, steps, images, count = sample_shard(pair, shards[k], cfg.steps, latent_shape, device)
            writer.write_shard(k, [tr.traj_id for tr in shards[k]], states, steps, images)
            evaluations += count
            tuples_sampled += len(shards[k]) * cfg.steps
            advance(len(shards[k]) * cfg.steps)

    # 6. Merge: the main process writes the manifest once every process is done
    state.wait_for_everyone()
    manifest = None
    if state.is_main_process:
        manifest = writer.finalize(_manifest(cfg, identity, pair, prompt_set.source, shards, resolution, latent_shape,
                                             state.num_processes), len(shards))
    state.wait_for_everyone()
    return _result(out, manifest or {}, evaluations / tuples_sampled if tuples_sampled else pair.evaluations_per_step,
                   len(shards), len(mine) - len(todo), started, state.is_main_process)


def _result(out: Path, manifest: dict, evaluations_per_tuple: float, shards: int, resumed: int, started: float,
            is_main_process: bool) -> GenerateResult:
    totals = manifest.get("totals", {})
    return GenerateResult(
        out=out, trajectories=totals.get("trajectories", 0), tuples=totals.get("tuples", 0),
        bytes=totals.get("shard_bytes", 0) + totals.get("image_bytes", 0),
        bytes_per_tuple=totals.get("bytes_per_tuple", 0.0), unet_evaluations_per_tuple=evaluations_per_tuple,
        shards=shards, shards_resumed=resumed, seconds=time.perf_counter() - started, is_main_process=is_main_process,
    )


@torch.no_grad()
def sample_shard(pair, shard: list[Trajectory], steps: int, latent_shape: tuple[int, int, int],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor, list, int]:
    """Algorithm 2 for one batch of trajectories with one follower.

    Returns ``states`` (N, S+1, C, H, W), ``relative_step`` (N, S, C, H, W) = expert_next - base_next,
    the decoded final images and the number of UNet evaluations spent.
    """
    follow = shard[0].follow
    cond = pair.conditioning([tr.prompt.text for tr in shard])
    state = pair.start(steps, device)
    x_T = initial_noise([tr.seed for tr in shard], latent_shape, float(state.schedulers[0].init_noise_sigma))
    rollout = rollout_pair(lambda x, t: pair.pair_step(x, t, cond, state), x_T.to(device),
                           torch.tensor(state.timesteps), follow)
    followed = rollout.states[1:]
    base_next, expert_next = (followed, rollout.other) if follow == "base" else (rollout.other, followed)
    images = pair.decode(rollout.final)
    return (rollout.states.transpose(0, 1).cpu(), relative_step(base_next, expert_next).transpose(0, 1).cpu(), images,
            state.unet_evaluations)


def _manifest(cfg: GenerateConfig, identity: dict, pair, prompt_source: dict, shards: list[list[Trajectory]],
              resolution: int, latent_shape: tuple[int, int, int], processes: int) -> dict:
    timesteps = pair.start(cfg.steps).timesteps
    return {
        "format": "rrf-audit-latents",
        "version": 1,
        "config": identity,
        "models": {"base": pair.base.model.provenance(), "expert": pair.expert.model.provenance()},
        "pair": pair.provenance(),
        "guidance_scale": cfg.guidance,
        "sld": {"base": identity["base"]["sld"], "expert": identity["safer"]["sld"]},
        "seeds": {"seed": cfg.seed, "seed_from_file": cfg.seed_from_file,
                  "rule": "x_T of (prompt, sample k, follower) ~ torch CPU generator seeded prompt_seed + 2k + (0 base, 1 expert)"},
        "prompts": prompt_source,
        "resolution": resolution,
        "latent_shape": list(latent_shape),
        "timesteps": timesteps,
        "trajectories": [tr.record() for shard in shards for tr in shard],
        # How this run executed (not what it computed): on CPU the bytes depend on the threads per process.
        "provenance": {**provenance(), "processes": processes, "torch_threads": torch.get_num_threads()},
    }


class _progress:
    """Rich progress bar over tuples, with prompts/s, tuples/s and ETA; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, tuples_per_prompt: int):
        self.enabled, self.total, self.per_prompt = enabled, total, tuples_per_prompt

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(TextColumn("[bold]generate"), BarColumn(), MofNCompleteColumn(), TextColumn("tuples"),
                            TextColumn("{task.fields[rates]}"), TimeRemainingColumn(), transient=False)
        self.bar.__enter__()
        self.task = self.bar.add_task("generate", total=self.total, rates="")
        self.start, self.done = time.perf_counter(), 0

        def advance(n: int) -> None:
            self.done += n
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            self.bar.update(self.task, advance=n,
                            rates=f"{rate / self.per_prompt:.2f} prompts/s  {rate:.1f} tuples/s")

        return advance

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.__exit__(*exc)
