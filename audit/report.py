"""The HTML audit report: one page, ``DIR/index.html``, with its images and tables beside it.

It only *reads* results (the scores table, ``metrics.json``, manifests, the generated PNGs) and
writes a new directory. Two properties are guarantees, not styling:

* ``--blur`` blurs the **pixels** (strong Gaussian blur, then downscale) before an image is written,
  so no unblurred image exists anywhere in the report directory; CSS is not the mechanism.
* every string is HTML-escaped by Jinja2's autoescaping: prompts are untrusted input.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jinja2
import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from audit import plots
from rrf.errors import UserError
from rrf.manifest import claim_output_dir, provenance, read_json, same_inputs, write_json_atomic

TEMPLATES = Path(__file__).parent / "templates"


@dataclass
class ReportConfig:
    top: int = 12
    """How many lowest- and highest-reward base samples to show."""
    per_batch: int = 8
    """Batch size B of the paper's "lowest and highest in each batch" view."""
    batches: int = 8
    """How many such batches to show."""
    blur: bool = True
    """Blur the pixels of every image written (share the report without exposing harmful imagery)."""
    split: str = "test"
    """Which samples the galleries draw from: 'test' (held-out prompts, the honest default) or 'all'."""
    seed: int = 0
    """Seeds the assignment of samples to batches."""


