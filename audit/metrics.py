"""Audit metrics from a *scores table*: one row per generated trajectory with its final-sample reward.

The table (``pandas.DataFrame``) has at least ``prompt_id``, ``categories`` (list of str), ``follow``
('base' | 'expert'), ``split`` ('train' | 'test') and ``reward``. Everything here is a pure function of
it, so the numbers in ``metrics.json`` and in the report come from one place and are tested on
synthetic rewards with known answers.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pandas as pd
from scipy import stats

from rrf.metrics import auroc, crossfit_threshold_correct, group_bootstrap_ci, threshold_accuracy

PROTOCOL = 6
"""Version of the metric definitions, recorded among evaluate's inputs: bumping it makes ``evaluate``
recompute stored metrics instead of returning them as up to date (6: adds the accuracy on the prompts
that invite the concept, ``concept_prompt_accuracy``; 5: adds each category's share of
held-out samples the threshold classifies right, and the per-sample verdict ``correct`` in the scores; 4: adds 95% intervals over held-out
prompts, ``*_ci95``; 3: adds the labeller's ceiling,
``concept_rule_accuracy``; 2: accuracy cross-fitted on held-out prompts; 1: logistic-regression threshold
fitted on the train split)."""


def _labels(frame: pd.DataFrame) -> np.ndarray:
    """1 for expert-followed samples: the safer model's samples should get the higher reward."""
    return (frame["follow"] == "expert").to_numpy(dtype=int)


def separation(scores: pd.DataFrame, folds: int = 5) -> dict[str, float | int]:
    """Base-vs-expert separation of final samples by the reward, on the test split.

    ``accuracy``: the rule "safer iff reward > tau", each held-out sample classified by a tau fitted on
    the other ``folds`` folds of held-out prompts (``rrf.metrics.crossfit_threshold_correct``). Why not
    the train split: the reward was fitted on those trajectories, and its scores there spread differently
    (on toy vs toy-sld some safer train samples scored as low as base ones, while the test split was
    perfectly ordered, so the train-fitted threshold missed a narrow held-out gap).
    ``accuracy_train_threshold`` keeps the tau fitted on the train split, for comparison. ``auroc`` needs
    no threshold. ``accuracy_ci95`` and ``auroc_ci95``: 95% intervals over held-out prompts
    (``prompt_interval``).
    """
    train, test = scores[scores["split"] == "train"], scores[scores["split"] == "test"]
    labels = _labels(test)
    rewards = test["reward"].to_numpy()
    right = heldout_verdicts(test, folds)
    return {
        "accuracy": float(right.mean()),
        "accuracy_ci95": prompt_interval(test, lambda rows: float(right[rows].mean())),
        "accuracy_train_threshold": threshold_accuracy(train["reward"], _labels(train), test["reward"], labels),
        "auroc": auroc(rewards, labels),
        "auroc_ci95": prompt_interval(test, lambda rows: auroc(rewards[rows], labels[rows])),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "threshold_folds": int(min(folds, test["prompt_id"].nunique())),
    }


def heldout_verdicts(test: pd.DataFrame, folds: int = 5) -> np.ndarray:
    """Per held-out sample (rows of ``test``), whether the cross-fitted threshold of ``separation`` classifies it right."""
    return crossfit_threshold_correct(test["reward"].to_numpy(), _labels(test), test["prompt_id"].astype(str), folds)


def prompt_interval(frame: pd.DataFrame, statistic: Callable[[np.ndarray], float]) -> list[float]:
    """95% interval of ``statistic(rows)`` (positional rows of ``frame``) over bootstrap resamples of its prompts.

    With the toy's 9 held-out prompts they are 10 to 20 points of accuracy wide; refitting the reward on
    other splits of one toy store moved accuracy with a standard deviation of 2.4 to 4.2 points.
    """
    return list(group_bootstrap_ci(frame["prompt_id"].astype(str).to_numpy(), statistic))


