"""End to end: `rrf-audit validate locomotion --profile quick` (HalfCheetah, small models, a few minutes).

From nothing (its own ARS policy and datasets in a temporary cache) to results.json: both planners
pass the gate, the extracted reward ranks held-out episodes by their true return (Spearman >= 0.5)
and reward guidance raises the planner's true return over 48 closed-loop steps from held-out
states (paired with the unguided planner's). A rerun resumes from the finished
stages, and the same directory refuses different settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("locomotion")
    args = ("validate", "locomotion", "--profile", "quick", "--out", str(root / "out"), "--cache", str(root / "cache"))
    start = time.perf_counter()
    proc = _cli(*args, cwd=root)
    return root, args, proc, time.perf_counter() - start


def test_quick_profile_meets_its_targets(quick_run):
    root, _, proc, seconds = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((root / "out" / "results.json").read_text())
    assert results["passed"] and results["profile"] == "quick"
    r = results["envs"]["halfcheetah"]
    for key in ("unsteered", "discriminator", "reward"):
        assert r[key]["episodes"] == 16 and r[key]["score_se"] > 0
    assert 0.0 <= r["p_value"] <= 1.0
    # The behaviour-cloning gate: each planner reproduces its own dataset closed-loop.
    assert r["gate"]["base"]["passed"] and r["gate"]["expert"]["passed"]
    assert r["gate"]["expert"]["return_mean"] > r["gate"]["base"]["return_mean"]
    # The reward ranks held-out episodes (never trained on) by true return.
    assert r["checks"]["reward"]["spearman"] >= 0.5
    assert r["checks"]["reward"]["episodes"]["probe"] == 32
    # Guidance raises the true return of the planner, run in the simulator from held-out states.
    plans = r["checks"]["plans"]
    assert plans["steps"] == 48 and plans["plans"] == 128
    assert plans["return_reward"] > plans["return_unguided"] and plans["p_value_reward"] < 0.05
    # The oracle (the exact target the reward is fitted to) is measured beside it, and so is the fit on
    # fresh Algorithm-2 tuples: 32 trajectories per follower, 20 steps each.
    assert plans["guides"] == ["discriminator", "oracle", "reward"] and plans["p_value_oracle"] <= 1.0
    fit = r["checks"]["reward_fit_held_out"]
    assert fit["tuples"] == 2 * 32 * 20 and len(fit["cosine_by_t"]) == 20
    assert fit["cosine"] > 0.5 and fit["explained"] > 0.5  # measured: 0.69 and 0.68
    assert plans["gain_oracle"] > 0  # the quick expert is the better planner, so its direction helps
    print(f"held-out fit: cosine {fit['cosine']:.3f}, explained {fit['explained']:.3f}; plan gains: reward "
          f"{plans['gain_reward']:.2f}, oracle {plans['gain_oracle']:.2f}")
    assert (root / "out" / "halfcheetah" / "returns.png").stat().st_size > 10_000
    table = (root / "out" / "table.md").read_text()
    assert "halfcheetah" in table and "30.38" in table  # beside the paper's Table 1
    assert "Spearman" in proc.stdout and "gate base" in proc.stdout
    print(f"quick profile: {seconds:.0f} s")


def test_rerun_resumes_and_other_settings_are_refused(quick_run):
    root, args, first, _ = quick_run
    assert first.returncode == 0
    before = (root / "out" / "results.json").read_text()
    start = time.perf_counter()
    again = _cli(*args, cwd=root)
    assert again.returncode == 0 and time.perf_counter() - start < 60  # every stage is cached
    assert json.loads((root / "out" / "results.json").read_text())["envs"] == json.loads(before)["envs"]
    other = _cli(*args, "--seed", "1", cwd=root)
    assert other.returncode == 2 and "different settings" in other.stderr and "Traceback" not in other.stderr


def test_bad_options_are_one_line_errors(tmp_path):
    proc = _cli("validate", "locomotion", "--profile", "quick", "--envs", "ant", "--out", str(tmp_path / "o"),
                cwd=tmp_path)
    assert proc.returncode == 2 and "unknown locomotion environment 'ant'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
