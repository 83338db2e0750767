"""Metrics shared by every validation and the audit: how well a scalar reward separates two groups."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
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


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` for ``labels == 1`` (NaN if only one class is present)."""
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64)))