def explode_categories(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per (sample, category); samples without categories count under 'none'."""
    cats = frame["categories"].map(lambda c: list(c) if len(c) else ["none"])
    return frame.assign(category=cats).explode("category")


def per_category(scores: pd.DataFrame, folds: int = 5) -> dict[str, dict[str, float | int]]:
    """Separation within each prompt category, on the test split.

    ``auroc``: base vs expert within the category. ``accuracy``: the share of the category's samples that
    the one threshold of ``separation`` (fitted over all categories) classifies right, so the categories'
    accuracies, weighted by their samples, make up the headline figure. It shows where that figure is lost:
    a category the safer model leaves unchanged sits near 50% whatever the reward.
    """
    test = scores[scores["split"] == "test"]
    test = explode_categories(test.assign(correct=heldout_verdicts(test, folds)))
    out = {}
    for cat, group in test.groupby("category", sort=True):
        out[str(cat)] = {
            "auroc": auroc(group["reward"].to_numpy(), _labels(group)),
            "accuracy": float(group["correct"].mean()),
            "n_base": int((group["follow"] == "base").sum()),
            "n_expert": int((group["follow"] == "expert").sum()),
        }
    return out


def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Mean and the half-width of its Student-t confidence interval (NaN half-width for n < 2)."""
    values = np.asarray(values, dtype=np.float64)
    mean = float(values.mean()) if len(values) else math.nan
    if len(values) < 2:
        return mean, math.nan
    sem = values.std(ddof=1) / math.sqrt(len(values))
    return mean, float(stats.t.ppf(0.5 + level / 2, len(values) - 1) * sem)


def attribute_breakdown(scores: pd.DataFrame, split: str = "test") -> list[dict]:
    """Mean reward of base-model samples per attribute (prompt category), with 95% CIs.

    Sorted by the difference to the mean of all base samples, lowest first: the attributes at the
    top are the ones the safer model steers away from most; an attribute with a CI clear of zero is
    a real change, collateral or intended. With a ``disagreement`` column (``audit.evaluate.disagreement``)
    each row also has the mean disagreement of the attribute's trajectories (both followers) relative
    to all of them: where the two models' predictions differ, measured without the reward.
    """
    base = scores[(scores["follow"] == "base") & (scores["split"] == split)]
    if base.empty:
        return []
    overall = float(base["reward"].mean())
    # Disagreement is a property of a prompt's trajectories, whichever model they follow.
    both = scores[scores["split"] == split]
    has_disagreement = "disagreement" in both and both["disagreement"].notna().any()
    if has_disagreement:
        disagreements = explode_categories(both).groupby("category")["disagreement"].mean() / both["disagreement"].mean()
    rows = []
    for cat, group in explode_categories(base).groupby("category", sort=True):
        mean, half = mean_ci(group["reward"].to_numpy())
        row = {"attribute": str(cat), "n": int(len(group)), "mean_reward": mean, "ci95": half, "delta": mean - overall}
        if has_disagreement:
            row["disagreement"] = float(disagreements[cat])
        rows.append(row)
    return sorted(rows, key=lambda r: r["delta"])


def concept_auroc(rewards: np.ndarray, shows_concept: np.ndarray) -> float:
    """How well a *low* reward flags images that show the concept (ground truth from a labeller)."""
    return auroc(-np.asarray(rewards, dtype=np.float64), np.asarray(shows_concept, dtype=int))


def concept_rule_accuracy(frame: pd.DataFrame, shows_concept: np.ndarray) -> float:
    """Accuracy of the labeller's rule "safer iff the image does not show the concept" at base vs safer.

    The separation a reward that reads only the concept could reach on these samples: a safer-model
    image that still shows the concept, or a base image that never did (a control prompt's), is
    misjudged by any such reward.
    """
    return float(np.mean(_labels(frame) == 1 - np.asarray(shows_concept, dtype=int)))


def invites_concept(categories: pd.Series, concept: str) -> np.ndarray | None:
    """Per row, whether its prompt invites ``concept``: it names it, or names no other value of its attribute.

    Categories are ``attribute:value`` (``colour:red``); for concept red a prompt naming blue is a control
    and one naming no colour invites red. None where no category names the concept (I2P's categories
    against an SLD concept text): then every prompt of the set is meant to invite it.
    """
    named = {c for cats in categories for c in cats}
    concept_cat = next((c for c in sorted(named) if c.partition(":")[2] == concept), None)
    if concept_cat is None:
        return None
    attribute = concept_cat.partition(":")[0] + ":"
    return categories.map(lambda cats: concept_cat in cats or not any(c.startswith(attribute) for c in cats)).to_numpy(bool)


def concept_prompt_accuracy(test: pd.DataFrame, correct: np.ndarray, concept: str) -> dict[str, float | int | list]:
    """The headline accuracy restricted to held-out prompts that invite the concept (``invites_concept``).

    The verdicts are the headline's (one threshold over all held-out prompts), so this leaves out only the
    controls. It is the figure the paper's 90% on I2P compares with: I2P is made of prompts that invite
    the concepts SLD removes, while a toy audit set adds controls, whose samples a precise eraser leaves
    unchanged and no reward can separate (about 50%, whatever the reward).
    """
    keep = invites_concept(test["categories"], concept)
    if keep is None or not keep.any():
        return {}
    sub, right = test[keep], np.asarray(correct, dtype=float)[keep]
    return {"concept_prompt_accuracy": float(right.mean()),
            "concept_prompt_accuracy_ci95": prompt_interval(sub, lambda rows: float(right[rows].mean())),
            "n_concept_prompt": int(keep.sum())}
