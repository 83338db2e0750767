"""``rrf-audit fit | evaluate | report | score | compare``: from a data store to the audit report."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from audit.cli.generate import BASE_HELP

DIMS_HELP = "Channel widths of the reward's UNet encoder, comma-separated (paper: 32,64,128,256)."


def register(app: typer.Typer) -> None:
    for command in (fit, evaluate, report, score, compare):
        app.command(command.__name__)(command)


def _dims(text: str) -> tuple[int, ...]:
    from rrf.errors import UserError

    try:
        dims = tuple(int(d) for d in text.split(",") if d.strip())
    except ValueError:
        raise UserError(f"--dims must be comma-separated integers like 32,64,128,256, not {text!r}") from None
    if not dims or min(dims) < 1:
        raise UserError(f"--dims must list positive channel widths, not {text!r}")
    return dims


def _device(device: str) -> str:
    import torch

    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _tagger(tags: bool, model: str, weights: str):
    if not tags:
        return None
    from audit.tags import FileTagger, TaggerConfig

    return FileTagger(TaggerConfig(model=model, pretrained=weights))


def _headline(metrics: dict) -> str:
    def interval(key: str, fmt: str) -> str:
        lo, hi = metrics.get(f"{key}_ci95") or (None, None)
        return f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None and not math.isnan(lo) else ""

    parts = [f"accuracy {metrics['accuracy']:.1%}{interval('accuracy', '.1%')}",
             f"AUROC {metrics['auroc']:.3f}{interval('auroc', '.3f')}", f"n_test {metrics['n_test']}"]
    if metrics.get("concept_auroc") is not None:
        parts.append(f"concept AUROC {metrics['concept_auroc']:.3f}{interval('concept_auroc', '.3f')} "
                     f"({metrics.get('concept')})")
    if metrics.get("concept_prompt_accuracy") is not None:
        parts.append(f"on prompts inviting it {metrics['concept_prompt_accuracy']:.1%}"
                     f"{interval('concept_prompt_accuracy', '.1%')}")
    if metrics.get("concept_rule_accuracy") is not None:
        parts.append(f"labeller's own accuracy {metrics['concept_rule_accuracy']:.1%}")
    if metrics.get("heldout_cosine") is not None:
        parts.append(f"held-out cosine {metrics['heldout_cosine']:.3f}")
    return ", ".join(parts)


def fit(
    data: Path = typer.Argument(..., help="A data store made by `rrf-audit generate`."),
    out: Path = typer.Option(Path("reports/run"), "--out", "-o", help="Run directory (resumed if it exists)."),
    steps: int = typer.Option(6000, help="Training steps (paper: 6000)."),
    batch_size: int = typer.Option(64, help="Global batch of tuples (paper: 64)."),
    lr: float = typer.Option(1e-4, help="Adam learning rate (paper: 1e-4)."),
    max_samples_per_trajectory: float = typer.Option(
        900.0, help="Cap on steps x batch / training trajectories, against overfitting small stores (0: no cap; "
        "the toy audit is capped at 3010 steps, an I2P store never)."),
    dims: str = typer.Option("32,64,128,256", help=DIMS_HELP),
    test_fraction: float = typer.Option(0.2, help="Share of prompts held out (split by prompt, stratified)."),
    seed: int = typer.Option(0, help="Seed of the split, the initialisation and the batch order."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    mixed_precision: str = typer.Option("no", help="no, fp16 or bf16 (GPU)."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """Train the relative reward on a store: grad rho(x_t, t) ~ expert_next - base_next.

    Splits by prompt, fits per-timestep latent scaling in one streaming pass, trains the 2-D UNet-encoder
    reward with EMA and checkpoints (rerun to resume), and saves OUT/reward. Multi-GPU or multi-process:
    `accelerate launch -m audit.cli fit ...`.
    """
    from audit.fit import FitConfig
    from audit.fit import fit as run

    cfg = FitConfig(dims=_dims(dims), lr=lr, batch_size=batch_size, steps=steps,
                    max_samples_per_trajectory=max_samples_per_trajectory or None, test_fraction=test_fraction,
                    seed=seed, mixed_precision=mixed_precision)  # type: ignore[arg-type]
    run(data, out, cfg, device=None if device == "auto" else device, progress=progress)
    typer.echo(f"reward: {out / 'reward'}")


def evaluate(
    run: Path = typer.Argument(..., help="A run directory made by `rrf-audit fit`."),
    score_timesteps: int = typer.Option(4, help="Score each final sample by its latent noised to this many timesteps "
                                        "of the middle of the diffusion (0.45-0.8 of the schedule), averaged; 0: the "
                                        "clean latent at the last step."),
    score_draws: int = typer.Option(8, help="Noise draws per scoring timestep."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Measure the reward on held-out prompts: base-vs-safer accuracy and AUROC, per category, per timestep.

    Writes RUN/metrics.json, RUN/scores.parquet and PNG plots (the paper's reward histogram).
    """
    from audit.evaluate import EvaluateConfig
    from audit.evaluate import evaluate as run_eval
    from audit.fit import load_fit_manifest
    from audit.ground_truth import ground_truth_for

    truth, concept = ground_truth_for(load_fit_manifest(run)["store"])
    cfg = EvaluateConfig(score_timesteps=score_timesteps, score_draws=score_draws)
    metrics = run_eval(run, cfg, device=_device(device), ground_truth=truth, concept=concept)
    typer.echo(f"{_headline(metrics)}\nmetrics: {run / 'metrics.json'}")


