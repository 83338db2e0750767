"""`rrf-audit validate maze2d --profile quick`, end to end: UMaze, 2 goals, 1 seed (about 3 minutes on one core)."""

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from rrf.decision.maze2d import MazeLayout
from rrf.decision.validate_maze2d import Maze2DConfig, heatmap, recovery_interval
from rrf.errors import UserError


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_quick_profile_recovers_a_goal_and_resumes(tmp_path):
    out = tmp_path / "maze"
    # One worker process: the suite's other pytest worker has the second core (results do not depend on it).
    proc = run_cli("validate", "maze2d", "--profile", "quick", "--workers", "1", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads((out / "results.json").read_text())
    for key in ("goal_recovery", "goal_recovery_ci", "discrimination_accuracy", "per_maze", "spearman", "trials"):
        assert key in result
    trials = result["trials"]
    assert [(t["maze"], t["seed"], t["goal_index"]) for t in trials] == [("umaze", 0, 0), ("umaze", 0, 1)]
    # The targets for this profile, measured on data the reward never saw (it is fitted on planner samples).
    assert all(t["spearman"] >= 0.3 for t in trials), trials
    assert any(t["peak_distance"] <= 1.0 for t in trials), trials
    assert result["per_maze"]["umaze"]["n"] == 2 and result["passed"] is True
    assert result["discrimination_accuracy"] > 0.6
    lo, hi = result["goal_recovery_ci"]
    assert lo <= result["goal_recovery"] <= hi
    for t in trials:
        assert (out / t["heatmap"]).stat().st_size > 5_000
    assert "paper (160 rewards)" in (out / "summary.md").read_text()

    # Rerunning reuses every finished piece; other settings in the same directory are refused in one line.
    again = run_cli("validate", "maze2d", "--profile", "quick", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["trials"] == trials
    # Results alone resume (as when copied from another machine): finished bases are not rebuilt.
    base = out / "umaze" / "seed0"
    (base / "base.hdf5").unlink()
    shutil.rmtree(base / "base-planner")
    again = run_cli("validate", "maze2d", "--profile", "quick", "--out", str(out))
    assert again.returncode == 0, again.stderr
    assert json.loads((out / "results.json").read_text())["trials"] == trials
    assert not (base / "base.hdf5").exists()
    clash = run_cli("validate", "maze2d", "--profile", "quick", "--goals", "3", "--out", str(out))
    assert clash.returncode == 2
    assert clash.stderr.count("\n") == 1 and "different settings" in clash.stderr and "Traceback" not in clash.stderr


def test_bad_options_are_one_line_errors(tmp_path):
    proc = run_cli("validate", "maze2d", "--mazes", "umaze,huge", "--out", str(tmp_path / "x"))
    assert proc.returncode == 2 and "unknown maze(s) huge" in proc.stderr and proc.stderr.count("\n") == 1
    with pytest.raises(UserError, match="choose quick or paper"):
        Maze2DConfig.from_options("fast")
    cfg = Maze2DConfig.from_options("paper", mazes="large, open", goals=3, seeds=2, workers=1)
    assert cfg.mazes == ("large", "open") and (cfg.goals, cfg.seeds, cfg.workers) == (3, 2, 1)


def test_heatmap_averages_per_bin_and_smooths_only_over_free_space():
    layout = MazeLayout.named("umaze")
    # Two windows of two steps: one in the top-left cell (reward 1), one in the bottom-left cell (reward 3).
    positions = np.array([[[-1.1, 1.1], [-0.9, 0.9]], [[-1.0, -1.0], [-1.0, -1.0]]])
    hm = heatmap(layout, positions, np.array([1.0, 3.0]), bins_per_cell=2, smoothing=0.0)
    visited = ~np.isnan(hm.values)
    assert visited.sum() == 3 and sorted(hm.values[visited].tolist()) == [1.0, 1.0, 3.0]
    assert np.allclose(hm.argmax, [-0.75, -0.75])
    smooth = heatmap(layout, positions, np.array([1.0, 3.0]), bins_per_cell=2, smoothing=0.5)
    # Smoothing mixes neighbours but keeps values within the range of the data (a weighted mean).
    assert np.nanmin(smooth.values) >= 1.0 and np.nanmax(smooth.values) <= 3.0


def test_recovery_interval_is_the_papers_normal_interval():
    p, half = recovery_interval(125, 160)
    assert p == pytest.approx(0.78125) and half == pytest.approx(0.0640, abs=5e-4)  # the paper's 78.12% +- 6.40%
