"""Separation accuracy at audit scale: ``rrf.metrics.best_threshold`` against the candidates x samples
comparison it replaced, in the same process, same data (ties included), and a check that both choose
the same threshold. An I2P audit at 10 images per prompt holds ~19k held-out samples.

    .venv/bin/python bench/separation.py [--n 2000,8000,19000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from rrf.metrics import best_threshold


def quadratic_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The baseline: every candidate compared with every sample."""
    values = np.unique(scores)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    right = ((scores[None, :] > candidates[:, None]) == labels[None, :]).sum(axis=1)
    best = np.flatnonzero(right == right.max())
    return float(candidates[best[len(best) // 2]])


def seconds(fn, *args) -> tuple[float, float]:
    started = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - started, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", default="2000,8000,19000", help="Sample counts, comma-separated.")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    for n in (int(v) for v in args.n.split(",")):
        labels = rng.random(n) < 0.5
        raw = labels * 1.5 + rng.normal(0, 1, n)
        # Distinct float rewards (the usual case) and rounded ones (ties).
        for kind, scores in (("distinct", raw), ("ties", np.round(raw, 2))):
            t_new, tau_new = seconds(best_threshold, scores, labels)
            t_old, tau_old = seconds(quadratic_threshold, scores, labels)
            assert tau_new == tau_old, (tau_new, tau_old)
            print(f"n={n:6d} {kind:8s}  sorted {t_new * 1e3:8.1f} ms  quadratic {t_old * 1e3:9.1f} ms  "
                  f"ratio {t_old / t_new:7.1f}x  same threshold {tau_new:.3f}")


if __name__ == "__main__":
    main()
