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


@app.command()
def locomotion(
    out: Path = typer.Option(Path("reports/validate-locomotion"), "--out", help="Output directory (rerun to resume)."),
    profile: str = typer.Option("paper", "--profile",
                                help="paper: HalfCheetah, Hopper, Walker2d at the paper's settings scaled to a CPU "
                                     "(hours on 2 cores); quick: HalfCheetah, short episodes, small models (minutes)."),
    envs: str = typer.Option(None, "--envs", help="Comma-separated subset of halfcheetah,hopper,walker2d."),
    seed: int = typer.Option(0, "--seed", help="Seed of the policy search, data, training and rollouts."),
    episodes: int = typer.Option(None, "--episodes", min=2, help="Closed-loop episodes per evaluated planner."),
    gate_episodes: int = typer.Option(None, "--gate-episodes", min=2,
                                      help="Closed-loop episodes per planner for the gate (default 32; more give a "
                                           "less noisy verdict, and more start states for the reward's data)."),
    sweep: str = typer.Option(None, "--sweep", help="Comma-separated omegas: pick each guide's omega by a separate "
                                                    "closed-loop run instead of the paper's Tables 4/5 values."),
    sweep_t_stopgrad: str = typer.Option(None, "--sweep-t-stopgrad", help="Comma-separated t_stopgrad values to sweep: "
                                             "no guidance at diffusion steps t < t_stopgrad (of T = 20; "
                                             "Walker2d gains at 10, see the README)."),
    dataset: list[str] = typer.Option([], "--dataset", help="ENV:KIND=PATH: use a D4RL-format HDF5 file (or "
                                                            "minari:<id>) as the replay or expert data of ENV."),
    cache: Path = typer.Option(None, "--cache", help="Cache of ARS policies and our datasets "
                                                    "(default $RRF_AUDIT_CACHE or ~/.cache/rrf-audit)."),
    threads: int = typer.Option(1, "--threads", min=1, help="torch threads (more only helps on idle cores)."),
    sim_threads: int = typer.Option(1, "--sim-threads", min=1,
                                    help="Threads stepping MuJoCo (same results for any count; speeds up ARS and "
                                         "the datasets on idle cores)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Steer a weak locomotion planner with the reward extracted between it and an expert planner (paper Table 1).

    Writes OUT/results.json (per environment: unsteered, discriminator, reward, p_value, the planner
    gate, the checks), OUT/table.md beside the paper's Table 1 and OUT/<env>/returns.png. Stops with
    exit 2 if a planner fails the gate; exits 1 if the profile's targets are missed.
    """
    from rich.console import Console

    from rrf.decision.validate_locomotion import LocomotionConfig, results_table, run

    cfg = LocomotionConfig.from_options(profile, envs=envs, seed=seed, episodes=episodes,
                                        gate_episodes=gate_episodes, sweep=sweep,
                                        sweep_t_stopgrad=sweep_t_stopgrad, datasets=dataset, cache=cache,
                                        threads=threads, sim_threads=sim_threads, progress=progress)
    console = Console()
    result = run(out, cfg, console)
    console.print(results_table(result["envs"]))
    _finish(console, result, out / "results.json")


@app.command()
def maze2d(
    out: Path = typer.Option(Path("reports/validate-maze2d"), "--out", help="Output directory (rerun to resume)."),
    profile: str = typer.Option("paper", "--profile",
                                help="paper: 4 mazes x 8 goals x 5 seeds (about 3 h on 2 CPU cores); "
                                     "quick: UMaze, 2 goals, 1 seed (about 3 min)."),
    mazes: str = typer.Option(None, "--mazes", help="Comma-separated subset of open,umaze,medium,large."),
    goals: int = typer.Option(None, "--goals", min=1, help="Expert goals per maze (default: the profile's)."),
    seeds: int = typer.Option(None, "--seeds", min=1, help="Seeds per goal (default: the profile's)."),
    workers: int = typer.Option(2, "--workers", min=1, help="Worker processes (one torch thread each)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show progress bars."),
) -> None:
    """Recover an expert planner's hidden goal from the reward extracted between it and a base planner.

    Writes OUT/results.json (goal_recovery, goal_recovery_ci, discrimination_accuracy, per_maze, ...),
    OUT/summary.md (beside the paper's 78.12% +- 6.40% recovery and 83.76% discrimination) and a heatmap
    PNG per (maze, seed, goal). Exits 1 if the profile's targets are missed.
    """
    from rich.console import Console
    from rich.markdown import Markdown

    from rrf.decision.validate_maze2d import Maze2DConfig, run, summary_markdown
    from rrf.manifest import claim_output_dir

    cfg = Maze2DConfig.from_options(profile, mazes, goals, seeds, workers)
    claim_output_dir(out, "validate-maze2d", cfg.result_config())
    result = run(out, cfg, progress=progress)
    console = Console()
    console.print(Markdown(summary_markdown(result)))
    _finish(console, result, out / "results.json")


def _finish(console, result: dict, results_file: Path) -> None:
    """Print a decision validation's targets and results file; exit 1 if its targets were missed."""
    console.print(f"targets: {result['targets']} -> {'passed' if result['passed'] else '[red]missed[/]'}")
    console.print(f"results: {results_file}")
    if not result["passed"]:
        raise typer.Exit(1)
