"""Fit -> evaluate -> report -> score on a store generated from two tiny random-weight SD checkpoints."""

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch
from conftest import I2P_CSV
from tiny_sd import single_thread, tiny_sd, tiny_sd_finetune  # noqa: F401 (fixtures)

from audit.evaluate import EvaluateConfig, evaluate
from audit.fit import FitConfig, fit
from audit.generate import GenerateConfig, generate
from audit.report import ReportConfig, report_run
from audit.score import ScoreConfig, score_images, score_prompts
from audit.store import Store
from rrf.reward import RelativeReward

I2P = str(I2P_CSV)
FIT = FitConfig(dims=(16, 32), steps=120, batch_size=32, eval_every=60, checkpoint_every=60, val_tuples=128)


def run_cli(*args, module="audit.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def store(tiny_sd, tiny_sd_finetune, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("fit") / "data"
    torch.set_num_threads(1)
    generate(GenerateConfig(base=str(tiny_sd), safer=str(tiny_sd_finetune), prompts=I2P, limit=32, steps=8,
                            batch_size=16, device="cpu"), out, progress=False)
    return out


@pytest.fixture(scope="module")
def run(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("fit") / "run"
    fit(store, out, FIT, device="cpu", progress=False)
    return out


def test_fit_evaluate_on_held_out_prompts(run):
    metrics = evaluate(run, EvaluateConfig(curve_trajectories=8, cosine_tuples=128), device="cpu")
    saved = json.loads((run / "metrics.json").read_text())
    assert {"accuracy", "auroc", "per_category", "n_test", "per_timestep", "heldout_cosine",
            "attribute_breakdown"} <= set(saved)
    # Two different random UNets give distinguishable samples; the reward must tell them apart on
    # prompts it never saw (threshold fitted on the train split only).
    assert metrics["n_test"] >= 12 and metrics["accuracy"] >= 0.75 and metrics["auroc"] >= 0.8
    scores = pd.read_parquet(run / "scores.parquet")
    test, train = scores[scores["split"] == "test"], scores[scores["split"] == "train"]
    assert not set(test["prompt_id"]) & set(train["prompt_id"])
    assert (test["follow"] == "base").sum() == (test["follow"] == "expert").sum()
    assert len({(r["t"], r["follow"]) for r in saved["per_timestep"]}) == 2 * 8
    assert (run / "reward_histogram.png").stat().st_size > 5000 and (run / "reward_per_timestep.png").is_file()
    # The saved reward is the EMA model with its scaling; it reloads on its own.
    reward = RelativeReward.from_pretrained(run / "reward")
    assert reward.normalizer is not None and reward.output_scale is not None
    # Disagreement of one test trajectory, recomputed from its stored one-step differences.
    store = Store.open(json.loads((run / "manifest.json").read_text())["store"])
    row = test.iloc[0]
    _, steps = store.read_rows([int(row["traj_id"])])
    scale = reward.output_scale(torch.tensor(store.timesteps)).double()
    expected = (steps[0].double().flatten(1).pow(2).mean(1) / scale**2).mean()
    assert row["disagreement"] == pytest.approx(float(expected), rel=1e-6)
    assert scores.loc[scores["split"] == "train", "disagreement"].isna().all()
    assert all(r["disagreement"] > 0 for r in saved["attribute_breakdown"])

    index = report_run(run, run.parent / "report", ReportConfig(top=4, per_batch=4))
    html = index.read_text()
    assert "Lowest reward" in html and "provenance" in html and str(run.resolve()) in html


def test_fit_rerun_is_a_no_op_and_other_settings_are_refused(store, run):
    before = (run / "reward" / "diffusion_pytorch_model.safetensors").read_bytes()
    fit(store, run, FIT, device="cpu", progress=False)  # finished: loads the last checkpoint, trains nothing
    assert (run / "reward" / "diffusion_pytorch_model.safetensors").read_bytes() == before
    proc = run_cli("fit", str(store), "--out", str(run), "--steps", "7", "--device", "cpu")
    assert proc.returncode == 2 and "different settings" in proc.stderr and "Traceback" not in proc.stderr


def test_data_parallel_fit_with_two_processes_matches_one(store, run, tmp_path):
    """Under `accelerate launch`, 2 processes x 16 tuples draw exactly the tuples of 1 process x 32."""
    out = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "audit.cli", "fit", str(store), "--out", str(out), "--steps", "120",
                           "--batch-size", "32", "--dims", "16,32", "--device", "cpu", "--no-progress"],
                          capture_output=True, text=True, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    # Same split and data, gradients averaged over the two halves: the same model up to float rounding.
    # (FitConfig defaults differ from FIT only in fields the CLI sets identically.)
    one = RelativeReward.from_pretrained(run / "reward")
    two = RelativeReward.from_pretrained(out / "reward")
    for (name, a), (_, b) in zip(one.state_dict().items(), two.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=name)


def test_score_images_and_prompts(store, run, tmp_path):
    images = sorted((store / "images").glob("*.png"))[:3]
    table = score_images(run, images, ScoreConfig())
    assert list(table["input"]) == [str(p) for p in images] and table["reward"].notna().all()
    noisy = score_images(run, images[:1], ScoreConfig(timestep=501 if 501 in json.loads(
        (store / "manifest.json").read_text())["timesteps"] else None))
    assert len(noisy) == 1
    prompts = tmp_path / "new.txt"
    prompts.write_text("a quiet lake at dawn\na crowded market\n")
    scored = score_prompts(run, prompts, tmp_path / "scored", ScoreConfig(), progress=False)
    assert list(scored["prompt"]) == ["a quiet lake at dawn", "a crowded market"]
    again = score_prompts(run, prompts, tmp_path / "scored", ScoreConfig(), progress=False)  # resumes, same samples
    assert again["reward"].tolist() == scored["reward"].tolist()


def test_training_steps_are_capped_on_small_stores():
    from audit.fit import FitConfig

    cfg = FitConfig(steps=6000, batch_size=64, max_samples_per_trajectory=900.0)
    assert cfg.training_steps(214) == 3010  # the toy audit, whatever its number of sampling steps
    assert cfg.training_steps(2 * 3762) == 6000  # an I2P store is never capped
    assert FitConfig(steps=6000, max_samples_per_trajectory=None).training_steps(1) == 6000
    assert cfg.training_steps(0) == 1


def test_final_samples_are_scored_renoised_mid_diffusion_by_a_recorded_rule(run):
    from audit.evaluate import score_latents, score_latents_noised, score_timesteps, store_schedule
    from rrf.errors import UserError

    cfg = EvaluateConfig(curve_trajectories=8, cosine_tuples=128)
    metrics = evaluate(run, cfg, device="cpu")
    store = Store.open(json.loads((run / "manifest.json").read_text())["store"])
    rule = metrics["scored_at"]
    assert rule["draws"] == cfg.score_draws and len(rule["timesteps"]) <= cfg.score_timesteps
    assert all(450 <= t <= 800 and t in store.timesteps for t in rule["timesteps"])
    # One trajectory's score recomputed by hand: rho of its final latent noised with each draw's noise.
    scores = pd.read_parquet(run / "scores.parquet")
    reward = RelativeReward.from_pretrained(run / "reward")
    ids = scores["traj_id"].astype(int).tolist()
    x0 = store.final_latents(ids)
    alphas = store_schedule(store)
    k, t = 1, rule["timesteps"][0]
    eps = torch.randn(tuple(x0.shape[1:]), generator=torch.Generator().manual_seed(cfg.seed * 1_000_003 + k))
    abar = float(alphas[t])
    by_hand = score_latents(reward, abar**0.5 * x0 + (1 - abar) ** 0.5 * eps, t)
    one = score_latents_noised(reward, x0, [t], alphas, draws=2, seed=cfg.seed)
    first = score_latents_noised(reward, x0, [t], alphas, draws=1, seed=cfg.seed)
    scale = float(reward.output_scale(torch.tensor([t])))
    assert one == pytest.approx((first + by_hand / scale) / 2, rel=1e-5)
    assert scores["reward"].to_numpy() == pytest.approx(
        score_latents_noised(reward, x0, rule["timesteps"], alphas, cfg.score_draws, cfg.seed), rel=1e-6)
    alone = score_latents_noised(reward, x0[3:4], rule["timesteps"], alphas, cfg.score_draws, cfg.seed)
    assert alone[0] == pytest.approx(scores["reward"].iloc[3], rel=1e-6)  # independent of the other images
    # The clean rule scores the final latent at the last step.
    clean = evaluate(run, EvaluateConfig(curve_trajectories=8, cosine_tuples=128, score_timesteps=0), device="cpu")
    assert clean["scored_at"] == {"timesteps": [store.timesteps[-1]], "draws": 0}
    assert pd.read_parquet(run / "scores.parquet")["reward"].to_numpy() == pytest.approx(
        score_latents(reward, x0, store.timesteps[-1]), rel=1e-6)
    assert score_timesteps([981, 781, 581, 381, 181], 1000, (0.2, 0.8), 2) == [381, 781]  # 981, 181 lie outside
    with pytest.raises(UserError, match="scoring band"):
        score_timesteps([981, 1], 1000, (0.45, 0.8), 4)
