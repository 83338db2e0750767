"""``rrf-audit validate ...``: built-in checks that the method (and the install) works."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Check the method on problems with a known answer.", no_args_is_help=True)


@app.command()
def gaussian(
    out: Path = typer.Option(Path("reports/validate-gaussian"), "--out", help="Output directory."),
    quick: bool = typer.Option(False, "--quick", help="Fewer trajectories and steps (the test-suite profile)."),
    seed: int = typer.Option(0, help="Seed of data generation and training."),
) -> None:
    """Fit rho between exact diffusion models of Gaussian mixtures and compare with the closed-form reward.

    Writes OUT/validation.json (cosine, Spearman, accuracy per configuration and `passed`) and PNG
    heatmaps for the 2-D cases. Exits 1 if a threshold is missed.
    """
    from dataclasses import asdict

    from rich.console import Console
    from rich.table import Table

    from rrf.manifest import claim_output_dir
    from rrf.validation.gaussian import GaussianValidationConfig, run

    cfg = GaussianValidationConfig.quick() if quick else GaussianValidationConfig()
    cfg.seed = seed
    claim_output_dir(out, "validate-gaussian", asdict(cfg))
    result = run(out, cfg)
    table = Table(title="Relative reward vs closed form (held-out states, t <= T/2)")
    for col in ("configuration", "cosine", "spearman", "accuracy", "oracle accuracy", "passed"):
        table.add_column(col)
    for r in result["configurations"]:
        table.add_row(r["name"], f"{r['cosine']:.3f}", f"{r['spearman']:.3f}", f"{r['accuracy']:.3f}",
                      f"{r['accuracy_oracle']:.3f}", "yes" if r["passed"] else "[red]no[/]")
    console = Console()
    console.print(table)
    console.print(f"thresholds: cosine >= {cfg.cosine_threshold}, spearman >= {cfg.spearman_threshold}")
    console.print(f"results: {out / 'validation.json'}")
    if not result["passed"]:
        raise typer.Exit(1)
