"""The report in a real browser: headless Debian Chromium renders it, and nothing from a prompt executes."""

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from audit.report import ReportConfig, build_report
from tests.report_fixtures import make_scores
from tests.test_report import _metrics

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (make test installs Debian's chromium when run as root)")


def chromium(tmp_path, *args):
    profile = tmp_path / "profile"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True,
                          timeout=120)


def test_report_renders_in_chromium_and_prompts_stay_inert(tmp_path):
    scores = make_scores(tmp_path)
    index = build_report(scores, _metrics(scores), {"base": "toy", "safer": "toy-safe"}, tmp_path / "report",
                         ReportConfig(top=4, per_batch=4))
    dom = chromium(tmp_path, "--dump-dom", index.as_uri()).stdout
    # The browser parsed the page: the prompt text is text, not elements.
    assert 'alert("pwned")' in dom and "<script" not in dom and "onerror" not in dom.replace("onerror=alert(1)&gt;", "")
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800", index.as_uri())
    assert shot.is_file()
    pixels = np.asarray(Image.open(shot).convert("L"), dtype=np.float64)
    assert pixels.shape == (1800, 1280)
    assert pixels.std() > 10  # not a blank page: text, tables and images rendered
