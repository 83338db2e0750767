"""Provenance and output-directory safety shared by every artifact the project writes.

* ``provenance()``: package versions, Python, platform, git commit and the exact command, recorded in
  every manifest so a result can be traced and reproduced.
* ``claim_output_dir()``: an output directory remembers the configuration that created it
  (``run.json``); rerunning with the same configuration resumes, a different one is refused. Nothing
  is ever overwritten silently.
* ``write_json_atomic()``: write-then-rename, so a reader never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from rrf.errors import UserError

_PACKAGES = ("rrf-audit", "torch", "diffusers", "transformers", "accelerate", "safetensors", "numpy", "open_clip_torch",
             "gymnasium", "gymnasium-robotics", "mujoco")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_commit(path: Path | None = None) -> str | None:
    """Commit of the source tree this code runs from (with ``+dirty`` if it has local changes), if any."""
    root = path or Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("+dirty" if dirty else "")


def provenance() -> dict[str, Any]:
    return {
        "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "git_commit": git_commit(),
    }


def _strict(obj: Any) -> Any:
    """NaN and infinities become null: JSON has no such numbers and strict readers reject them."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_strict(v) for v in obj]
    return obj


def write_json_atomic(path: str | Path, obj: Any) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_strict(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")
    os.replace(tmp, path)


def read_json(path: str | Path) -> Any:
    """The JSON at ``path``, or None if there is no such file."""
    path = Path(path)
    return json.loads(path.read_text()) if path.is_file() else None


def file_digests(root: str | Path) -> dict[str, str]:
    """sha256 of every file under ``root`` by relative path: what a stage's output was computed from."""
    root = Path(root)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def same_inputs(saved: dict | None, inputs: dict[str, Any]) -> bool:
    """Whether a stage's recorded ``inputs`` equal ``inputs`` as they would be stored (tuples -> lists)."""
    return saved is not None and saved.get("inputs") == json.loads(json.dumps(inputs, default=str))


def claim_output_dir(path: str | Path, kind: str, config: dict[str, Any]) -> bool:
    """Make ``path`` the output of a ``kind`` run with ``config``; return True if it resumes an earlier run.

    Refuses (``UserError``) a directory made by another kind of run or with another configuration,
    and a non-empty directory that no run of ours made.
    """
    path = Path(path)
    marker = path / "run.json"
    config = json.loads(json.dumps(config, default=str))  # compare as stored (tuples -> lists)
    if marker.is_file():
        saved = json.loads(marker.read_text())
        if saved.get("kind") != kind:
            raise UserError(f"{path} holds a {saved.get('kind')!r} run, not {kind!r}; choose another --out")
        diffs = sorted(k for k in set(saved["config"]) | set(config) if saved["config"].get(k) != config.get(k))
        if diffs:
            detail = "; ".join(f"{k}: {saved['config'].get(k)!r} there vs {config.get(k)!r} now" for k in diffs[:4])
            raise UserError(f"{path} was made with different settings ({detail}); "
                            "rerun with the same settings to resume, or choose another --out")
        return True
    if path.exists() and any(path.iterdir()):
        raise UserError(f"{path} exists and is not empty, and no {kind} run made it; choose another --out")
    write_json_atomic(marker, {"kind": kind, "config": config, "provenance": provenance()})
    return False
