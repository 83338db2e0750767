"""`rrf-audit compare` end to end on two tiny random-weight checkpoints: every stage, resume, refusal."""

import json
import time

import pandas as pd
from conftest import I2P_CSV
from tiny_sd import run_main, single_thread, tiny_sd, tiny_sd_finetune  # noqa: F401 (fixtures and helper)

I2P = str(I2P_CSV)


def test_compare_runs_every_stage_resumes_and_refuses_other_settings(tiny_sd, tiny_sd_finetune, tiny_clip,  # noqa: F811
                                                                    tmp_path, monkeypatch, capsys):
    out = tmp_path / "audit"
    args = ["compare", str(tiny_sd), str(tiny_sd_finetune), "--prompts", I2P, "--limit", "16", "--steps", "6",
            "--fit-steps", "60", "--dims", "16,32", "--device", "cpu", "--no-progress", "--out", str(out),
            "--tags", "--tag-model", tiny_clip.model, "--tag-weights", tiny_clip.pretrained]
    code, stdout, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert f"report: {out / 'report' / 'index.html'}" in stdout and "accuracy" in stdout
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert {"accuracy", "auroc", "per_category", "n_test"} <= set(metrics)
    assert (out / "data" / "manifest.json").is_file() and (out / "run" / "reward" / "config.json").is_file()
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["config"]["blur"] is True  # blurred by default
    scores = pd.read_csv(out / "report" / "scores.csv")
    tagged = scores[(scores["follow"] == "base") & (scores["split"] == "test")]
    assert len(tagged) and tagged["tag_sexual"].between(0, 1).all()  # tags of the reported pool, one column each
    assert scores.loc[scores["follow"] == "expert", "tag_sexual"].isna().all()
    stamps = {p: p.stat().st_mtime_ns for p in (out / "data" / "manifest.json", out / "run" / "metrics.json",
                                                out / "report" / "index.html")}

    reward = (out / "run" / "reward" / "diffusion_pytorch_model.safetensors").read_bytes()
    started = time.perf_counter()
    code, _, stderr = run_main(monkeypatch, capsys, *args)
    assert code == 0, stderr
    assert (out / "run" / "reward" / "diffusion_pytorch_model.safetensors").read_bytes() == reward
    assert json.loads((out / "run" / "metrics.json").read_text())["accuracy"] == metrics["accuracy"]
    assert time.perf_counter() - started < 60  # nothing was regenerated or retrained
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nor re-finalised, re-evaluated, re-reported

    code, _, stderr = run_main(monkeypatch, capsys, *[a if a != "60" else "61" for a in args])
    assert code == 2 and "different settings" in stderr and "Traceback" not in stderr
    assert (out / "run" / "reward" / "diffusion_pytorch_model.safetensors").read_bytes() == reward
