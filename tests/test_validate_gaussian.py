import json
import subprocess
import sys

import pytest


def run_cli(*args):
    return subprocess.run([sys.executable, "-c", "from audit.cli import main; main()", *args],
                          capture_output=True, text=True)


@pytest.mark.slow
def test_quick_gaussian_validation_passes_thresholds(tmp_path):
    out = tmp_path / "val"
    proc = run_cli("validate", "gaussian", "--quick", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "validation.json").read_text())
    names = [c["name"] for c in result["configurations"]]
    assert names == ["reweighted-2d", "shifted-2d", "mixture-16d"]
    assert result["passed"] is True
    for c in result["configurations"]:
        assert c["cosine"] >= 0.95 and c["spearman"] >= 0.9
        # The learned reward separates final samples nearly as well as the true log ratio does.
        assert c["accuracy"] >= c["accuracy_oracle"] - 0.05 and c["accuracy"] > 0.55
    assert (out / "reweighted-2d.png").stat().st_size > 10_000 and (out / "shifted-2d.png").is_file()

    # Rerunning with the same settings resumes (finished trainings are reused), a different one is refused.
    again = run_cli("validate", "gaussian", "--quick", "--out", str(out))
    assert again.returncode == 0
    assert json.loads((out / "validation.json").read_text())["configurations"] == result["configurations"]
    clash = run_cli("validate", "gaussian", "--quick", "--seed", "1", "--out", str(out))
    assert clash.returncode == 2
    assert clash.stderr.count("\n") == 1 and "different settings" in clash.stderr and "Traceback" not in clash.stderr
