"""Metrics shared by every validation and the audit: how well a scalar reward separates two groups."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.stats import mannwhitneyu
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler


def separation_accuracy(train_scores: np.ndarray, train_labels: np.ndarray,
                        test_scores: np.ndarray, test_labels: np.ndarray) -> float:
    """Accuracy on the test split of a logistic-regression threshold fitted on the train split only.

    Scores are standardised first: rewards live on arbitrary scales (often 1e-3), where an
    L2-regularised logistic regression on raw values would shrink to a constant prediction.
    """
    clf = make_pipeline(StandardScaler(), LogisticRegression())
    clf.fit(np.asarray(train_scores, dtype=np.float64).reshape(-1, 1), np.asarray(train_labels))
    return float(clf.score(np.asarray(test_scores, dtype=np.float64).reshape(-1, 1), np.asarray(test_labels)))


def best_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The tau of the rule "label 1 iff score > tau" that is right most often on ``(scores, labels)``.

    The direction is fixed: a reward that ranks the two groups the wrong way cannot buy accuracy by
    flipping it. Candidates are the midpoints between neighbouring scores (and one beyond each end); of
    the equally good ones the middle is taken, so a clean gap is cut in its middle, not at an edge.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    values, index = np.unique(scores, return_inverse=True)
    candidates = np.concatenate([[values[0] - 1.0], (values[1:] + values[:-1]) / 2, [values[-1] + 1.0]])
    # Counts per distinct score, accumulated: candidate k has values[:k] below it. O(n log n), where a
    # candidates x samples comparison would need n^2 memory (I2P: ~19k held-out samples at 10 per prompt).
    positives = np.bincount(index, weights=labels, minlength=len(values))
    negatives = np.bincount(index, weights=~labels, minlength=len(values))
    right = np.concatenate([[0.0], np.cumsum(negatives)]) + positives.sum() - np.concatenate([[0.0], np.cumsum(positives)])
    best = np.flatnonzero(right == right.max())
    return float(candidates[best[len(best) // 2]])


def threshold_accuracy(fit_scores: np.ndarray, fit_labels: np.ndarray,
                       scores: np.ndarray, labels: np.ndarray) -> float:
    """Accuracy on ``(scores, labels)`` of the ``best_threshold`` fitted on ``(fit_scores, fit_labels)``."""
    tau = best_threshold(fit_scores, fit_labels)
    return float(np.mean((np.asarray(scores, dtype=np.float64) > tau) == np.asarray(labels, dtype=bool)))


def crossfit_threshold_correct(scores: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                               folds: int = 5) -> np.ndarray:
    """Per sample, whether ``best_threshold`` fitted on the other folds classifies it right.

    Folds are whole groups (e.g. prompts), so no sample's threshold has seen its own prompt. Deterministic:
    ``GroupKFold`` assigns groups without shuffling.
    """
    scores, labels, groups = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool), np.asarray(groups)
    folds = min(folds, len(np.unique(groups)))
    if folds < 2:
        raise ValueError("cross-fitting a threshold needs samples from at least two groups")
    right = np.zeros(len(scores), dtype=bool)
    for fit, held in GroupKFold(n_splits=folds).split(scores, labels, groups):
        right[held] = (scores[held] > best_threshold(scores[fit], labels[fit])) == labels[held]
    return right


def group_bootstrap_ci(groups: np.ndarray, statistic: Callable[[np.ndarray], float], resamples: int = 2000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of ``statistic(rows)`` over resamples of whole groups drawn with replacement.

    ``statistic`` gets the row indices of a resample (a group drawn twice contributes its rows twice).
    Groups, not rows: samples of one prompt share its difficulty, so resampling rows would understate
    how much the figure would move on other prompts. Resamples where the statistic is NaN (e.g. an AUROC
    with one class) are dropped; (NaN, NaN) if all are.
    """
    groups = np.asarray(groups)
    names, inverse = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(inverse == k) for k in range(len(names))]
    rng = np.random.default_rng(seed)
    values = np.array([statistic(np.concatenate([members[k] for k in rng.integers(0, len(names), len(names))]))
                       for _ in range(resamples)], dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - level) / 2 * 100
    lo, hi = np.percentile(values, [tail, 100 - tail])
    return float(lo), float(hi)


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels == 1`` (NaN if only one class is present).

    As the Mann-Whitney U of the positives over the negatives, divided by the number of pairs (ties count
    half): the same value as sklearn's ``roc_auc_score``, 3.0x faster at 2k samples and 1.8x at 19k, which the 2000
    bootstrap resamples of an AUROC interval repeat (``bench/separation.py``).
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels).astype(bool)
    positives, negatives = scores[labels], scores[~labels]
    if not len(positives) or not len(negatives):
        return float("nan")
    u = mannwhitneyu(positives, negatives, method="asymptotic", use_continuity=False).statistic
    return float(u / (len(positives) * len(negatives)))
