"""``rrf-audit generate``, ``rrf-audit models`` and ``rrf-audit verify``: the audit data commands."""

from __future__ import annotations

from pathlib import Path

import typer

REPO = Path(__file__).resolve().parents[2]
BASE_HELP = "Base model: alias (see `rrf-audit models`), hub id, local directory or .safetensors checkpoint."
PROMPTS_HELP = "Prompt source: 'i2p' (hub dataset), a shipped set ('harmless'), or a .csv/.parquet/.txt file."


def register(app: typer.Typer) -> None:
    app.command("generate")(generate)
    app.command("models")(models)
    app.command("verify")(verify)


def generate(
    base: str = typer.Argument(..., help=BASE_HELP),
    safer: str = typer.Argument(..., help="Safer model: alias, 'sld' (SLD on the base weights), hub id, directory, "
                                          "or a .safetensors file (a UNet fine-tune or a full checkpoint)."),
    prompts: str = typer.Option("i2p", "--prompts", "-p", help=PROMPTS_HELP),
    out: Path = typer.Option(Path("reports/data"), "--out", "-o", help="Store directory (resumed if it exists)."),
    follow: str = typer.Option("both", help="Trajectories of: both (the paper), base or expert."),
    limit: int | None = typer.Option(None, help="At most N prompts, stratified by category (seeded)."),
    images_per_prompt: int = typer.Option(1, help="Trajectories per prompt and follower, each from its own noise "
                                          "(I2P's protocol: 10)."),
    categories: str = typer.Option("", help="Comma-separated categories to keep, e.g. 'sexual,violence'."),
    hard_only: bool = typer.Option(False, "--hard-only", help="Keep only I2P's 'hard' prompts."),
    steps: int = typer.Option(50, help="Denoising steps (= tuples per trajectory)."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    resolution: int | None = typer.Option(None, help="Image size in pixels; default: the model's native size."),
    batch_size: int = typer.Option(8, help="Trajectories sampled together (one shard each)."),
    seed: int = typer.Option(0, help="Seed of prompt selection and initial noise."),
    seed_from_file: bool = typer.Option(False, "--seed-from-file", help="Use the file's evaluation_seed column."),
    scheduler: str = typer.Option("ddim", help="Sampler: ddim (eta 0), dpm, unipc, euler, or model."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    dtype: str = typer.Option("auto", help="Model dtype: auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16."),
    store_dtype: str = typer.Option("fp16", help="Latent storage precision: fp16 or fp32."),
    concept: str | None = typer.Option(None, help="Safety-concept text of an SLD safer model."),
    sld_preset: str | None = typer.Option(None, help="SLD preset of an SLD safer model: weak, medium, strong, max."),
    sld_guidance_scale: float | None = typer.Option(None, help="Custom SLD guidance scale s_S."),
    sld_warmup_steps: int | None = typer.Option(None, help="Custom SLD warm-up steps."),
    sld_threshold: float | None = typer.Option(None, help="Custom SLD threshold lambda."),
    sld_momentum_scale: float | None = typer.Option(None, help="Custom SLD momentum scale s_m."),
    sld_momentum_beta: float | None = typer.Option(None, help="Custom SLD momentum beta_m."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show the progress bar."),
) -> None:
    """Sample trajectories of one model and record both models' next latent at every step (Algorithm 2).

    For every prompt, sample and follower, x_T comes from its own seed; at each step both models
    step from the same latent with shared UNet passes (3 evaluations per tuple for an SLD pair, 4 for two
    checkpoints). Writes sharded safetensors, final-image PNGs and OUT/manifest.json. Rerunning the same
    command resumes; a different configuration is refused. Scale out with
    `accelerate launch -m audit.cli generate ...`.
    """
    from audit.generate import GenerateConfig
    from audit.generate import generate as run

    cfg = GenerateConfig(
        base=base, safer=safer, prompts=prompts, follow=follow, limit=limit, images_per_prompt=images_per_prompt,
        categories=tuple(c.strip() for c in categories.split(",") if c.strip()), hard_only=hard_only, steps=steps,
        guidance=guidance, resolution=resolution, batch_size=batch_size, seed=seed, seed_from_file=seed_from_file,
        scheduler=scheduler, device=device, dtype=dtype, store_dtype=store_dtype, concept=concept,
        sld_preset=sld_preset,
        sld_overrides={"guidance_scale": sld_guidance_scale, "warmup_steps": sld_warmup_steps,
                       "threshold": sld_threshold, "momentum_scale": sld_momentum_scale,
                       "momentum_beta": sld_momentum_beta},
    )
    cfg.sld_overrides = {k: v for k, v in cfg.sld_overrides.items() if v is not None}
    result = run(cfg, out, progress=progress)
    if not result.is_main_process:
        return
    from rich.console import Console

    resumed = f", {result.shards_resumed} of {result.shards} shards were already done" if result.shards_resumed else ""
    Console().print(
        f"[bold]done[/] in {result.seconds:.1f} s{resumed}: {result.trajectories} trajectories, {result.tuples} tuples, "
        f"{result.bytes / 1e6:.2f} MB ({result.bytes_per_tuple:.0f} B of latents per tuple), "
        f"{result.unet_evaluations_per_tuple:.2f} UNet evaluations per tuple\nstore: {out}"
    )


def models() -> None:
    """List the model aliases and what they resolve to."""
    from rich.console import Console
    from rich.table import Table

    from audit.registry import ALIASES

    table = Table(title="Model aliases (any hub id, local diffusers directory or .safetensors checkpoint works too)")
    for column in ("alias", "weights", "safety guidance", "description"):
        table.add_column(column, overflow="fold")
    for name, spec in ALIASES.items():
        sld = "-"
        if spec.sld is not None:
            concept = spec.sld.concept if len(spec.sld.concept) <= 24 else spec.sld.concept[:21] + "..."
            sld = f"SLD {spec.sld_preset or 'custom'}, concept {concept!r}"
        weights = Path(spec.weights)
        shown = str(weights.relative_to(REPO)) if weights.is_relative_to(REPO) else spec.weights
        table.add_row(name, shown, sld, spec.description)
    table.add_row("sld", "(the other model's weights)", "SLD max (--sld-preset, --concept)",
                  "Safe Latent Diffusion on the base model, as the safer side")
    Console().print(table)


def verify(store: Path = typer.Argument(..., help="A store directory made by `rrf-audit generate`.")) -> None:
    """Check a data store's shards and images against the checksums in its manifest."""
    from rich.console import Console

    from audit.store import Store

    opened = Store.open(store)
    problems = opened.verify()
    console = Console()
    if problems:
        for problem in problems:
            console.print(f"[red]problem:[/] {problem}", soft_wrap=True)
        console.print(f"{len(problems)} problem(s) in {store}; regenerate the affected shards by deleting them "
                      "(and their .json) and rerunning the generate command")
        raise typer.Exit(1)
    totals = opened.manifest["totals"]
    console.print(f"ok: {len(opened.manifest['shards'])} shards, {totals['trajectories']} trajectories, "
                  f"{totals['tuples']} tuples verified in {store}")