def report(
    run: Path = typer.Argument(..., help="An evaluated run directory."),
    out: Path = typer.Option(None, "--out", "-o", help="Report directory (default: RUN/../report)."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Blur the pixels of every image written."),
    top: int = typer.Option(12, help="How many lowest- and highest-reward samples to show."),
    per_batch: int = typer.Option(8, help="Batch size B of the lowest/highest-per-batch view."),
    split: str = typer.Option("test", help="Samples to show: test (held-out prompts) or all."),
    tags: bool = typer.Option(False, "--tags", help="Tag images with zero-shot open_clip scores of the I2P categories."),
    tag_model: str = typer.Option("ViT-B-32", help="open_clip architecture for --tags."),
    tag_weights: str = typer.Option("laion2b_s34b_b79k", help="open_clip pretrained tag or checkpoint file for --tags."),
) -> None:
    """Write the HTML audit report: lowest/highest-reward samples, breakdowns, plots and provenance."""
    from audit.report import ReportConfig, report_run
    from rrf.errors import UserError

    if split not in ("test", "all"):
        raise UserError(f"--split must be test or all, not {split!r}")
    tagger = _tagger(tags, tag_model, tag_weights)
    index = report_run(run, out or run.parent / "report", ReportConfig(top=top, per_batch=per_batch, blur=blur,
                                                                       split=split), tagger)
    typer.echo(f"report: {index}")


def score(
    run: Path = typer.Argument(..., help="A run directory made by `rrf-audit fit`."),
    inputs: list[Path] = typer.Argument(..., help="Image files, folders of images, or one prompt file (.txt/.csv)."),
    out: Path = typer.Option(Path("reports/scores.csv"), "--out", "-o", help="CSV to write."),
    timestep: int | None = typer.Option(None, help="Timestep to score images at (default: evaluate's rule, the latent noised "
                                              "into the middle of the diffusion and averaged)."),
    limit: int | None = typer.Option(None, help="Prompt files: at most N prompts."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
) -> None:
    """Score new images (VAE-encoded) or a prompt file (sampled by the base model, then scored)."""
    from rich.console import Console
    from rich.table import Table

    from audit.score import IMAGE_SUFFIXES, ScoreConfig, score_images, score_prompts
    from rrf.errors import UserError

    if out.exists():
        raise UserError(f"{out} exists; choose another --out (scores are never overwritten)")
    cfg = ScoreConfig(timestep=timestep, device=_device(device))
    prompt_file = len(inputs) == 1 and inputs[0].is_file() and inputs[0].suffix.lower() not in IMAGE_SUFFIXES
    if prompt_file:
        table = score_prompts(run, inputs[0], out.with_suffix(""), cfg, limit=limit)
    else:
        table = score_images(run, inputs, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out, index=False)
    view = Table(title=f"reward at t={table['timestep'].iloc[0]} (lower: what the safer model avoids)")
    label = "prompt" if prompt_file else "input"
    view.add_column(label, overflow="fold")
    view.add_column("reward", justify="right")
    for _, row in table.sort_values("reward").head(30).iterrows():
        view.add_row(str(row[label]), f"{row['reward']:.4g}")
    Console().print(view)
    typer.echo(f"scores: {out}")


def compare(
    base: str = typer.Argument(..., help=BASE_HELP),
    safer: str = typer.Argument(..., help="Safer model: alias, 'sld', hub id, directory or .safetensors file "
                                          "(UNet or full)."),
    prompts: str | None = typer.Option(None, "--prompts", "-p",
                                       help="Prompt source (default: i2p; for a toy pair the audit set of the safer "
                                            "model's concept, e.g. toy-red)."),
    limit: int | None = typer.Option(None, help="At most N prompts, stratified by category (seeded)."),
    images_per_prompt: int | None = typer.Option(None, help="Trajectories per prompt and follower (I2P's protocol: 10; "
                                                 "default 1, for a toy pair 3)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Output directory (default: reports/BASE-vs-SAFER)."),
    steps: int = typer.Option(50, help="Denoising steps per trajectory."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale."),
    fit_steps: int = typer.Option(6000, help="Reward-training steps (paper: 6000)."),
    fit_lr: float | None = typer.Option(None, help="Adam learning rate of the reward (default: the paper's 1e-4; "
                                        "for a toy pair 5e-4, see audit.ground_truth.TOY_FIT_LR)."),
    fit_max_samples_per_trajectory: float = typer.Option(
        900.0, help="Cap on reward steps x batch / training trajectories (0: no cap; see `rrf-audit fit --help`)."),
    dims: str = typer.Option("32,64,128,256", help=DIMS_HELP),
    batch_size: int = typer.Option(8, help="Trajectories sampled together."),
    seed: int = typer.Option(0, help="Seed of every stage."),
    concept: str | None = typer.Option(None, help="Safety concept of an SLD safer model."),
    sld_preset: str | None = typer.Option(None, help="SLD preset: weak, medium, strong, max."),
    blur: bool = typer.Option(True, "--blur/--no-blur", help="Blur report images in their pixels (default on)."),
    tags: bool = typer.Option(False, "--tags", help="Tag report images with zero-shot open_clip scores of the I2P "
                              "categories (see `rrf-audit report --help`)."),
    tag_model: str = typer.Option("ViT-B-32", help="open_clip architecture for --tags."),
    tag_weights: str = typer.Option("laion2b_s34b_b79k", help="open_clip pretrained tag or checkpoint file for --tags."),
    device: str = typer.Option("auto", help="cpu, cuda, cuda:N or auto."),
    progress: bool = typer.Option(True, "--progress/--no-progress"),
) -> None:
    """The whole audit: generate -> fit -> evaluate -> report. Rerun the same command to resume.

    Writes OUT/data (trajectories), OUT/run (reward, metrics.json) and OUT/report/index.html, and prints
    the headline metrics and the report's path.
    """
    from audit.compare import CompareConfig, default_out
    from audit.compare import compare as run
    from audit.fit import FitConfig
    from audit.generate import GenerateConfig
    from audit.ground_truth import audit_defaults
    from audit.registry import resolve
    from audit.report import ReportConfig

    base_spec = resolve(base)
    defaults = audit_defaults(base_spec.to_dict(),
                              resolve(safer, other=base_spec, concept=concept, sld_preset=sld_preset).to_dict())
    prompts = prompts or defaults.prompts
    images_per_prompt = defaults.images_per_prompt if images_per_prompt is None else images_per_prompt
    fit_lr = defaults.fit_lr if fit_lr is None else fit_lr
    device = _device(device)
    cfg = CompareConfig(
        generate=GenerateConfig(base=base, safer=safer, prompts=prompts, limit=limit, images_per_prompt=images_per_prompt,
                                steps=steps, guidance=guidance,
                                batch_size=batch_size, seed=seed, concept=concept, sld_preset=sld_preset, device=device),
        fit=FitConfig(dims=_dims(dims), lr=fit_lr, steps=fit_steps, max_samples_per_trajectory=fit_max_samples_per_trajectory or None,
                      seed=seed),
        report=ReportConfig(blur=blur, seed=seed),
    )
    out = out or default_out(base, safer)
    metrics = run(cfg, out, device=device, progress=progress, tagger=_tagger(tags, tag_model, tag_weights))
    if metrics:
        typer.echo(f"{_headline(metrics)}\nreport: {metrics['report']}")
