"""Maze2D: the D4RL point-mass mazes (gymnasium-robotics PointMaze layouts) and their data procedure.

* ``MazeLayout``: one of the four D4RL layouts (open, umaze, medium, large) as a wall grid, in the
  coordinates of gymnasium-robotics PointMaze (cell size 1, maze centred on the origin, row 0 at
  the top), with cell look-ups, uniform sampling of continuous free space, the BFS next-cell table of
  the waypoint controller and geodesic distances.
* ``PointMassSim``: the PointMaze MuJoCo model (walls built by gymnasium-robotics' ``Maze.make_maze``,
  physics of its ``point.xml``) stepped for a whole batch of point masses per call with
  ``mujoco.rollout``; it reproduces ``PointEnv.step`` (action clip to [-1, 1], velocity clip to
  [-5, 5] before the step), without one Python call per environment.
* ``generate``: D4RL's maze2d procedure: a PD controller drives the ball through the BFS waypoints
  (cell centres) to its goal, with Gaussian action noise, and keeps hovering on the goal once there.
  Start and goal are uniform in continuous free space (the paper's change to D4RL); the base data
  draws a goal per episode, an expert's data uses one fixed goal.
"""

from __future__ import annotations

import contextlib
import io
import os
from collections import deque
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from rrf.decision.datasets import Trajectories
from rrf.errors import UserError

MAZE_NAMES = ("open", "umaze", "medium", "large")
BALL_RADIUS = 0.1  # point.xml's particle geom; the ball's centre never gets closer to a wall than this


def _robotics():
    """``gymnasium_robotics``, imported without the notice it prints to stderr (about Adroit reward versions)."""
    with contextlib.redirect_stderr(io.StringIO()):
        import gymnasium_robotics
    return gymnasium_robotics


def _maps() -> dict[str, list[list]]:
    _robotics()
    from gymnasium_robotics.envs.maze import maps

    return {"open": maps.OPEN, "umaze": maps.U_MAZE, "medium": maps.MEDIUM_MAZE, "large": maps.LARGE_MAZE}


