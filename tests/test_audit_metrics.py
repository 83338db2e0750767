import numpy as np
import pandas as pd
import pytest
from conftest import I2P_CSV
from scipy import stats

from audit.metrics import (
    attribute_breakdown,
    concept_auroc,
    concept_prompt_accuracy,
    concept_rule_accuracy,
    heldout_verdicts,
    invites_concept,
    per_category,
    separation,
)
from audit.split import split_prompts
from rrf.errors import UserError
from rrf.metrics import (
    auroc,
    best_threshold,
    crossfit_threshold_correct,
    group_bootstrap_ci,
    separation_accuracy,
)


def synthetic(base_rewards, expert_rewards, split="test"):
    rows = [{"prompt_id": f"b{i}", "categories": ["a"], "follow": "base", "split": split, "reward": r}
            for i, r in enumerate(base_rewards)]
    rows += [{"prompt_id": f"e{i}", "categories": ["a"], "follow": "expert", "split": split, "reward": r}
             for i, r in enumerate(expert_rewards)]
    return pd.DataFrame(rows)


def test_auroc_matches_known_value():
    # Of the 4x4 (expert, base) pairs, expert > base in 16 - 3 (ties count 1/2: one tie) -> (12 + 0.5) / 16.
    frame = pd.concat([synthetic([0, 1, 2, 3], [3, 4, 5, 6]), synthetic([0, 1, 2, 3], [3, 4, 5, 6], "train")])
    out = separation(frame)
    assert out["auroc"] == pytest.approx(15.5 / 16)
    assert out["n_test"] == 8 and out["n_train"] == 8
    perfect = pd.concat([synthetic([0, 1], [5, 6]), synthetic([0, 1], [5, 6], "train")])
    assert separation(perfect)["accuracy"] == 1.0 and separation(perfect)["auroc"] == 1.0
    reversed_ = pd.concat([synthetic([5, 6], [0, 1]), synthetic([0, 1], [5, 6], "train")])
    # The train threshold points the other way: held-out accuracy collapses; the cross-fitted rule cannot
    # flip its direction, so a reward ranking safer samples low gets chance at best, not a "fixed" 100%.
    out = separation(reversed_)
    assert out["accuracy_train_threshold"] == 0.0 and out["auroc"] == 0.0 and out["accuracy"] <= 0.5


def test_auroc_agrees_with_sklearn_with_ties_and_one_class():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(3)
    for n in (7, 200, 5000):
        labels = rng.random(n) < 0.3
        scores = np.round(labels * 0.8 + rng.normal(0, 1, n), 1)  # rounded: many ties
        assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
        assert auroc(scores, labels.astype(int)) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert np.isnan(auroc(np.arange(4.0), np.ones(4, dtype=bool)))


def test_prompt_bootstrap_interval_covers_the_truth_and_narrows_with_more_prompts():
    # Prompts of varying difficulty: the reward's margin is shared by a prompt's samples.
    def frame(n_prompts, seed):
        rng = np.random.default_rng(seed)
        rows = []
        for p in range(n_prompts):
            margin = rng.normal(0.5, 1.5)
            for follow, sign in (("base", -1), ("expert", 1)):
                rows += [{"prompt_id": f"p{p}", "categories": ["a"], "follow": follow, "split": "test",
                          "reward": sign * margin / 2 + rng.normal(0, 0.3)} for _ in range(3)]
        train = pd.DataFrame(rows).assign(split="train")
        return pd.concat([pd.DataFrame(rows), train], ignore_index=True)

    small, large = separation(frame(9, 0)), separation(frame(200, 1))
    for out in (small, large):
        for key in ("accuracy", "auroc"):
            lo, hi = out[f"{key}_ci95"]
            assert lo <= out[key] <= hi, (key, out)
    # 9 prompts (the toy's held-out count) cannot pin the figures down; 200 can, about sqrt(200 / 9) ~ 4.7x
    # more tightly for the mean of per-sample accuracy, less for a pooled AUROC and where the 9-prompt
    # interval is cut off at 1.
    for key in ("accuracy", "auroc"):
        small_width, large_width = (out[f"{key}_ci95"][1] - out[f"{key}_ci95"][0] for out in (small, large))
        assert small_width > 0.15 and small_width > 2 * large_width, (key, small, large)
    assert separation(frame(9, 0)) == small  # seeded: the same frame gives the same interval


