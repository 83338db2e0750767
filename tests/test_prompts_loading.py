"""Prompt loading: I2P CSV, shipped sets, text/parquet files, filters, stratified limits, seeds, malformed files."""

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
from conftest import I2P_CSV

from prompts import builtin_sets, derived_seed, load_prompts, read_prompts, stratified_sample
from rrf.errors import UserError

I2P = I2P_CSV


@pytest.fixture(scope="module")
def i2p():
    return read_prompts(I2P)[0]


def test_i2p_csv_reads_every_prompt_with_categories_ids_and_seeds(i2p):
    assert len(i2p) == 4703
    counts = Counter(c for p in i2p for c in p.categories)
    assert counts == {"sexual": 931, "shocking": 856, "harassment": 824, "self-harm": 801, "violence": 756,
                      "illegal activity": 727, "hate": 231}
    assert i2p[0].prompt_id == "0" and i2p[0].categories == ("violence", "self-harm")
    assert i2p[0].file_seed == 4261553411 and i2p[0].hard
    assert sum(p.hard for p in i2p) == 1831
    assert len({p.prompt_id for p in i2p}) == 4703
    assert sum(p.text == "" for p in i2p) == 1  # I2P's one empty prompt is kept (the unconditional prompt)


def test_category_filter_hard_only_and_unknown_category():
    violence = load_prompts(I2P, categories=["violence"])
    assert len(violence) == 756 and all("violence" in p.categories for p in violence.prompts)
    both = load_prompts(I2P, categories=["hate", "violence"])
    assert len(both) == len({p.prompt_id for p in both.prompts}) > 756
    hard = load_prompts(I2P, categories=["hate"], hard_only=True)
    assert 0 < len(hard) < 231 and all(p.hard for p in hard.prompts)
    with pytest.raises(UserError, match="unknown category 'gore'.*choose from"):
        load_prompts(I2P, categories=["gore"])


def test_limit_is_stratified_deterministic_and_seeded(i2p):
    a = load_prompts(I2P, limit=70, seed=0)
    assert [p.prompt_id for p in a.prompts] == [p.prompt_id for p in load_prompts(I2P, limit=70, seed=0).prompts]
    assert {p.prompt_id for p in a.prompts} != {p.prompt_id for p in load_prompts(I2P, limit=70, seed=1).prompts}
    share = Counter(p.categories[0] for p in i2p)
    got = Counter(p.categories[0] for p in a.prompts)
    for category, n in share.items():  # every stratum within one prompt of its proportional share
        assert abs(got[category] - 70 * n / len(i2p)) < 1.0 + 1e-9
    # Not "the first N": I2P is ordered by category, a head would be almost one category.
    assert len(got) >= 6
    assert a.source["sha256"] and a.source["count"] == 70


def test_stratified_sample_exact_shares_and_everything_when_n_is_large():
    strata = ["a"] * 50 + ["b"] * 30 + ["c"] * 20
    picked = stratified_sample(strata, 10, seed=3)
    assert Counter(strata[i] for i in picked) == {"a": 5, "b": 3, "c": 2}
    assert picked == sorted(picked) and len(set(picked)) == 10
    assert stratified_sample(strata, 500, seed=3) == list(range(100))


def test_per_prompt_seeds_from_run_seed_or_file(i2p):
    p = i2p[5]
    assert p.seed(0) == derived_seed(0, p.prompt_id) != p.seed(1)
    assert 0 <= p.seed(0) < 2**31
    assert p.seed(0, from_file=True) == p.file_seed


def test_shipped_harmless_set_and_text_and_parquet_files(tmp_path):
    assert "harmless" in builtin_sets()
    harmless = load_prompts("harmless")
    assert len(harmless) >= 30 and all(p.categories == ("harmless",) for p in harmless.prompts)
    txt = tmp_path / "p.txt"
    txt.write_text("a cat\n\n  a dog  \n")
    assert [(p.prompt_id, p.text) for p in load_prompts(txt).prompts] == [("1", "a cat"), ("3", "a dog")]
    frame = pd.DataFrame({"prompt": ["x", "y"], "categories": ["hate, violence", ""], "prompt_id": ["p1", "p2"]})
    frame.to_parquet(tmp_path / "p.parquet")
    got = load_prompts(tmp_path / "p.parquet").prompts
    assert [(p.prompt_id, p.categories) for p in got] == [("p1", ("hate", "violence")), ("p2", ())]
    with pytest.raises(UserError, match="has no evaluation_seed"):
        got[0].seed(0, from_file=True)


@pytest.mark.parametrize("content, message", [
    ("text,categories\na,b\n", r"no 'prompt' column \(columns: text, categories\)"),
    ("prompt,evaluation_seed\nok,12\nbad,twelve\n", r"row 3, column 'evaluation_seed': 'twelve' is not a non-negative"),
    ("prompt,hard\nok,1\nbad,maybe\n", r"row 3, column 'hard': 'maybe' is not 0/1"),
    ("prompt_id,prompt\n7,a\n8,b\n7,c\n", r"row 4, column 'prompt_id': id '7' is already used \(.*row 2\)"),
    ('prompt,categories\n"a, b",hate\nc,d,e\n', r"line 3: 3 fields where the header has 2"),
    ("", r"is empty"),
])
def test_malformed_files_give_one_line_errors_naming_row_and_column(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(UserError, match=message) as err:
        load_prompts(path)
    assert "\n" not in str(err.value)


def test_unknown_source_and_non_utf8(tmp_path):
    with pytest.raises(UserError, match="not a file, 'i2p' or a shipped set"):
        load_prompts(tmp_path / "nope.csv")
    bad = tmp_path / "latin.csv"
    bad.write_bytes("prompt\ncaf\xe9\n".encode("latin-1"))
    with pytest.raises(UserError, match="not UTF-8"):
        load_prompts(bad)


def test_i2p_from_the_hub_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.chdir(Path(__file__).parent)  # no file called 'i2p' here
    with pytest.raises(UserError, match=r"AIML-TUDA/i2p.*--prompts path/to/i2p.csv"):
        load_prompts("i2p")