@dataclass(frozen=True)
class MazeLayout:
    """A wall grid (``walls[i, j]`` True for a wall; row 0 is the top) with cell size 1."""

    name: str
    walls: np.ndarray  # (rows, cols) bool

    @classmethod
    def named(cls, name: str) -> MazeLayout:
        maps = _maps()
        if name not in maps:
            raise UserError(f"unknown maze {name!r}; choose from {', '.join(MAZE_NAMES)}")
        grid = np.array([[cell == 1 for cell in row] for row in maps[name]], dtype=bool)
        return cls(name, grid)

    @property
    def shape(self) -> tuple[int, int]:
        return self.walls.shape

    @property
    def extent(self) -> tuple[float, float, float, float]:
        """(xmin, xmax, ymin, ymax) of the whole grid, walls included."""
        rows, cols = self.shape
        return -cols / 2, cols / 2, -rows / 2, rows / 2

    def cell_center(self, ij: np.ndarray) -> np.ndarray:
        """Cell indices (..., 2) as (row, col) -> centre (x, y), gymnasium-robotics' ``cell_rowcol_to_xy``."""
        rows, cols = self.shape
        ij = np.asarray(ij)
        return np.stack([ij[..., 1] + 0.5 - cols / 2, rows / 2 - ij[..., 0] - 0.5], axis=-1)

    def cell_of(self, xy: np.ndarray) -> np.ndarray:
        """Positions (..., 2) -> (row, col) of the cell they lie in, clipped to the grid."""
        rows, cols = self.shape
        xy = np.asarray(xy)
        i = np.clip(np.floor(rows / 2 - xy[..., 1]).astype(int), 0, rows - 1)
        j = np.clip(np.floor(xy[..., 0] + cols / 2).astype(int), 0, cols - 1)
        return np.stack([i, j], axis=-1)

    @cached_property
    def free_cells(self) -> np.ndarray:
        """(F, 2) (row, col) of the free cells in row-major order."""
        return np.argwhere(~self.walls)

    @cached_property
    def _free_index(self) -> np.ndarray:
        """(rows, cols) -> index into ``free_cells``; a wall cell maps to its nearest free cell."""
        centers = self.cell_center(self.free_cells)
        all_cells = np.argwhere(np.ones(self.shape, dtype=bool))
        d = np.linalg.norm(self.cell_center(all_cells)[:, None] - centers[None], axis=-1)
        index = d.argmin(axis=1).reshape(self.shape)
        index[~self.walls] = np.arange(len(self.free_cells))
        return index

    def free_index(self, xy: np.ndarray) -> np.ndarray:
        ij = self.cell_of(xy)
        return self._free_index[ij[..., 0], ij[..., 1]]

    @cached_property
    def next_cell(self) -> np.ndarray:
        """(F, F): the free cell to enter next on a shortest 4-connected path from cell a to cell b."""
        n = len(self.free_cells)
        table = np.tile(np.arange(n), (n, 1))  # a == b: stay
        for b in range(n):
            # BFS from the goal b; a cell's successor toward b is the neighbour it was reached from.
            for a, parent in self._bfs_parents(b).items():
                table[a, b] = parent
        return table

    def _neighbours(self, k: int) -> list[int]:
        i, j = self.free_cells[k]
        out = []
        for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
            ni, nj = i + di, j + dj
            if 0 <= ni < self.shape[0] and 0 <= nj < self.shape[1] and not self.walls[ni, nj]:
                out.append(int(self._free_index[ni, nj]))
        return out

    def _bfs_parents(self, source: int) -> dict[int, int]:
        parents, queue = {source: source}, deque([source])
        while queue:
            k = queue.popleft()
            for nb in self._neighbours(k):
                if nb not in parents:
                    parents[nb] = k
                    queue.append(nb)
        return parents

    def wall_distance(self, xy: np.ndarray) -> np.ndarray:
        """Distance from positions (N, 2) to the nearest wall box among the 3x3 surrounding cells."""
        ij = self.cell_of(xy)
        best = np.full(len(xy), np.inf)
        for di in (-1, 0, 1):
            for dj in (-1, 0, 1):
                ni = np.clip(ij[:, 0] + di, 0, self.shape[0] - 1)
                nj = np.clip(ij[:, 1] + dj, 0, self.shape[1] - 1)
                lo = self.cell_center(np.stack([ni, nj], axis=-1)) - 0.5
                gap = np.maximum(np.maximum(lo - xy, xy - (lo + 1.0)), 0.0)
                d = np.where(self.walls[ni, nj], np.linalg.norm(gap, axis=-1), np.inf)
                best = np.minimum(best, d)
        return best

    def sample_free(self, n: int, rng: np.random.Generator, margin: float = BALL_RADIUS) -> np.ndarray:
        """``n`` positions uniform over the free space (the ball's centre keeps ``margin`` from walls)."""
        out = np.empty((0, 2))
        while len(out) < n:
            cells = self.free_cells[rng.integers(len(self.free_cells), size=2 * (n - len(out)) + 8)]
            xy = self.cell_center(cells) + rng.uniform(-0.5, 0.5, size=(len(cells), 2))
            out = np.concatenate([out, xy[self.wall_distance(xy) >= margin]])
        return out[:n]

    def grid(self, bins_per_cell: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bin centres ``(xs, ys)`` of a regular grid over the maze and its (ny, nx) free mask.

        ``ys`` grow upward (row 0 of the returned arrays is the bottom), as ``imshow(origin="lower")`` expects.
        """
        xmin, xmax, ymin, ymax = self.extent
        nx, ny = int(round((xmax - xmin) * bins_per_cell)), int(round((ymax - ymin) * bins_per_cell))
        xs = xmin + (np.arange(nx) + 0.5) / bins_per_cell
        ys = ymin + (np.arange(ny) + 0.5) / bins_per_cell
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        ij = self.cell_of(np.stack([gx, gy], axis=-1))
        return xs, ys, ~self.walls[ij[..., 0], ij[..., 1]]

    def geodesic_distance(self, goal: np.ndarray, bins_per_cell: int = 4) -> np.ndarray:
        """(ny, nx) shortest-path distance from ``goal`` to every free bin centre (inf on walls)."""
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import dijkstra

        xs, ys, free = self.grid(bins_per_cell)
        ny, nx = free.shape
        ids = np.arange(ny * nx).reshape(ny, nx)
        rows, cols, weights = [], [], []
        for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
            a = free[max(0, -dy): ny - max(0, dy), max(0, -dx): nx - max(0, dx)]
            b = free[max(0, dy): ny - max(0, -dy) or None, max(0, dx): nx - max(0, -dx) or None]
            ok = a & b
            src = ids[max(0, -dy): ny - max(0, dy), max(0, -dx): nx - max(0, dx)][ok]
            dst = ids[max(0, dy): ny - max(0, -dy) or None, max(0, dx): nx - max(0, -dx) or None][ok]
            rows += [src, dst]
            cols += [dst, src]
            weights += [np.full(2 * len(src), np.hypot(dx, dy) / bins_per_cell)]
        graph = coo_matrix((np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))),
                           shape=(ny * nx, ny * nx)).tocsr()
        gx, gy = np.meshgrid(xs, ys, indexing="xy")
        d_goal = np.hypot(gx - goal[0], gy - goal[1])
        source = int(np.where(free, d_goal, np.inf).argmin())
        dist = dijkstra(graph, indices=source).reshape(ny, nx) + d_goal.flat[source]
        return np.where(free, dist, np.inf)


class PointMassSim:
    """A batch of PointMaze balls in one layout, stepped together with ``mujoco.rollout`` (one thread)."""

    def __init__(self, layout: MazeLayout):
        import mujoco
        from mujoco import rollout

        robotics = _robotics()
        from gymnasium_robotics.envs.maze.maze_v4 import Maze

        point_xml = os.path.join(os.path.dirname(robotics.__file__), "envs", "assets", "point", "point.xml")
        maze_map = [[1 if w else 0 for w in row] for row in layout.walls]
        # PointMazeEnv's settings: maze_size_scaling=1, maze_height=0.4. make_maze writes a temp file.
        _, xml_path = Maze.make_maze(point_xml, maze_map, 1, 0.4)
        try:
            self.model = mujoco.MjModel.from_xml_path(xml_path)
        finally:
            os.unlink(xml_path)
        self.data = mujoco.MjData(self.model)
        self._spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._nstate = mujoco.mj_stateSize(self.model, self._spec)
        self._rollout = rollout.rollout
        if self.model.nq != 2 or self.model.nv != 2 or self._nstate != 5:
            raise RuntimeError("unexpected PointMaze model layout (expected 2 slide joints, no actuator state)")

    def step(self, obs: np.ndarray, actions: np.ndarray) -> np.ndarray:
        """obs (N, 4) = (x, y, vx, vy), actions (N, 2) -> next obs (N, 4), as ``PointEnv.step``."""
        state = np.zeros((len(obs), self._nstate))
        state[:, 1:3] = obs[:, :2]
        state[:, 3:5] = np.clip(obs[:, 2:], -5.0, 5.0)
        ctrl = np.clip(actions, -1.0, 1.0)[:, None, :]
        out, _ = self._rollout(self.model, self.data, state, ctrl)
        return out[:, 0, 1:5].copy()


@dataclass
class ControllerConfig:
    """D4RL's ``WaypointController`` gains and its data script's action noise."""

    p_gain: float = 10.0
    d_gain: float = -1.0
    action_noise: float = 0.5


def waypoint_actions(layout: MazeLayout, obs: np.ndarray, goals: np.ndarray, cfg: ControllerConfig) -> np.ndarray:
    """PD control toward the next BFS cell centre (or the goal itself once in its cell's neighbourhood)."""
    here, there = layout.free_index(obs[:, :2]), layout.free_index(goals)
    nxt = layout.next_cell[here, there]
    target = np.where((nxt == there)[:, None], goals, layout.cell_center(layout.free_cells[nxt]))
    return cfg.p_gain * (target - obs[:, :2]) + cfg.d_gain * obs[:, 2:]


def generate(layout: MazeLayout, episodes: int, episode_steps: int, seed: int, goal: np.ndarray | None = None,
             controller: ControllerConfig | None = None, sim: PointMassSim | None = None) -> Trajectories:
    """Roll out ``episodes`` controller episodes of ``episode_steps`` each, all in one batch.

    ``goal=None``: a uniform random goal per episode (the base data); else every episode drives to
    ``goal`` (an expert's data). Observations are (x, y, vx, vy), actions (ax, ay) in [-1, 1].
    """
    cfg = controller or ControllerConfig()
    sim = sim or PointMassSim(layout)
    rng = np.random.default_rng(seed)
    obs = np.zeros((episodes, 4))
    obs[:, :2] = layout.sample_free(episodes, rng)
    goals = layout.sample_free(episodes, rng) if goal is None else np.tile(np.asarray(goal, float), (episodes, 1))
    all_obs = np.empty((episodes, episode_steps, 4), dtype=np.float32)
    all_act = np.empty((episodes, episode_steps, 2), dtype=np.float32)
    for s in range(episode_steps):
        act = waypoint_actions(layout, obs, goals, cfg) + cfg.action_noise * rng.standard_normal((episodes, 2))
        act = np.clip(act, -1.0, 1.0)
        all_obs[:, s], all_act[:, s] = obs, act
        obs = sim.step(obs, act)
    return Trajectories(
        observations=all_obs.reshape(-1, 4),
        actions=all_act.reshape(-1, 2),
        episode_lengths=np.full(episodes, episode_steps, dtype=np.int64),
        goals=np.repeat(goals, episode_steps, axis=0).astype(np.float32),
    )