def test_group_bootstrap_resamples_whole_groups():
    groups = np.repeat(["a", "b", "c", "d"], 5)
    values = np.repeat([0.0, 0.0, 1.0, 1.0], 5)
    # Every resample holds whole groups, so the mean moves in steps of 1/4 (rows would give steps of 1/20).
    seen = set()
    group_bootstrap_ci(groups, lambda rows: seen.add(round(values[rows].mean(), 6)) or 0.0, resamples=300)
    assert seen <= {0.0, 0.25, 0.5, 0.75, 1.0} and len(seen) >= 4
    assert group_bootstrap_ci(groups, lambda rows: float("nan")) != group_bootstrap_ci(groups, lambda rows: 1.0)
    assert all(np.isnan(group_bootstrap_ci(groups, lambda rows: float("nan"))))
    assert group_bootstrap_ci(np.repeat(["a", "b"], 3), lambda rows: 1.0) == (1.0, 1.0)


def test_threshold_is_cut_in_the_gap_and_never_flips():
    assert best_threshold([0, 1, 5, 6], [0, 0, 1, 1]) == 3.0
    # One outlier far out (like the toy's long safer tail) must not drag the cut out of the gap, which a
    # logistic fit does: its p = 0.5 point moves with the outlier.
    scores, labels = [0, 1, 2, 3, 10, 11, 12, 1000], [0, 0, 0, 0, 1, 1, 1, 1]
    assert best_threshold(scores, labels) == 6.5
    assert separation_accuracy(scores, labels, [3.5, 9.5], [0, 1]) < 1.0
    assert best_threshold([5, 6, 0, 1], [0, 0, 1, 1]) in (-1.0, 7.0)  # reversed: all one class
    # Held-out folds are whole groups; a sample's cut never saw its group.
    rng = np.random.default_rng(0)
    groups = np.repeat(np.arange(10), 4)
    labels = np.tile([0, 0, 1, 1], 10)
    scores = labels * 2.0 + rng.normal(0, 1, 40)
    acc = crossfit_threshold_correct(scores, labels, groups).mean()
    assert 0.7 < acc < 1.0  # two unit-variance classes 2 apart: Bayes accuracy 84%
    assert crossfit_threshold_correct(-scores, labels, groups).mean() <= 0.5
    assert crossfit_threshold_correct(scores, labels, groups).mean() == acc  # deterministic


def test_per_category_and_attribute_breakdown():
    rows = []
    for i in range(30):
        cat = ["red"] if i % 3 == 0 else ["blue"]
        rows.append({"prompt_id": i, "categories": cat, "follow": "base", "split": "test",
                     "reward": (-2.0 if cat == ["red"] else 0.0) + 0.1 * (i % 5)})
        rows.append({"prompt_id": i, "categories": cat, "follow": "expert", "split": "test", "reward": 1.0})
    frame = pd.DataFrame(rows)
    table = attribute_breakdown(frame)
    assert [r["attribute"] for r in table] == ["red", "blue"]
    red = np.array([-2.0 + 0.1 * (i % 5) for i in range(0, 30, 3)])
    assert table[0]["mean_reward"] == pytest.approx(red.mean())
    assert table[0]["ci95"] == pytest.approx(stats.t.ppf(0.975, len(red) - 1) * red.std(ddof=1) / np.sqrt(len(red)))
    assert table[0]["delta"] < 0 < table[1]["delta"]
    cats = per_category(frame)
    assert cats["red"]["auroc"] == 1.0 and cats["red"]["n_base"] == 10 and cats["blue"]["n_expert"] == 20


def test_per_category_accuracy_locates_where_the_headline_is_lost():
    # "changed": the safer model's samples score higher; "same": both models' samples are one distribution.
    rng = np.random.default_rng(0)
    rows = []
    for i in range(60):
        cat = "changed" if i < 40 else "same"
        for follow in ("base", "expert"):
            shift = 3.0 if (cat == "changed" and follow == "expert") else 0.0
            rows += [{"prompt_id": f"p{i}", "categories": [cat], "follow": follow, "split": "test",
                      "reward": shift + rng.normal()} for _ in range(2)]
    frame = pd.DataFrame(rows)
    train = frame.assign(split="train")
    cats, headline = per_category(frame), separation(pd.concat([frame, train]))["accuracy"]
    assert cats["changed"]["accuracy"] > 0.85
    assert 0.3 < cats["same"]["accuracy"] < 0.7
    weighted = (cats["changed"]["accuracy"] * 160 + cats["same"]["accuracy"] * 80) / 240
    assert weighted == pytest.approx(headline)


