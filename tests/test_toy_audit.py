"""A reduced ground-truth audit of the shipped toy pair: does the reward find the erased colour?

`compare toy toy-safe` with fewer prompts, steps and reward-training steps than the default. The
labeller says which base-model images show red; on held-out prompts the reward must rank those low.
"""

import json
import time

from tiny_sd import run_main, single_thread  # noqa: F401 (fixture and helper)


def test_reduced_toy_audit_finds_the_erased_colour(tmp_path, monkeypatch, capsys):
    out = tmp_path / "audit"
    started = time.perf_counter()
    code, stdout, stderr = run_main(monkeypatch, capsys, "compare", "toy", "toy-safe", "--limit", "64", "--steps", "20",
                                    "--fit-steps", "800", "--dims", "32,64", "--no-progress", "--device", "cpu",
                                    "--out", str(out))
    seconds = time.perf_counter() - started
    assert code == 0, stderr
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["concept"] == "red" and 0 < metrics["concept_share_base"] < 1
    assert metrics["concept_auroc"] >= 0.8, metrics["concept_auroc"]
    assert metrics["accuracy"] >= 0.8, metrics["accuracy"]
    # The attribute the safer model steers away from most is the erased colour.
    assert metrics["attribute_breakdown"][0]["attribute"] == "colour:red", metrics["attribute_breakdown"]
    html = (out / "report" / "index.html").read_text()
    assert "colour:red" in html and "concept" in html.lower()
    assert f"report: {out / 'report' / 'index.html'}" in stdout
    assert seconds < 180, seconds
