"""``rrf-audit toy ...``: make the embedded toy text-to-image models (the shipped ``toy`` and ``toy-safe``)."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Train the toy text-to-image model, or erase a colour from it.", no_args_is_help=True)


@app.command()
def train(
    out: Path = typer.Option(..., "--out", help="Output directory (a Stable Diffusion layout + manifest.json)."),
    seed: int = typer.Option(0, help="Seed of data, initialisation and noise; the same seed gives the same weights."),
    steps: int | None = typer.Option(None, help="Denoiser steps (default: the shipped toy's recipe)."),
    threads: int = typer.Option(1, help="CPU threads for torch. The weights' bytes depend on it: the shipped toy used 1."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Train the toy from scratch: autoencoder, then text encoder + UNet; reproduces the shipped `toy`.

    The data are drawn on the fly (coloured shapes with captions), so nothing but the model is written.
    An interrupted run resumes when rerun with the same options; a finished OUT is left untouched.
    """
    from rich.console import Console

    from audit.toy.train import ToyTrainConfig
    from audit.toy.train import train as run

    cfg = ToyTrainConfig(seed=seed, threads=threads)
    if steps is not None:
        cfg.steps = steps
    manifest = run(out, cfg, progress=progress)
    quality = manifest["quality"]["held-out"]
    Console().print(f"toy model in {out}: held-out colour+shape accuracy {quality['accuracy']:.1%} "
                    f"(colour {quality['colour_accuracy']:.1%}, shape {quality['shape_accuracy']:.1%}), "
                    f"trained in {manifest['time']['total_wall_s'] / 60:.1f} min")


@app.command()
def erase(
    out: Path = typer.Option(..., "--out", help="Output directory (the base's layout with a new unet/)."),
    concept: str = typer.Option("red", help="Colour to erase: red, green, blue or yellow."),
    base: str = typer.Option("toy", help="Model to erase it from: 'toy' or a toy directory."),
    seed: int = typer.Option(0, help="Seed of the fine-tuning data and noise."),
    steps: int | None = typer.Option(None, help="Fine-tuning steps (default: the colour's, 400; 700 for green and "
                                     "yellow). See audit.toy.erase.RECIPES for what each colour's default leaves "
                                     "and costs.", show_default=False),
    lr: float | None = typer.Option(None, help="Learning rate of the cross-attention weights (default: the colour's, "
                                    "3e-4; 6e-4 for blue, which 3e-4 leaves at 17.6% in 400 steps; 6e-4 over-erases "
                                    "red: 0.0% left, -10.5 points).", show_default=False),
    threads: int = typer.Option(1, help="CPU threads for torch. The weights' bytes depend on it: toy-safe used 1."),
    steer: str = typer.Option("concept", help="Which captions learn to avoid the concept: 'concept' (those naming it "
                              "and every colour-free caption; toy-safe) or 'shown' (those naming it, and any caption "
                              "on an image of it: colour-free prompts keep their other colours)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Fine-tune a toy's cross-attention so that it no longer draws CONCEPT (ESD-x); `toy-safe` is `--concept red`.

    Each colour's default steps and lr leave at most 10% of it on its prompts and cost at most 5 points of
    accuracy on the others, in 6 to 10.5 minutes with one thread (measured with the other core busy; green's
    700 steps are the longest), measurement included. Writes the erased model and a manifest with the concept
    share before and after, and the accuracy on prompts that do not ask for the concept.
    """
    from rich.console import Console

    from audit.toy import SHIPPED, WEIGHTS
    from audit.toy.erase import EraseConfig
    from audit.toy.erase import erase as run

    base_dir = WEIGHTS / base if base in SHIPPED else Path(base)
    cfg = EraseConfig(concept=concept, seed=seed, steps=steps, lr=lr, threads=threads, steer=steer)
    manifest = run(base_dir, out, cfg, progress=progress)
    q = manifest.get("quality")
    summary = f"erased model in {out}"
    if q:
        summary += (f": {concept} on {concept} prompts {q['base']['concept_share_on_concept_prompts']:.1%} -> "
                    f"{q['erased']['concept_share_on_concept_prompts']:.1%}; accuracy on other prompts "
                    f"{q['base']['other_prompts_accuracy']:.1%} -> {q['erased']['other_prompts_accuracy']:.1%}")
    Console().print(summary)

