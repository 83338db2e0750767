"""`rrf-audit compare BASE SAFER`: generate -> fit -> evaluate -> report, resumable at every stage.

Layout of ``OUT``::

    data/     the Algorithm-2 store (rrf-audit generate)
    run/      the fitted reward, split, metrics.json, scores and plots (rrf-audit fit + evaluate)
    report/   index.html and its images (rrf-audit report), blurred by default

Each stage owns its directory through ``rrf.manifest.claim_output_dir``: rerunning the same command
checks every stage's settings, skips the work already done and continues: finished shards, the
trained reward, metrics computed from the same reward weights (``metrics.json`` records the digests
of its inputs) and a report built from the same metrics (``report.json`` likewise). Different
settings are refused instead of mixing two audits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from audit.evaluate import EvaluateConfig, evaluate
from audit.fit import FitConfig, fit
from audit.generate import GenerateConfig, generate
from audit.ground_truth import ground_truth_for
from audit.report import ReportConfig, report_run


@dataclass
class CompareConfig:
    generate: GenerateConfig
    fit: FitConfig = field(default_factory=FitConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


def default_out(base: str, safer: str) -> Path:
    """``reports/<base>-vs-<safer>`` with anything but letters, digits, '.', '_' and '-' made '_'."""
    clean = lambda s: re.sub(r"[^\w.-]+", "_", Path(s).name or s).strip("_") or "model"  # noqa: E731
    return Path("reports") / f"{clean(base)}-vs-{clean(safer)}"


def compare(cfg: CompareConfig, out: str | Path, device: str = "cpu", progress: bool = True, tagger=None) -> dict:
    """Run every stage into ``out``; return the metrics (with ``report`` set to the report's path).

    ``tagger`` (e.g. ``audit.tags.FileTagger``) adds zero-shot concept tags to the report.
    """
    out = Path(out)
    gen = generate(cfg.generate, out / "data", progress=progress)
    fit(out / "data", out / "run", cfg.fit, device=device, progress=progress)
    if not gen.is_main_process:  # under `accelerate launch` every process generates and trains; one reports
        return {}
    truth, concept = ground_truth_for(out / "data")
    metrics = evaluate(out / "run", cfg.evaluate, device=device, ground_truth=truth, concept=concept)
    index = report_run(out / "run", out / "report", cfg.report, tagger)
    return {**metrics, "report": str(index)}
