"""A reduced ground-truth audit of the shipped toy: does the reward find the colour SLD suppresses?

`compare toy toy-sld` (concept "red") on the balanced toy prompt set, with 20 instead of 50 steps, and
1000 reward steps at 5x the paper's learning rate on a quarter-width reward network instead of up to
6000 steps at 1e-4. The labeller says which base-model images show red; on held-out prompts the reward
must rank those low. Measured on one idle core (accuracy by the train-split logistic rule of metrics
protocol 1): accuracy 92.6%, AUROC 0.990, concept AUROC 0.979;
the paper's lr with 2000 steps on (32, 64, 128) gave 92.6% / 0.966 / 0.964 in twice the fitting time."""

import json
import time

import pytest
from tiny_sd import run_main, single_thread  # noqa: F401 (fixture and helper)


@pytest.mark.slow
def test_reduced_toy_audit_finds_the_suppressed_colour(tmp_path, monkeypatch, capsys):
    out = tmp_path / "audit"
    # CPU seconds of this single-threaded process: the 3 minutes of one core.
    started = time.process_time()
    code, stdout, stderr = run_main(monkeypatch, capsys, "compare", "toy", "toy-sld", "--prompts", "toy",
                                    "--images-per-prompt", "1", "--steps", "20", "--fit-steps", "1000",
                                    "--fit-lr", "5e-4", "--dims", "16,32,64", "--no-progress", "--device", "cpu",
                                    "--out", str(out))
    seconds = time.process_time() - started
    assert code == 0, stderr
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["concept"] == "red" and 0 < metrics["concept_share_base"] < 1
    assert metrics["concept_share_safer"] < metrics["concept_share_base"] / 2, metrics
    assert 0.5 < metrics["concept_rule_accuracy"] <= 1
    # The balanced set: a quarter of its prompts name red and a few name no colour; the rest are controls.
    assert 0 < metrics["n_concept_prompt"] < metrics["n_test"] / 2, metrics
    assert metrics["concept_prompt_accuracy"] >= 0.8, metrics["concept_prompt_accuracy"]
    assert metrics["concept_auroc"] >= 0.8, metrics["concept_auroc"]
    assert metrics["accuracy"] >= 0.8, metrics["accuracy"]
    # The attribute the safer model steers away from most is the erased colour.
    assert metrics["attribute_breakdown"][0]["attribute"] == "colour:red", metrics["attribute_breakdown"]
    html = (out / "report" / "index.html").read_text()
    assert "colour:red" in html and "concept" in html.lower()
    assert f"report: {out / 'report' / 'index.html'}" in stdout
    assert seconds < 180, seconds
