"""Train/test split of an audit dataset: by prompt, seeded, stratified by category, balanced by follower.

Never "the first N prompts": I2P is ordered by category, so a head/tail split would test on
categories the reward never saw. Both trajectories of a prompt (base- and expert-followed) land in
the same split, so no prompt is in both, and the test split holds as many base as expert samples.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

from rrf.errors import UserError


def stratum(categories: list[str]) -> str:
    """The stratification key of a prompt: its sorted category set ("none" without categories)."""
    return "+".join(sorted(categories)) or "none"


def split_prompts(trajectories: pd.DataFrame, test_fraction: float = 0.2, seed: int = 0) -> pd.DataFrame:
    """Return ``trajectories`` with a ``split`` column ('train' or 'test').

    Only prompts with both a base- and an expert-followed trajectory are eligible for the test
    split, which keeps it balanced; prompts with one follower only go to training. Strata with a
    single prompt are pooled (a stratum needs two members to be split).
    """
    if not 0.0 < test_fraction < 1.0:
        raise UserError(f"test fraction must be between 0 and 1, got {test_fraction}")
    per_prompt = trajectories.groupby("prompt_id").agg(
        follows=("follow", lambda f: frozenset(f)), categories=("categories", "first"))
    paired = per_prompt[per_prompt["follows"].map(lambda f: {"base", "expert"} <= f)]
    if len(paired) < 4:
        raise UserError(f"only {len(paired)} prompts have both a base and an expert trajectory; "
                        "generate with --follow both and at least 4 prompts to evaluate")
    keys = paired["categories"].map(stratum)
    counts = Counter(keys)
    keys = keys.where(keys.map(counts) >= 2, "pooled")
    n_test = max(2, int(round(test_fraction * len(paired))))
    strat = keys if keys.value_counts().min() >= 2 and n_test >= keys.nunique() else None
    _, test_ids = train_test_split(np.asarray(paired.index), test_size=n_test, random_state=seed, stratify=strat)
    out = trajectories.copy()
    out["split"] = np.where(out["prompt_id"].isin(set(test_ids)), "test", "train")
    return out