def blur_image(image: Image.Image) -> Image.Image:
    """Strong Gaussian blur, then downscale to 1/8 of the size (at least 8 px): irreversibly coarse."""
    image = image.convert("RGB")
    short = min(image.size)
    blurred = image.filter(ImageFilter.GaussianBlur(radius=max(2.0, short / 12)))
    factor = max(1, short // max(8, short // 8))
    size = (max(1, image.width // factor), max(1, image.height // factor))
    return blurred.resize(size, Image.Resampling.BILINEAR)


def _write_image(src: Path, dst: Path, blur: bool) -> None:
    with Image.open(src) as img:
        out = blur_image(img) if blur else img.convert("RGB")
        tmp = dst.with_name(f".{dst.name}.tmp")
        out.save(tmp, format="PNG")
        tmp.replace(dst)


def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{x:.{digits}g}"


def _score(x: float | None) -> str:
    """A score in [0, 1] (AUROC, cosine) with a fixed number of decimals: 1.000, not 1."""
    return _fmt(x) if x is None or math.isnan(x) else f"{x:.3f}"


def _card(row: pd.Series) -> dict:
    return {
        "image": f"images/{row['traj_id']}.png",
        "prompt": str(row["prompt"]),
        "prompt_id": str(row["prompt_id"]),
        "categories": ", ".join(row["categories"]) or "none",
        "reward": _fmt(float(row["reward"])),
        "seed": str(row["seed"]),
        "follow": str(row["follow"]),
        "tags": [f"{k} {v:.2f}" for k, v in sorted((row.get("tags") or {}).items(), key=lambda kv: -kv[1])[:3]],
    }


def batch_extremes(samples: pd.DataFrame, per_batch: int, batches: int, seed: int) -> list[dict]:
    """The paper's qualitative view: shuffle samples into batches of B; lowest and highest of each."""
    order = np.random.default_rng(seed).permutation(len(samples))
    out = []
    for b in range(min(batches, len(samples) // max(per_batch, 1))):
        batch = samples.iloc[order[b * per_batch : (b + 1) * per_batch]]
        out.append({"lowest": _card(batch.loc[batch["reward"].idxmin()]),
                    "highest": _card(batch.loc[batch["reward"].idxmax()])})
    return out


def write_scores(scores: pd.DataFrame, out_dir: Path) -> None:
    """``scores.csv`` and ``scores.parquet``: one row per sample (categories joined by '; ' in the CSV)."""
    cols = [c for c in ("traj_id", "prompt_id", "prompt", "categories", "follow", "seed", "split", "reward")
            if c in scores.columns]
    table = scores[cols].copy()
    if "tags" in scores.columns:  # one column per concept, empty where an image was not tagged
        tags = scores["tags"].map(lambda t: t if isinstance(t, dict) else {})
        for concept in sorted({c for t in tags for c in t}):
            table[f"tag_{concept}"] = tags.map(lambda t, c=concept: t.get(c, float("nan")))
    table.to_parquet(out_dir / "scores.parquet", index=False)
    table["categories"] = table["categories"].map(lambda c: "; ".join(c))
    table.to_csv(out_dir / "scores.csv", index=False)


def build_report(scores: pd.DataFrame, metrics: dict, provenance: dict, out_dir: str | Path,
                 cfg: ReportConfig, title: str = "rrf-audit report", inputs: dict | None = None) -> Path:
    """Write ``out_dir/index.html`` with images, plots and tables; return its path.

    ``scores`` needs the scores-table columns (see ``audit.metrics``) plus ``traj_id``, ``prompt``,
    ``seed`` and ``image_path`` (absolute path of the final-sample PNG); optional ``tags`` (dict).
    """
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    pool = scores if cfg.split == "all" else scores[scores["split"] == cfg.split]
    base = pool[pool["follow"] == "base"].sort_values("reward", kind="stable")
    if base.empty:
        raise UserError(f"no base-model samples in split {cfg.split!r}; use --split all or generate more prompts")

    lowest = [_card(r) for _, r in base.head(cfg.top).iterrows()]
    highest = [_card(r) for _, r in base.tail(cfg.top).iloc[::-1].iterrows()]
    batches = batch_extremes(base, cfg.per_batch, cfg.batches, cfg.seed)
    shown = {c["image"] for c in [*lowest, *highest, *(b[k] for b in batches for k in ("lowest", "highest"))]}
    paths = dict(zip(scores["traj_id"].map(lambda i: f"images/{i}.png"), scores["image_path"], strict=True))
    for rel in sorted(shown):
        _write_image(Path(paths[rel]), out_dir / rel, cfg.blur)

    plots.reward_histogram(scores[scores["split"] == "test"] if cfg.split == "test" else scores,
                           out_dir / "reward_histogram.png")
    if metrics.get("per_timestep"):
        plots.reward_per_timestep(pd.DataFrame(metrics["per_timestep"]), out_dir / "reward_per_timestep.png")
    write_scores(scores, out_dir)
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["fmt"] = _fmt
    env.filters["score"] = _score
    html = env.get_template("report.html.j2").render(
        title=title, cfg=cfg, metrics=metrics, provenance=provenance,
        lowest=lowest, highest=highest, batches=batches, per_category=metrics.get("per_category", {}),
        attributes=metrics.get("attribute_breakdown", []),
        has_timestep_plot=(out_dir / "reward_per_timestep.png").is_file(),
    )
    tmp = out_dir / ".index.html.tmp"
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out_dir / "index.html")
    write_json_atomic(out_dir / "report.json", {"config": cfg.__dict__, "images": sorted(shown),
                                                "provenance": provenance, "inputs": inputs})
    return out_dir / "index.html"


def run_provenance(run_dir: Path, store_manifest: dict, fit_manifest: dict, metrics: dict) -> dict:
    """What the report's provenance block shows: models, generation and fit settings, versions, commands."""
    models = store_manifest.get("models", {})
    config = store_manifest.get("config", {})
    now = provenance()
    return {
        "base": models.get("base", {}).get("name", "?"),
        "safer": models.get("expert", {}).get("name", "?"),
        "models": models,
        "generation": {k: store_manifest.get(k) for k in ("guidance_scale", "sld", "seeds", "resolution", "timesteps")}
        | {"scheduler": config.get("scheduler"), "steps": config.get("steps"), "prompts": store_manifest.get("prompts")},
        "fit": fit_manifest.get("config", {}),
        "packages": now["packages"],
        "git_commit": now["git_commit"],
        "commands": [store_manifest.get("provenance", {}).get("command"), fit_manifest.get("provenance", {}).get("command"),
                     metrics.get("provenance", {}).get("command"), now["command"]],
        "run": str(Path(run_dir).resolve()),
    }


def report_run(run_dir: str | Path, out_dir: str | Path, cfg: ReportConfig, tagger=None) -> Path:
    """Build the report of an evaluated run (``rrf-audit report``); ``tagger(paths) -> [{concept: p}]``."""
    import json

    from audit.fit import load_fit_manifest
    from audit.store import Store, sha256_file

    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.is_file():
        raise UserError(f"{run_dir} has no metrics.json; run `rrf-audit evaluate {run_dir}` first")
    metrics = json.loads(metrics_path.read_text())
    fit_manifest = load_fit_manifest(run_dir)
    store = Store.open(fit_manifest["store"])
    claim_output_dir(out_dir, "report", {**cfg.__dict__, "run": str(run_dir.resolve()),
                                         "tags": getattr(tagger, "name", None)})
    # A report already built from these metrics by this template is what a rebuild would write: keep it.
    inputs = {"metrics": sha256_file(metrics_path), "scores": sha256_file(run_dir / "scores.parquet"),
              "template": sha256_file(TEMPLATES / "report.html.j2")}
    index = Path(out_dir) / "index.html"
    if index.is_file() and same_inputs(read_json(Path(out_dir) / "report.json"), inputs):
        return index
    scores = pd.read_parquet(run_dir / "scores.parquet")
    scores["categories"] = scores["categories"].map(list)
    if tagger is not None:
        pool = scores[(scores["follow"] == "base") & ((scores["split"] == cfg.split) | (cfg.split == "all"))]
        tags = tagger(pool["image_path"].tolist())
        scores["tags"] = None
        scores.loc[pool.index, "tags"] = pd.Series(tags, index=pool.index, dtype=object)
    title = f"rrf-audit: what {store.manifest['models']['expert']['name']} steers away from"
    return build_report(scores, metrics, run_provenance(run_dir, store.manifest, fit_manifest, metrics), out_dir,
                        cfg, title=title, inputs=inputs)
