"""`rrf-audit validate maze2d`: does the extracted reward peak on the expert's hidden goal? (paper Sec. 5.1)

For every maze, seed and goal:

1. data (``rrf.decision.maze2d``): base episodes drive a point mass to uniform random goals, expert
   episodes to one fixed goal (D4RL's waypoint controller, start and goal uniform in free space);
2. planners (``rrf.decision.planner``): a base planner per (maze, seed) trained on the base data; per
   goal an expert planner fine-tuned from the base on the expert data (keeping the base's normaliser);
3. reward (``rrf.decision.extract``): Algorithm 2 between the two planners, then gradient alignment;
4. measures, on data the reward never saw (it is fitted on planner samples only):
   * heatmap: mean reward of the base dataset's reward-horizon windows through each bin of a grid
     over the maze, lightly smoothed over free space (paper Fig. 3);
   * goal recovery: the smoothed heatmap's maximum lies within ``recovery_radius`` (1 cell) of the
     goal, with the paper's interval p +- 1.96 sqrt(p (1 - p) / n);
   * discrimination: logistic regression on the reward of held-out base vs expert windows (planner
     horizon), balanced, fitted on half of the episodes and scored on the other half;
   * Spearman: reward of held-out base windows vs minus their shortest-path distance to the goal.

The reward is read at diffusion step ``read_t`` of T on windows scaled like the mean of x_t given
x_0 (``sqrt(alpha_bar_t) x_0``), the input distribution rho(., t) was fitted on; at t = 0 the target
(the difference of two learned models' last, tiny steps) is mostly model error.

Results land in ``OUT/``: ``results.json``, ``summary.md`` (beside the paper's figures), one
``heatmap.png`` and ``result.json`` per (maze, seed, goal) under ``OUT/<maze>/seed<k>/goal<g>/``. Every
finished piece (base data, planners, rewards, per-goal results) is reused when the command is rerun.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from scipy.stats import spearmanr

from rrf.decision.datasets import Trajectories, WindowDataset, load_d4rl, save_d4rl
from rrf.decision.diffusion import GaussianDiffusion
from rrf.decision.extract import RewardConfig, fit_reward, pair_tuples
from rrf.decision.maze2d import MAZE_NAMES, ControllerConfig, MazeLayout, PointMassSim, generate
from rrf.decision.planner import PlannerConfig, train_planner
from rrf.errors import UserError
from rrf.manifest import provenance, write_json_atomic
from rrf.metrics import separation_accuracy
from rrf.reward import RelativeReward

PAPER = {"goal_recovery": 0.7812, "goal_recovery_ci": 0.0640, "open/umaze": 0.7875, "medium/large": 0.7750,
         "discrimination_mean": 0.8376, "discrimination_median": 0.8449}


@dataclass
class Maze2DConfig:
    mazes: tuple[str, ...] = MAZE_NAMES
    """Layouts to run (open, umaze, medium, large)."""
    goals: int = 8
    """Expert goals per maze, uniform in continuous free space (the same goals for every seed)."""
    seeds: int = 5
    """Independent repetitions of data, planners and rewards per goal."""
    episode_steps: dict = field(default_factory=lambda: {"open": 150, "umaze": 200, "medium": 300, "large": 400})
    """Steps per episode (100 Hz); long enough to reach any goal, after which the controller hovers on it."""
    base_transitions: int = 200_000
    """Base dataset size per (maze, seed)."""
    expert_transitions: int = 50_000
    """Expert dataset size per goal."""
    eval_episodes: int = 200
    """Held-out episodes of each of base and expert for Spearman and discrimination."""
    paper_horizon: int = 256
    """Length of the held-out trajectories to discriminate: the paper's planning horizon, i.e. the
    paper's protocol (held-out episodes are at least this long). Our planner's shorter horizon is
    reported beside it."""
    controller: ControllerConfig = field(default_factory=ControllerConfig)
    planner: PlannerConfig = field(default_factory=lambda: PlannerConfig(prediction_type="sample", lr=1e-3))
    reward: RewardConfig = field(default_factory=lambda: RewardConfig(trajectories=512))
    read_t: tuple[int, ...] = (10, 20, 30)
    """Diffusion steps (of T) at which the reward is read for every measure; their readings are averaged."""
    bins_per_cell: int = 2
    """Heatmap resolution."""
    smoothing: float = 0.5
    """Gaussian smoothing of the heatmap, in cells (normalised over free, visited bins only)."""
    recovery_radius: float = 1.0
    """A goal is recovered if the heatmap maximum is within this many cells (Euclidean) of it."""
    goal_seed: int = 0
    targets: dict = field(default_factory=lambda: {"goal_recovery": 0.78, "discrimination_accuracy": 0.84})
    """Minimum overall values for ``passed`` (the issue's targets for the paper profile)."""
    workers: int = 2
    """Processes running (maze, seed) bases and then (maze, seed, goal) jobs; one torch thread each."""

    @classmethod
    def quick(cls) -> Maze2DConfig:
        """The test-suite profile: UMaze, 2 goals, 1 seed, smaller data and shorter training."""
        return cls(mazes=("umaze",), goals=2, seeds=1, base_transitions=60_000, expert_transitions=20_000,
                   eval_episodes=64, planner=replace(cls().planner, steps=1000, finetune_steps=300),
                   reward=replace(cls().reward, steps=400), targets={"goal_recovery": 0.5, "spearman": 0.3})

    @classmethod
    def paper(cls) -> Maze2DConfig:
        """4 mazes x 8 goals x 5 seeds = 160 reward functions (paper Sec. 5.1)."""
        return cls()

    @classmethod
    def from_options(cls, profile: str, mazes: str | None = None, goals: int | None = None, seeds: int | None = None,
                     workers: int = 2) -> Maze2DConfig:
        """A profile with the CLI's overrides (``mazes`` comma-separated)."""
        profiles = {"quick": cls.quick, "paper": cls.paper}
        if profile not in profiles:
            raise UserError(f"unknown profile {profile!r}; choose quick or paper")
        cfg = replace(profiles[profile](), workers=workers)
        if mazes:
            names = tuple(m.strip() for m in mazes.split(",") if m.strip())
            unknown = [m for m in names if m not in MAZE_NAMES]
            if unknown or not names:
                raise UserError(f"unknown maze(s) {', '.join(unknown) or repr(mazes)}; choose from {','.join(MAZE_NAMES)}")
            cfg = replace(cfg, mazes=names)
        return replace(cfg, goals=goals or cfg.goals, seeds=seeds or cfg.seeds)

    def result_config(self) -> dict:
        """The settings that determine the results (``workers`` does not)."""
        cfg = asdict(self)
        cfg.pop("workers")
        return cfg


# -- seeds and paths ---------------------------------------------------------------------------------------


def derived_seed(*parts: object) -> int:
    """A stable 31-bit seed from names and numbers (``hash()`` is salted per process)."""
    return zlib.crc32(repr(parts).encode()) & 0x7FFFFFFF


def maze_goals(cfg: Maze2DConfig, layout: MazeLayout) -> np.ndarray:
    """(goals, 2): goal i has its own seed, so asking for more goals keeps the first ones."""
    return np.concatenate([layout.sample_free(1, np.random.default_rng(derived_seed("goal", layout.name, cfg.goal_seed, i)))
                           for i in range(cfg.goals)])


def base_dir(out: Path, maze: str, seed: int) -> Path:
    return out / maze / f"seed{seed}"


def goal_dir(out: Path, maze: str, seed: int, goal: int) -> Path:
    return base_dir(out, maze, seed) / f"goal{goal}"


# -- measures -----------------------------------------------------------------------------------------------


@torch.no_grad()
def window_rewards(reward: RelativeReward, planner: GaussianDiffusion, windows: torch.Tensor, steps: tuple[int, ...],
                   batch: int = 8192) -> np.ndarray:
    """Mean over ``steps`` of rho(sqrt(alpha_bar_t) normalize(w), t) / scale_t for raw windows (N, L, D) -> (N,).

    Dividing by the per-step output scale puts every step's reading on the unit scale it was fitted
    at, so no single step dominates the mean.
    """
    total = torch.zeros(len(windows))
    for t in steps:
        tt = torch.full((1,), t)
        scale = reward.output_scale(tt) if reward.output_scale is not None else torch.ones(1)
        x = planner.alphas_cumprod[t].sqrt() * planner.normalize(windows)
        total += torch.cat([reward(chunk, tt.expand(len(chunk))) for chunk in x.split(batch)]) / scale
    return (total / len(steps)).numpy()


def all_windows(data: Trajectories, length: int, stride: int = 1) -> tuple[torch.Tensor, np.ndarray]:
    """Windows (N, L, D) of ``data`` every ``stride`` steps of each episode, and their positions (N, L, 2)."""
    ds = WindowDataset(data, length, batch_size=1, stride=stride)
    steps = ds.starts.numpy()[:, None] + np.arange(length)
    return ds.windows(torch.arange(len(ds))), data.observations[steps, :2]


def layout_bins(layout: MazeLayout, positions: np.ndarray, bins_per_cell: int,
                shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the ``layout.grid(bins_per_cell)`` bin holding each position (..., 2)."""
    xmin, _, ymin, _ = layout.extent
    ix = np.clip(((positions[..., 0] - xmin) * bins_per_cell).astype(int), 0, shape[1] - 1)
    iy = np.clip(((positions[..., 1] - ymin) * bins_per_cell).astype(int), 0, shape[0] - 1)
    return iy, ix


@dataclass
class Heatmap:
    values: np.ndarray  # (ny, nx) smoothed mean reward, NaN where no window passed or on walls
    xs: np.ndarray
    ys: np.ndarray
    free: np.ndarray  # (ny, nx) bool

    @property
    def argmax(self) -> np.ndarray:
        k = np.unravel_index(np.nanargmax(self.values), self.values.shape)
        return np.array([self.xs[k[1]], self.ys[k[0]]])


def heatmap(layout: MazeLayout, positions: np.ndarray, rewards: np.ndarray, bins_per_cell: int,
            smoothing: float) -> Heatmap:
    """Mean reward of the windows through each bin (a window counts once per step in the bin), smoothed.

    Smoothing is a normalised convolution over visited free bins, so walls and empty bins neither
    pull values toward zero nor leak across walls' far sides more than ``smoothing`` cells.
    """
    xs, ys, free = layout.grid(bins_per_cell)
    ny, nx = free.shape
    iy, ix = (a.ravel() for a in layout_bins(layout, positions, bins_per_cell, free.shape))
    per_step = np.repeat(rewards, positions.shape[1])
    total, count = np.zeros((ny, nx)), np.zeros((ny, nx))
    np.add.at(total, (iy, ix), per_step)
    np.add.at(count, (iy, ix), 1.0)
    seen = (count > 0) & free
    mean = np.where(seen, total / np.maximum(count, 1), 0.0)
    sigma = smoothing * bins_per_cell
    num, den = gaussian_filter(mean * seen, sigma), gaussian_filter(seen.astype(float), sigma)
    return Heatmap(np.where(seen, num / np.maximum(den, 1e-12), np.nan), xs, ys, free)


def recovery_interval(successes: int, n: int) -> tuple[float, float]:
    """The paper's normal-approximation interval p +- 1.96 sqrt(p (1 - p) / n); returns (p, half width)."""
    p = successes / n
    return p, 1.96 * math.sqrt(p * (1 - p) / n)


def evaluate_goal(layout: MazeLayout, goal: np.ndarray, reward: RelativeReward, planner: GaussianDiffusion,
                  base_data: Trajectories, base_eval: Trajectories, expert_eval: Trajectories,
                  cfg: Maze2DConfig) -> tuple[dict, Heatmap]:
    window = reward.net.config.get("horizon", 1)
    windows, positions = all_windows(base_data, window)
    hm = heatmap(layout, positions, window_rewards(reward, planner, windows, cfg.read_t), cfg.bins_per_cell,
                 cfg.smoothing)
    peak = hm.argmax
    distance = float(np.linalg.norm(peak - goal))
    visited = ~np.isnan(hm.values)
    gx, gy = np.meshgrid(hm.xs, hm.ys, indexing="xy")
    chance = float((np.hypot(gx - goal[0], gy - goal[1])[visited] <= cfg.recovery_radius).mean())

    # Spearman on held-out base windows vs minus the shortest-path distance to the goal: per bin of the
    # (unsmoothed) heatmap they make, and per window (noisier: a window moving away from the goal
    # scores low even next to it).
    geo = layout.geodesic_distance(goal, cfg.bins_per_cell)
    ew, epos = all_windows(base_eval, window)
    held_out = window_rewards(reward, planner, ew, cfg.read_t)
    bins = heatmap(layout, epos, held_out, cfg.bins_per_cell, smoothing=0.0).values
    ok = ~np.isnan(bins) & np.isfinite(geo)
    rho_bins = spearmanr(bins[ok], -geo[ok]).statistic
    iy, ix = layout_bins(layout, epos.mean(axis=1), cfg.bins_per_cell, geo.shape)
    dist = geo[iy, ix]
    ok = np.isfinite(dist)
    rho_windows = spearmanr(held_out[ok], -dist[ok]).statistic

    # Discrimination on held-out trajectories of the paper's planning horizon (and of ours): episodes
    # split in halves, a logistic regression fitted on one half and scored on the other.
    def accuracy(length: int) -> float:
        def scores(data: Trajectories) -> list[np.ndarray]:
            halves = np.array_split(np.arange(len(data.episode_lengths)), 2)
            return [window_rewards(reward, planner, all_windows(data.select_episodes(h), length, stride=length)[0],
                                   cfg.read_t) for h in halves]

        (b_fit, b_test), (e_fit, e_test) = scores(base_eval), scores(expert_eval)
        n_fit, n_test = min(len(b_fit), len(e_fit)), min(len(b_test), len(e_test))
        return separation_accuracy(np.r_[b_fit[:n_fit], e_fit[:n_fit]], np.r_[np.zeros(n_fit), np.ones(n_fit)],
                                   np.r_[b_test[:n_test], e_test[:n_test]], np.r_[np.zeros(n_test), np.ones(n_test)])

    result = {
        "goal": goal.tolist(), "peak": peak.tolist(), "peak_distance": distance,
        "recovered": bool(distance <= cfg.recovery_radius), "chance_recovery": chance,
        "discrimination_accuracy": accuracy(cfg.paper_horizon),
        "discrimination_accuracy_planner_horizon": accuracy(planner.horizon), "spearman": float(rho_bins),
        "spearman_windows": float(rho_windows),
    }
    return result, hm


def plot_heatmap(path: Path, layout: MazeLayout, hm: Heatmap, goal: np.ndarray, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    xmin, xmax, ymin, ymax = layout.extent
    fig, ax = plt.subplots(figsize=(0.55 * (xmax - xmin) + 1.6, 0.55 * (ymax - ymin) + 0.6))
    im = ax.imshow(hm.values, origin="lower", extent=(xmin, xmax, ymin, ymax), cmap="viridis")
    walls = np.flipud(layout.walls).astype(float)  # row 0 of the layout is the top
    ax.imshow(np.where(walls > 0, 1.0, np.nan), origin="lower", extent=(xmin, xmax, ymin, ymax),
              cmap=ListedColormap(["#5a4632"]), vmin=0, vmax=1)
    ax.plot(*goal, marker="*", markersize=18, color="red", markeredgecolor="white", linestyle="none", label="true goal")
    ax.plot(*hm.argmax, marker="X", markersize=11, color="white", markeredgecolor="black", linestyle="none",
            label="heatmap maximum")
    ax.add_patch(plt.Circle(goal, 1.0, fill=False, color="red", linestyle="--", linewidth=1))
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=2, fontsize=7, frameon=False)
    fig.colorbar(im, ax=ax, fraction=0.04, label="reward")
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


# -- jobs (run in worker processes) ----------------------------------------------------------------------------


def _episodes(cfg: Maze2DConfig, maze: str, transitions: int) -> int:
    return max(2, transitions // cfg.episode_steps[maze])


def load_or_generate(path: Path, make) -> Trajectories:
    """The dataset cached at ``path`` (D4RL format), generating and writing it first if needed."""
    if path.is_file():
        return load_d4rl(path)
    data = make()
    save_d4rl(path, data, attrs={"generator": "rrf.decision.maze2d.generate"})
    return data


def base_job(out: Path, cfg: Maze2DConfig, maze: str, seed: int) -> dict:
    """Base data and base planner of one (maze, seed); returns its timing (cached in ``base.json``)."""
    d = base_dir(out, maze, seed)
    if (d / "base.json").is_file() and (d / "base.hdf5").is_file() and (d / "base-planner" / "model").is_dir():
        return json.loads((d / "base.json").read_text())
    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    layout = MazeLayout.named(maze)
    data = load_or_generate(d / "base.hdf5", lambda: generate(
        layout, _episodes(cfg, maze, cfg.base_transitions), cfg.episode_steps[maze], derived_seed("base", maze, seed),
        controller=cfg.controller))
    train_planner(data, cfg.planner, d / "base-planner", seed=derived_seed("base-planner", maze, seed))
    timing = {"maze": maze, "seed": seed, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu}
    write_json_atomic(d / "base.json", timing)
    return timing


def goal_job(out: Path, cfg: Maze2DConfig, maze: str, seed: int, goal_index: int) -> dict:
    """Expert, reward and measures of one (maze, seed, goal); cached in its ``result.json``."""
    d = goal_dir(out, maze, seed, goal_index)
    if (d / "result.json").is_file():
        return json.loads((d / "result.json").read_text())
    torch.set_num_threads(1)
    start, cpu = time.perf_counter(), time.process_time()
    layout = MazeLayout.named(maze)
    goal = maze_goals(cfg, layout)[goal_index]
    sim = PointMassSim(layout)
    steps = cfg.episode_steps[maze]
    base_data = load_d4rl(base_dir(out, maze, seed) / "base.hdf5")
    base = GaussianDiffusion.from_pretrained(base_dir(out, maze, seed) / "base-planner" / "model")
    expert_data = generate(layout, _episodes(cfg, maze, cfg.expert_transitions), steps,
                           derived_seed("expert", maze, seed, goal_index), goal=goal, controller=cfg.controller, sim=sim)
    expert = train_planner(expert_data, cfg.planner, d / "expert-planner", init=base,
                           seed=derived_seed("expert-planner", maze, seed, goal_index))
    tuples = pair_tuples(base, expert, cfg.reward.trajectories, seed=derived_seed("algorithm2", maze, seed, goal_index))
    reward = fit_reward(tuples, cfg.reward, d / "reward", seed=derived_seed("reward", maze, seed, goal_index))
    eval_steps = max(steps, cfg.paper_horizon)
    base_eval = generate(layout, cfg.eval_episodes, eval_steps, derived_seed("base-eval", maze, seed, goal_index),
                         controller=cfg.controller, sim=sim)
    expert_eval = generate(layout, cfg.eval_episodes, eval_steps, derived_seed("expert-eval", maze, seed, goal_index),
                           goal=goal, controller=cfg.controller, sim=sim)
    result, hm = evaluate_goal(layout, goal, reward, base, base_data, base_eval, expert_eval, cfg)
    result.update(maze=maze, seed=seed, goal_index=goal_index, seconds=time.perf_counter() - start,
                  cpu_seconds=time.process_time() - cpu)
    title = (f"{maze} seed {seed} goal {goal_index}: {'recovered' if result['recovered'] else 'missed'} "
             f"(peak {result['peak_distance']:.2f} cells from goal)")
    plot_heatmap(d / "heatmap.png", layout, hm, goal, title)
    result["heatmap"] = str((d / "heatmap.png").relative_to(out))
    write_json_atomic(d / "result.json", result)
    return result


# -- the run --------------------------------------------------------------------------------------------------


def summarize(trials: list[dict], cfg: Maze2DConfig) -> dict:
    def block(rows: list[dict]) -> dict:
        p, half = recovery_interval(sum(r["recovered"] for r in rows), len(rows))
        acc = np.array([r["discrimination_accuracy"] for r in rows])
        return {"n": len(rows), "goal_recovery": p, "goal_recovery_ci": [p - half, p + half],
                "goal_recovery_pm": half, "chance_recovery": float(np.mean([r["chance_recovery"] for r in rows])),
                "discrimination_accuracy": float(acc.mean()), "discrimination_median": float(np.median(acc)),
                "discrimination_range": [float(acc.min()), float(acc.max())],
                "discrimination_accuracy_planner_horizon":
                    float(np.mean([r["discrimination_accuracy_planner_horizon"] for r in rows])),
                "spearman": float(np.mean([r["spearman"] for r in rows]))}

    overall = block(trials)
    groups = {name: [r for r in trials if r["maze"] in members]
              for name, members in (("open/umaze", ("open", "umaze")), ("medium/large", ("medium", "large")))}
    return {
        **overall,
        "per_maze": {m: block([r for r in trials if r["maze"] == m]) for m in cfg.mazes},
        "groups": {name: block(rows) for name, rows in groups.items() if rows},
        "paper": PAPER,
        "trials": sorted(trials, key=lambda r: (MAZE_NAMES.index(r["maze"]), r["seed"], r["goal_index"])),
    }


def summary_markdown(results: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = ["| | goal recovery | chance | discrimination, 256 steps (mean / median) | discrimination, planner "
             "horizon | Spearman | n |", "|---|---|---|---|---|---|---|"]
    rows = [("all", results)] + list(results["groups"].items()) + list(results["per_maze"].items())
    for name, b in rows:
        lines.append(f"| {name} | {pct(b['goal_recovery'])} ± {pct(b['goal_recovery_pm'])} | {pct(b['chance_recovery'])} "
                     f"| {pct(b['discrimination_accuracy'])} / {pct(b['discrimination_median'])} "
                     f"| {pct(b['discrimination_accuracy_planner_horizon'])} | {b['spearman']:.3f} | {b['n']} |")
    p = results["paper"]
    lines.append(f"| paper (160 rewards) | {pct(p['goal_recovery'])} ± {pct(p['goal_recovery_ci'])} "
                 f"(open/umaze {pct(p['open/umaze'])}, medium/large {pct(p['medium/large'])}) | - "
                 f"| {pct(p['discrimination_mean'])} / {pct(p['discrimination_median'])} | - | - | 160 |")
    return "\n".join(lines) + "\n"


def run(out: str | Path, cfg: Maze2DConfig, progress: bool = True) -> dict:
    """Run (or resume) every (maze, seed, goal) and write ``results.json`` and ``summary.md``."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    out = Path(out)
    start = time.perf_counter()
    bases = [(m, s) for m in cfg.mazes for s in range(cfg.seeds)]
    goals = [(m, s, g) for m, s in bases for g in range(cfg.goals)]
    # A base whose goals all have results is not needed again (results copied from another machine resume
    # without their bulky base data); its recorded timing still counts in the compute totals.
    pending = {(m, s) for m, s, g in goals if not (goal_dir(out, m, s, g) / "result.json").is_file()}
    bases_timing = [json.loads((base_dir(out, m, s) / "base.json").read_text()) for m, s in bases
                    if (m, s) not in pending and (base_dir(out, m, s) / "base.json").is_file()]
    trials = []
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn(), TextColumn("{task.fields[info]}"))
    # spawn, not fork: a forked child of a process that already ran torch ops can hang in OpenMP.
    pool = ProcessPoolExecutor(max(1, cfg.workers), mp_context=multiprocessing.get_context("spawn"))
    try:
        with Progress(*columns, disable=not progress) as bar, pool:
            task = bar.add_task("base planners", total=len(pending), info="")
            for future in as_completed([pool.submit(base_job, out, cfg, m, s) for m, s in bases if (m, s) in pending]):
                bases_timing.append(future.result())
                bar.advance(task)
            task = bar.add_task("rewards", total=len(goals), info="")
            for future in as_completed([pool.submit(goal_job, out, cfg, m, s, g) for m, s, g in goals]):
                trials.append(future.result())
                done = sum(r["recovered"] for r in trials)
                bar.update(task, advance=1, info=f"recovered {done}/{len(trials)}")
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)
        raise UserError(f"interrupted; finished pieces are kept in {out}, rerun the same command to resume") from None
    results = summarize(trials, cfg)
    missed = {k: v for k, v in cfg.targets.items() if results[k] < v}
    # CPU seconds of the single-threaded jobs measure the compute whatever else shares the machine.
    compute = {"base_cpu_seconds": sum(b["cpu_seconds"] for b in bases_timing),
               "goal_cpu_seconds": sum(r["cpu_seconds"] for r in trials), "workers": cfg.workers}
    results.update(targets=cfg.targets, passed=not missed, config=cfg.result_config(), compute=compute,
                   provenance=provenance(), seconds=time.perf_counter() - start)
    write_json_atomic(out / "results.json", results)
    (out / "summary.md").write_text(summary_markdown(results))
    return results


__all__ = ["Maze2DConfig", "run", "summarize", "summary_markdown"]
