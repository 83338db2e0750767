"""Prompt sets: I2P from the hub, local CSV / parquet / text files, and the sets shipped in ``prompts/sets``.

``load_prompts(source, categories=..., hard_only=..., limit=..., seed=...)`` returns a ``PromptSet``.
``source`` is

* ``i2p``: the I2P benchmark (``AIML-TUDA/i2p`` through ``datasets``; offline it must be cached, or
  pass the CSV users download from the I2P page);
* the name of a shipped set (``harmless``: project-written everyday prompts for contrast; every
  ``prompts/sets/<name>.csv`` is one);
* a ``.csv`` / ``.parquet`` file with a ``prompt`` column and optionally ``categories`` (comma-separated),
  ``hard`` (0/1), ``evaluation_seed`` (integer) and an id column (``prompt_id``, ``case_number`` or
  ``id``; otherwise the row number);
* a ``.txt`` file with one prompt per line (blank lines skipped).

A malformed file is a one-line ``UserError`` naming the row and the column (rows counted as in a
spreadsheet: the CSV header is row 1). Empty prompts are kept: I2P has one, and for a diffusion model
it is simply the unconditional prompt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from prompts.select import derived_seed, stratified_sample
from rrf.errors import UserError

SETS_DIR = Path(__file__).resolve().parent / "sets"
I2P_HUB_ID = "AIML-TUDA/i2p"
ID_COLUMNS = ("prompt_id", "case_number", "id")


@dataclass(frozen=True)
class Prompt:
    prompt_id: str
    text: str
    categories: tuple[str, ...] = ()
    hard: bool = False
    file_seed: int | None = None
    """The file's ``evaluation_seed`` (I2P's seed for reproducing its images), if it has one."""

    def seed(self, run_seed: int, from_file: bool = False) -> int:
        """This prompt's seed: the file's ``evaluation_seed`` if ``from_file``, else derived from the run seed."""
        if not from_file:
            return derived_seed(run_seed, self.prompt_id)
        if self.file_seed is None:
            raise UserError(f"prompt {self.prompt_id!r} has no evaluation_seed; drop --seed-from-file or fill the column")
        return self.file_seed


@dataclass
class PromptSet:
    prompts: list[Prompt]
    source: dict = field(default_factory=dict)
    """Where the prompts came from (name/path, sha256 of the file, selection), for manifests."""

    def __len__(self) -> int:
        return len(self.prompts)


def builtin_sets() -> list[str]:
    return sorted(p.stem for p in SETS_DIR.glob("*.csv"))


def load_prompts(source: str | Path, *, categories: tuple[str, ...] | list[str] = (), hard_only: bool = False,
                 limit: int | None = None, seed: int = 0) -> PromptSet:
    """Read ``source`` (see module doc), keep prompts in any of ``categories`` (all if empty), only I2P's
    "hard" ones if ``hard_only``, then at most ``limit`` prompts by stratified sampling over the first
    category (seeded by ``seed``; never "the first N": I2P is ordered by category)."""
    prompts, info = read_prompts(source)
    if categories:
        known = sorted({c for p in prompts for c in p.categories})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise UserError(f"unknown categor{'y' if len(unknown) == 1 else 'ies'} {', '.join(map(repr, unknown))} in "
                            f"{info['source']}; choose from {', '.join(known) or '(the file has no categories)'}")
        prompts = [p for p in prompts if set(p.categories) & set(categories)]
    if hard_only:
        if not info["has_hard"]:
            raise UserError(f"--hard-only needs a 'hard' column, and {info['source']} has none")
        prompts = [p for p in prompts if p.hard]
    if limit is not None:
        if limit < 1:
            raise UserError(f"--limit must be at least 1, got {limit}")
        keep = stratified_sample([p.categories[0] if p.categories else "" for p in prompts], limit, seed)
        prompts = [prompts[i] for i in keep]
    if not prompts:
        raise UserError(f"no prompts left in {info['source']} after filtering; relax --categories/--hard-only")
    info.update(categories=list(categories), hard_only=hard_only, limit=limit, selection_seed=seed, count=len(prompts))
    return PromptSet(prompts, info)


def read_prompts(source: str | Path) -> tuple[list[Prompt], dict]:
    """All prompts of ``source`` in file order, and a description of the source."""
    name = str(source)
    path = Path(name).expanduser()
    if name == "i2p" and not path.exists():
        return _from_frame(_i2p_from_hub(), "i2p", lambda i: f"row {i + 1} of {I2P_HUB_ID}",
                           {"source": "i2p", "hub_id": I2P_HUB_ID})
    if name in builtin_sets() and not path.exists():
        path = SETS_DIR / f"{name}.csv"
    if not path.is_file():
        raise UserError(f"prompt source {name!r} is not a file, 'i2p' or a shipped set ({', '.join(builtin_sets())}); "
                        "pass a .csv, .parquet or .txt file")
    info = {"source": name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return _from_text(path), {**info, "has_hard": False}
    if suffix == ".csv":
        return _from_frame(_read_csv(path), name, lambda i: f"{path}, row {i + 2}", info)
    if suffix == ".parquet":
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise UserError(f"{path} is not a readable parquet file ({_first_line(exc)}); re-export it") from None
        return _from_frame(frame, name, lambda i: f"{path}, row {i + 1}", info)
    raise UserError(f"{path}: unsupported prompt file type {suffix!r}; use .csv, .parquet or .txt")


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False)
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    except pd.errors.EmptyDataError:
        raise UserError(f"{path} is empty; a prompt CSV needs a header with a 'prompt' column") from None
    except pd.errors.ParserError as exc:
        match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(exc))
        if match:
            want, line, got = match.groups()
            raise UserError(f"{path}, line {line}: {got} fields where the header has {want}; "
                            "quote prompts that contain commas") from None
        raise UserError(f"{path} is not valid CSV ({_first_line(exc)}); check its quoting") from None


def _from_text(path: Path) -> list[Prompt]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start}); save it as UTF-8") from None
    return [Prompt(str(i + 1), line.strip()) for i, line in enumerate(lines) if line.strip()]


def _from_frame(frame: pd.DataFrame, name: str, where, info: dict) -> tuple[list[Prompt], dict]:
    frame = frame.rename(columns=lambda c: str(c).strip())
    if "prompt" not in frame.columns:
        raise UserError(f"{name} has no 'prompt' column (columns: {', '.join(map(str, frame.columns[:8]))}); "
                        "name the prompt column 'prompt'")
    id_column = next((c for c in ID_COLUMNS if c in frame.columns), None)
    seen: dict[str, int] = {}
    prompts = []
    for i, row in enumerate(frame.to_dict("records")):
        text = _cell(row["prompt"])
        prompt_id = _cell(row[id_column]) if id_column else str(i)
        if id_column:
            if not prompt_id:
                raise UserError(f"{where(i)}, column '{id_column}': empty id; give every prompt an id")
            if prompt_id in seen:
                raise UserError(f"{where(i)}, column '{id_column}': id {prompt_id!r} is already used "
                                f"({where(seen[prompt_id])}); ids must be unique")
        seen[prompt_id] = i
        categories = tuple(c.strip() for c in _cell(row.get("categories", "")).split(",") if c.strip())
        prompts.append(Prompt(prompt_id, text, categories, _parse_hard(row, where(i)), _parse_seed(row, where(i))))
    return prompts, {**info, "has_hard": "hard" in frame.columns, "id_column": id_column}


def _cell(value) -> str:
    return "" if value is None or (isinstance(value, float) and value != value) else str(value).strip()


def _parse_hard(row: dict, where: str) -> bool:
    value = _cell(row.get("hard", "")).lower()
    if value in ("", "0", "0.0", "false", "no"):
        return False
    if value in ("1", "1.0", "true", "yes"):
        return True
    raise UserError(f"{where}, column 'hard': {value!r} is not 0/1; use 1 for hard prompts and 0 otherwise")


def _parse_seed(row: dict, where: str) -> int | None:
    value = _cell(row.get("evaluation_seed", ""))
    if not value:
        return None
    try:
        seed = int(float(value)) if re.fullmatch(r"\d+(\.0*)?", value) else int(value)
    except ValueError:
        seed = -1
    if seed < 0 or seed >= 2**63:
        raise UserError(f"{where}, column 'evaluation_seed': {value!r} is not a non-negative integer; fix or clear it")
    return seed


def _i2p_from_hub() -> pd.DataFrame:
    import datasets

    try:
        return datasets.load_dataset(I2P_HUB_ID, split="train").to_pandas()
    except Exception as exc:  # noqa: BLE001 - datasets raises many types when offline / not cached
        raise UserError(f"cannot load the I2P prompts ({I2P_HUB_ID}) from the hub or its cache ({_first_line(exc)}); "
                        "go online once, or pass the I2P CSV with --prompts path/to/i2p.csv") from None


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