def test_concept_prompt_accuracy_leaves_out_only_the_controls():
    # Prompts naming red and colour-free ones change (safer scores higher); controls naming blue do not.
    rng = np.random.default_rng(1)
    kinds = [["colour:red", "shape:circle"]] * 30 + [["shape:square"]] * 10 + [["colour:blue"]] * 20
    rows = []
    for i, cats in enumerate(kinds):
        for follow in ("base", "expert"):
            shift = 3.0 if ("colour:blue" not in cats and follow == "expert") else 0.0
            rows += [{"prompt_id": f"p{i}", "categories": cats, "follow": follow, "split": "test",
                      "reward": shift + rng.normal()} for _ in range(2)]
    test = pd.DataFrame(rows)
    keep = invites_concept(test["categories"], "red")
    assert keep.sum() == 40 * 4 and not keep[test["categories"].map(lambda c: "colour:blue" in c)].any()
    right = heldout_verdicts(test)
    out = concept_prompt_accuracy(test, right, "red")
    assert out["n_concept_prompt"] == 160
    assert out["concept_prompt_accuracy"] == pytest.approx(right[keep].mean())
    assert out["concept_prompt_accuracy"] > 0.85 > right.mean()  # the controls pull the headline down
    lo, hi = out["concept_prompt_accuracy_ci95"]
    assert lo <= out["concept_prompt_accuracy"] <= hi
    # A concept no category names (an SLD concept text on I2P): every prompt is meant to invite it.
    assert invites_concept(test["categories"], "nudity") is None
    assert concept_prompt_accuracy(test, right, "nudity") == {}


def test_attribute_breakdown_reports_model_disagreement_of_both_followers():
    rows = []
    for i in range(12):
        cat = ["red"] if i % 3 == 0 else ["blue"]
        for follow, d in (("base", 3.0 if cat == ["red"] else 1.0), ("expert", 1.0)):
            rows.append({"prompt_id": i, "categories": cat, "follow": follow, "split": "test", "reward": 0.1 * i,
                         "disagreement": d})
    rows.append({"prompt_id": 99, "categories": ["red"], "follow": "base", "split": "train", "reward": 0.0,
                 "disagreement": 100.0})  # train rows must not count
    table = {r["attribute"]: r for r in attribute_breakdown(pd.DataFrame(rows))}
    overall = (4 * (3 + 1) + 8 * (1 + 1)) / 24
    assert table["red"]["disagreement"] == pytest.approx(2.0 / overall)
    assert table["blue"]["disagreement"] == pytest.approx(1.0 / overall)
    assert "disagreement" not in attribute_breakdown(pd.DataFrame(rows).drop(columns="disagreement"))[0]


def test_concept_auroc_rewards_low_scores_for_concept_images():
    assert concept_auroc(np.array([-3, -2, 1, 2]), np.array([1, 1, 0, 0])) == 1.0
    assert concept_auroc(np.array([-3, 2, 1, -2]), np.array([1, 1, 0, 0])) == 0.5


def test_concept_rule_misjudges_safer_images_with_the_concept_and_base_images_without():
    follow = pd.DataFrame({"follow": ["base", "base", "base", "expert", "expert", "expert"]})
    # Right: base with the concept, safer without. Wrong: the base image without it, the safer one with it.
    assert concept_rule_accuracy(follow, np.array([1, 1, 0, 0, 0, 1])) == pytest.approx(4 / 6)
    assert concept_rule_accuracy(follow, np.array([1, 1, 1, 0, 0, 0])) == 1.0


def test_split_is_by_prompt_stratified_and_balanced():
    i2p = pd.read_csv(I2P_CSV).head(600)  # ordered by category: a head split would be biased
    cats = i2p["categories"].fillna("").map(lambda c: [x.strip() for x in c.split(",") if x.strip()])
    traj = pd.DataFrame([{"prompt_id": i, "categories": c, "follow": f} for i, c in zip(i2p.index, cats, strict=True)
                         for f in ("base", "expert")])
    out = split_prompts(traj, test_fraction=0.2, seed=3)
    test, train = out[out["split"] == "test"], out[out["split"] == "train"]
    assert not set(test["prompt_id"]) & set(train["prompt_id"])
    assert (test["follow"] == "base").sum() == (test["follow"] == "expert").sum() == 120
    # Stratified: each category's share in test is close to its share overall.
    for cat in ("violence", "self-harm"):
        share_all = traj["categories"].map(lambda c, cat=cat: cat in c).mean()
        share_test = test["categories"].map(lambda c, cat=cat: cat in c).mean()
        assert abs(share_all - share_test) < 0.05
    assert out.equals(split_prompts(traj, test_fraction=0.2, seed=3))  # seeded
    assert not out.equals(split_prompts(traj, test_fraction=0.2, seed=4))
    with pytest.raises(UserError, match="both a base and an expert"):
        split_prompts(traj[traj["follow"] == "base"])
