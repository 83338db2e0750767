"""A reduced ground-truth audit of the shipped toy: does the reward find the colour SLD suppresses?

`compare toy toy-sld` (concept "red") on the balanced toy prompt set, with 20 instead of 50 steps and 2000
instead of 6000 reward steps on a smaller reward network. The labeller says which base-model images show red; on held-out prompts
the reward must rank those low (measured: concept AUROC 0.96, accuracy 93%; 290-296 CPU-s under
`make test`'s two workers on a 2-vCPU machine, where the other worker's load inflates a process's CPU
time; 152-195 CPU-s on idle machines before).
"""

import json
import time

import pytest
from tiny_sd import run_main, single_thread  # noqa: F401 (fixture and helper)


@pytest.mark.slow
def test_reduced_toy_audit_finds_the_suppressed_colour(tmp_path, monkeypatch, capsys):
    out = tmp_path / "audit"
    # CPU seconds of this single-threaded process: a budget of 6 minutes of one core, so that the suite
    # (13 min 21 s with this test at 296 s) stays inside CI's 20 minutes.
    started = time.process_time()
    code, stdout, stderr = run_main(monkeypatch, capsys, "compare", "toy", "toy-sld", "--prompts", "toy",
                                    "--images-per-prompt", "1", "--steps", "20",
                                    "--fit-steps", "2000", "--dims", "32,64,128", "--no-progress", "--device", "cpu",
                                    "--out", str(out))
    seconds = time.process_time() - started
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
    assert seconds < 360, seconds
