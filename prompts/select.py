"""Deterministic choices over a prompt list: stratified subsampling and per-prompt seeds.

Both are pure functions of their inputs and a seed, so the same command selects the same prompts
and the same initial noise on every machine and in every process.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np


def stratified_sample(strata: Sequence[str], n: int, seed: int) -> list[int]:
    """Indices of ``n`` items, drawn without replacement so that every stratum keeps its share.

    Shares are allocated by largest remainder (ties broken by stratum name) and items are drawn
    uniformly within each stratum with a seeded permutation. The indices are returned in their
    original order. ``n >= len(strata)`` returns everything.
    """
    if n >= len(strata):
        return list(range(len(strata)))
    members: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(strata):
        members[s].append(i)
    names = sorted(members)
    quotas = {s: n * len(members[s]) / len(strata) for s in names}
    counts = {s: int(q) for s, q in quotas.items()}
    by_remainder = sorted(names, key=lambda s: (-(quotas[s] - counts[s]), s))
    for s in by_remainder[: n - sum(counts.values())]:
        counts[s] += 1
    chosen = []
    for k, s in enumerate(names):
        rng = np.random.default_rng([seed, k])
        chosen.extend(members[s][j] for j in rng.permutation(len(members[s]))[: counts[s]])
    return sorted(chosen)


def derived_seed(*parts: object) -> int:
    """A 31-bit seed from any parts (e.g. the run seed and a prompt id), stable across machines and Pythons."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF
