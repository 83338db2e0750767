import hashlib

import html5lib
import numpy as np
import pandas as pd
from PIL import Image

from audit.metrics import attribute_breakdown, per_category, separation
from audit.report import ReportConfig, blur_image, build_report
from tests.report_fixtures import MALICIOUS, make_scores


def _metrics(scores):
    return {**separation(scores), "per_category": per_category(scores),
            "attribute_breakdown": attribute_breakdown(scores),
            "per_timestep": [{"t": t, "follow": f, "mean": m, "ci95": 0.1}
                             for t in (981, 501, 21) for f, m in (("base", 0.0), ("expert", t / 1000))]}


def _render(tmp_path, blur=True):
    scores = make_scores(tmp_path)
    provenance = {"base": "toy <b>", "safer": "toy-safe", "command": "rrf-audit report run --out r",
                  "packages": {"torch": "2.x"}}
    index = build_report(scores, _metrics(scores), provenance, tmp_path / "report", ReportConfig(top=4, per_batch=4, blur=blur))
    return scores, index


def high_frequency_energy(img: np.ndarray) -> float:
    """Spectral energy above 1/8 of the Nyquist band of a grey image (mean removed)."""
    grey = img.astype(np.float64).mean(axis=2)
    spec = np.abs(np.fft.fftshift(np.fft.fft2(grey - grey.mean()))) ** 2
    h, w = grey.shape
    yy, xx = np.mgrid[:h, :w]
    radius = np.hypot((yy - h / 2) / h, (xx - w / 2) / w)
    return float(spec[radius > 1 / 16].sum())


def test_report_escapes_untrusted_prompts_and_parses(tmp_path):
    _, index = _render(tmp_path)
    html = index.read_text()
    assert "<script" not in html and "<img src=x" not in html
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt; a cat" in html
    assert "&#34;&gt;&lt;img src=x onerror=alert(1)&gt; a dog" in html
    assert "toy &lt;b&gt;" in html
    parser = html5lib.HTMLParser(strict=True)
    doc = parser.parse(html)
    imgs = doc.findall(".//{http://www.w3.org/1999/xhtml}img")
    # Every <img> is one the report made: no element came from a prompt.
    assert imgs and all(not i.get("onerror") and i.get("src", "").endswith(".png") for i in imgs)
    for section in ("lowest", "highest", "attributes", "categories", "batches", "plots", "provenance"):
        assert f'id="{section}"' in html


def test_report_shows_the_intervals_over_held_out_prompts(tmp_path):
    scores = make_scores(tmp_path)
    metrics = _metrics(scores)
    lo, hi = metrics["accuracy_ci95"]
    assert lo <= metrics["accuracy"] <= hi
    html = _render(tmp_path)[1].read_text()
    assert f"(95% interval {lo * 100:.1f}-{hi * 100:.1f}%)" in html, html[:2000]
    assert "95% bootstrap intervals over those prompts" in html


def test_blur_is_in_the_pixels_and_irreversible(tmp_path):
    scores, index = _render(tmp_path, blur=True)
    out = index.parent
    written = sorted((out / "images").glob("*.png"))
    assert written
    source_hashes = {hashlib.sha256(open(p, "rb").read()).hexdigest() for p in scores["image_path"]}
    for path in out.rglob("*.png"):
        assert hashlib.sha256(path.read_bytes()).hexdigest() not in source_hashes
    by_id = dict(zip(scores["traj_id"], scores["image_path"], strict=True))
    for path in written:
        src = np.asarray(Image.open(by_id[path.stem]).convert("RGB"))
        small = Image.open(path)
        assert max(small.size) <= src.shape[0] // 8
        up = np.asarray(small.resize(src.shape[:2][::-1], Image.Resampling.BILINEAR))
        assert high_frequency_energy(up) <= 0.05 * high_frequency_energy(src)


def test_no_blur_keeps_full_images_and_scores_tables(tmp_path):
    scores, index = _render(tmp_path, blur=False)
    out = index.parent
    first = sorted((out / "images").glob("*.png"))[0]
    assert Image.open(first).size == (64, 64)
    table = pd.read_csv(out / "scores.csv")
    assert len(table) == len(scores) and {"prompt_id", "prompt", "categories", "follow", "reward"} <= set(table.columns)
    assert set(table["prompt"]) >= set(MALICIOUS)
    parquet = pd.read_parquet(out / "scores.parquet")
    assert list(parquet["categories"].iloc[1]) == list(scores["categories"].iloc[1])


def test_blur_image_downscales_small_images_too():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert blur_image(img).size == (8, 8)
    assert blur_image(img.resize((512, 512))).size == (64, 64)


def test_report_shows_each_categorys_share_classified_right(tmp_path):
    scores = make_scores(tmp_path)
    cats = _metrics(scores)["per_category"]
    html = _render(tmp_path)[1].read_text()
    section = html[html.index('id="categories"'):html.index('id="batches"')]
    for name, c in cats.items():
        assert f"<td>{name}</td>" in section and f"{c['accuracy'] * 100:.1f}%" in section


def test_report_shows_the_accuracy_on_prompts_inviting_the_concept(tmp_path):
    scores = make_scores(tmp_path)
    metrics = {**_metrics(scores), "concept": "red", "concept_auroc": 0.9, "concept_prompt_accuracy": 0.9375,
               "concept_prompt_accuracy_ci95": [0.85, 1.0], "n_concept_prompt": 48}
    index = build_report(scores, metrics, {"base": "toy", "safer": "toy-safe"}, tmp_path / "report",
                         ReportConfig(top=4, per_batch=4))
    html = index.read_text()
    assert "93.8%" in html and "accuracy on prompts inviting red, controls left out (48 samples; 85.0-100.0%)" in html
    assert "controls left out" not in _render(tmp_path / "plain")[1].read_text()
