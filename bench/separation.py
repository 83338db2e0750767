"""Separation accuracy at audit scale: ``rrf.metrics.best_threshold`` against the candidates x samples
comparison it replaced, in the same process, same data (ties included), and a check that both choose
the same threshold. An I2P audit at 10 images per prompt holds ~19k held-out samples. Then the cost of
the 95% intervals over held-out prompts (``rrf.metrics.group_bootstrap_ci``, 2000 resamples) against the
cross-fitted accuracy they qualify, at 20 samples per prompt (10 images x 2 followers), and the AUROC
interval with ``rrf.metrics.auroc`` (Mann-Whitney U) against the same with sklearn's ``roc_auc_score``.

    .venv/bin/python bench/separation.py [--n 2000,8000,19000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from rrf.metrics import auroc, best_threshold, crossfit_threshold_correct, group_bootstrap_ci


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
        interval_costs(raw, labels)


def interval_costs(scores: np.ndarray, labels: np.ndarray) -> None:
    """Time the two intervals of ``audit.metrics.separation`` against the point accuracy."""
    groups = np.arange(len(scores)) // 20
    t_point, right = seconds(crossfit_threshold_correct, scores, labels, groups)
    t_acc, _ = seconds(group_bootstrap_ci, groups, lambda rows: float(right[rows].mean()))
    t_auc, _ = seconds(group_bootstrap_ci, groups, lambda rows: auroc(scores[rows], labels[rows]))
    t_sk, _ = seconds(group_bootstrap_ci, groups, lambda rows: roc_auc_score(labels[rows], scores[rows]))
    print(f"n={len(scores):6d} intervals  cross-fitted accuracy {t_point * 1e3:7.1f} ms  its interval "
          f"{t_acc / t_point:6.1f}x  AUROC interval {t_auc / t_point:7.1f}x ({t_auc:.1f} s; with sklearn's "
          f"roc_auc_score {t_sk / t_auc:.1f}x that)")


if __name__ == "__main__":
    main()
