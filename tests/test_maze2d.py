"""Maze2D environment pieces: layouts, the batched simulator (parity with gymnasium), the data procedure."""

import gymnasium as gym
import numpy as np
import pytest

from rrf.decision.datasets import load_d4rl, save_d4rl
from rrf.decision.maze2d import (
    BALL_RADIUS,
    MAZE_NAMES,
    ControllerConfig,
    MazeLayout,
    PointMassSim,
    generate,
    waypoint_actions,
)
from rrf.errors import UserError


@pytest.mark.parametrize("name,shape,free", [("open", (5, 7), 15), ("umaze", (5, 5), 7), ("medium", (8, 8), 26),
                                             ("large", (9, 12), 46)])
def test_layouts_are_the_d4rl_mazes(name, shape, free):
    layout = MazeLayout.named(name)
    assert layout.shape == shape and len(layout.free_cells) == free
    centres = layout.cell_center(layout.free_cells)
    assert np.array_equal(layout.cell_of(centres), layout.free_cells)


def test_unknown_maze_is_a_user_error():
    with pytest.raises(UserError, match="open, umaze, medium, large"):
        MazeLayout.named("huge")


@pytest.mark.parametrize("name", MAZE_NAMES)
def test_free_space_samples_are_uniform_and_clear_of_walls(name):
    layout = MazeLayout.named(name)
    xy = layout.sample_free(4000, np.random.default_rng(0))
    assert (layout.wall_distance(xy) >= BALL_RADIUS).all()
    ij = layout.cell_of(xy)
    assert not layout.walls[ij[:, 0], ij[:, 1]].any()
    counts = np.bincount(layout.free_index(xy), minlength=len(layout.free_cells))
    # Cells with fewer wall neighbours have more usable area, but none is starved or favoured much.
    assert counts.min() > 0.6 * counts.mean() and counts.max() < 1.4 * counts.mean()


@pytest.mark.parametrize("name", MAZE_NAMES)
def test_next_cell_table_walks_every_pair_to_its_goal(name):
    layout = MazeLayout.named(name)
    nxt, n = layout.next_cell, len(layout.free_cells)
    for a in range(n):
        for b in range(n):
            k, hops = a, 0
            while k != b:
                step = layout.free_cells[nxt[k, b]] - layout.free_cells[k]
                assert np.abs(step).sum() == 1  # moves to a 4-neighbour
                k, hops = nxt[k, b], hops + 1
                assert hops <= n


def test_geodesic_distance_goes_around_walls():
    layout = MazeLayout.named("umaze")
    top_left, bottom_left = layout.cell_center(np.array([1, 1])), layout.cell_center(np.array([3, 1]))
    geo = layout.geodesic_distance(top_left, bins_per_cell=4)
    xs, ys, free = layout.grid(4)
    j, i = np.abs(xs - bottom_left[0]).argmin(), np.abs(ys - bottom_left[1]).argmin()
    # Two cells apart in a straight line; around the wall block the shortest path passes its two
    # corners: 2 * sqrt(1.5^2 + 0.5^2) + 1 = 4.16 (a bit more on the grid of bin centres).
    assert np.linalg.norm(top_left - bottom_left) == pytest.approx(2.0)
    assert 4.16 <= geo[i, j] < 5.2
    assert np.isinf(geo[~free]).all() and geo[free].min() < 0.2


def test_batched_simulator_matches_gymnasium_pointmaze_step_for_step():
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)
    layout = MazeLayout.named("umaze")
    sim = PointMassSim(layout)
    env = gym.make("PointMaze_UMaze-v3", continuing_task=True, max_episode_steps=10**6)
    obs = env.reset(seed=0)[0]["observation"]
    rng = np.random.default_rng(0)
    goal = layout.sample_free(1, rng)
    for _ in range(300):  # drives into walls too: contacts must match as well
        act = waypoint_actions(layout, obs[None], goal, ControllerConfig())[0] + 0.8 * rng.standard_normal(2)
        expected = env.step(act)[0]["observation"]
        np.testing.assert_allclose(sim.step(obs[None], act[None])[0], expected, atol=1e-9)
        obs = expected


def test_controller_reaches_every_goal_and_hovers_there(tmp_path):
    layout = MazeLayout.named("medium")
    data = generate(layout, episodes=64, episode_steps=300, seed=0)
    pos = data.observations[:, :2].reshape(64, 300, 2)
    goals = data.goals.reshape(64, 300, 2)[:, 0]
    dist = np.linalg.norm(pos - goals[:, None], axis=-1)
    assert (dist[:, -50:] < 0.3).all(axis=1).mean() > 0.95
    assert len(np.unique(goals, axis=0)) == 64  # the base data: one random goal per episode
    assert (np.abs(data.actions) <= 1).all() and (layout.wall_distance(data.observations[:, :2]) > 0.09).all()

    fixed = generate(layout, episodes=8, episode_steps=300, seed=1, goal=np.array([0.3, -0.2]))
    assert np.allclose(fixed.goals, [0.3, -0.2])
    again = generate(layout, episodes=64, episode_steps=300, seed=0)
    assert np.array_equal(again.observations, data.observations)  # same seed, same bytes

    save_d4rl(tmp_path / "base.hdf5", data)
    assert np.array_equal(load_d4rl(tmp_path / "base.hdf5").goals, data.goals)
