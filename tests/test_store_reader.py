"""The data store written by generate(): layout, reader API, tuple batches, streaming moments, verification."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from tiny_sd import run_main, single_thread, tiny_sd  # noqa: F401 (fixtures)

from audit.generate import GenerateConfig, generate, initial_noise
from audit.store import Store
from prompts import load_prompts
from rrf.errors import UserError
from rrf.losses import relative_step

STEPS = 6


@pytest.fixture(scope="module")
def store_dir(tiny_sd, tmp_path_factory):  # noqa: F811
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: runs before the function-scoped single_thread fixture
    out = tmp_path_factory.mktemp("store") / "data"
    cfg = GenerateConfig(base=str(tiny_sd), safer="sld", prompts="harmless", limit=5, steps=STEPS, batch_size=2,
                         device="cpu", sld_preset="max")
    result = generate(cfg, out, progress=False)
    torch.set_num_threads(threads)
    assert result.trajectories == 10 and result.tuples == 60 and result.unet_evaluations_per_tuple == 3
    return out


@pytest.fixture(scope="module")
def store(store_dir):
    return Store.open(store_dir)


def test_layout_table_seeds_and_images(store, store_dir):
    table = store.trajectories
    assert list(table.columns[:8]) == ["traj_id", "prompt_id", "prompt", "categories", "follow", "seed", "sample",
                                       "image"]
    assert list(table["traj_id"]) == list(range(10))
    assert (table["follow"] == "base").sum() == 5 and table.groupby("prompt_id")["follow"].nunique().eq(2).all()
    assert all(c == ["harmless"] for c in table["categories"])
    prompts = {p.prompt_id: p for p in load_prompts("harmless", limit=5).prompts}
    for row in table.itertuples():
        assert row.seed == prompts[row.prompt_id].seed(0) + (row.follow == "expert")
        assert Image.open(store_dir / row.image).size == (16, 16)
    assert store.timesteps == sorted(store.timesteps, reverse=True) and len(store.timesteps) == STEPS
    assert store.latent_shape == (4, 8, 8)
    m = store.manifest
    assert m["models"]["expert"]["sld"]["guidance_scale"] == 5000.0 and m["pair"]["unet_evaluations_per_step"] == 3
    assert m["pair"]["scheduler"]["class"] == "DDIMScheduler"
    assert {"packages", "git_commit", "command"} <= set(m["provenance"])
    assert all(len(s["sha256"]) == 64 for s in m["shards"]) and len(m["shards"]) == 6


def test_trajectory_records_x_T_followed_states_and_other_step(store):
    states, other = store.read_trajectory(0)
    row = store.trajectories.iloc[0]
    x_T = initial_noise([int(row.seed)], store.latent_shape, 1.0)[0]
    assert torch.equal(states[0], x_T.half().float())  # fp16 storage of the seeded noise
    assert states.shape == (STEPS + 1, 4, 8, 8) and other.shape == (STEPS, 4, 8, 8)
    assert torch.equal(store.final_latents([0, 3])[0], states[-1])
    # An expert-followed trajectory: "other" is the base's step, states[1:] the expert's.
    expert_id = int(store.trajectories.query("follow == 'expert'").traj_id.iloc[0])
    e_states, e_other = store.read_trajectory(expert_id)
    assert (e_other - e_states[1:]).abs().amax() > 0


def test_about_two_latents_per_tuple_in_fp16(store):
    latent_bytes = 4 * 8 * 8 * 2
    per_tuple = store.manifest["totals"]["bytes_per_tuple"]
    assert 2 * latent_bytes <= per_tuple < 2.4 * latent_bytes  # trajectory once + the other step once, not 3


def test_tuple_batches_are_a_pure_function_of_step_and_cover_an_epoch(store):
    batches = store.tuple_batches(range(10), batch_size=6, seed=7, group_size=4)
    first = [batches(step) for step in range(10)]
    again = store.tuple_batches(range(10), batch_size=6, seed=7, group_size=4)
    for step in (9, 3, 0):  # any order, fresh object: same tensors
        for a, b in zip(again(step), first[step], strict=True):
            assert torch.equal(a, b)
    t, x, base_next, expert_next = (torch.cat(c) for c in zip(*first, strict=True))
    assert x.shape == (60, 4, 8, 8) and t.dtype == torch.long
    states = torch.cat([store.read_trajectory(i)[0][:-1] for i in range(10)])
    key = lambda a: sorted(map(tuple, a.flatten(1).numpy().round(4).tolist()))  # noqa: E731
    assert key(x) == key(states)  # every (trajectory, step) exactly once per epoch
    assert not torch.equal(t, torch.tensor(store.timesteps * 10))  # shuffled, not in storage order
    assert len(batches._cache) <= 2  # bounded memory: at most cache_groups groups held
    # targets agree with the trajectory reader
    states0, other0 = store.read_trajectory(0)
    follows_base = store.trajectories.follow.iloc[0] == "base"
    match = (x.flatten(1) == states0[2].flatten()).all(dim=1).nonzero().item()
    assert torch.equal(base_next[match] if follows_base else expert_next[match], states0[3])
    assert torch.allclose(expert_next[match] if follows_base else base_next[match], other0[2])
    # two ranks split the stream of one process
    ranks = [store.tuple_batches(range(10), 6, seed=7, rank=r, world_size=2, group_size=4) for r in (0, 1)]
    for step in range(3):
        assert torch.equal(ranks[0](step)[1], first[2 * step][1]) and torch.equal(ranks[1](step)[1], first[2 * step + 1][1])
    other_seed = store.tuple_batches(range(10), 6, seed=8, group_size=4)
    assert not torch.equal(other_seed(0)[1], first[0][1])


def test_streaming_moments_match_a_direct_computation(store):
    x_moments, target_moments = store.fit_moments(range(10), group_size=3)
    states = torch.stack([store.read_trajectory(i)[0] for i in range(10)])  # (N, S+1, C, H, W)
    assert torch.allclose(x_moments.mean.float(), states[:, :-1].mean(dim=0), atol=1e-5)
    assert torch.allclose(x_moments.variance().float(), states[:, :-1].var(dim=0, unbiased=False), atol=1e-4)
    rows = [store.read_rows([i]) for i in range(10)]
    targets = torch.stack([relative_step(*store.split_next([i], s[:, 1:], h))[0] for i, (s, h) in enumerate(rows)])
    want = targets.pow(2).flatten(2).mean(dim=2).mean(dim=0).double()
    assert torch.allclose(target_moments.mean, want, rtol=1e-5)
    halves = [store.fit_moments(range(10), rank=r, world_size=2)[0] for r in (0, 1)]
    halves[0].merge(halves[1])
    assert torch.allclose(halves[0].mean, x_moments.mean) and torch.equal(halves[0].count, x_moments.count)


def test_verify_finds_corruption_and_missing_files(store_dir, tmp_path, monkeypatch, capsys):
    assert Store.open(store_dir).verify() == []
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(store_dir))
    assert code == 0 and "ok: 6 shards, 10 trajectories, 60 tuples" in out
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    shard = copy / "shards" / "000001.safetensors"
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    (copy / "images" / "000004.png").unlink()
    problems = Store.open(copy).verify()
    assert problems == ["shards/000001.safetensors: checksum mismatch (corrupted or modified)",
                        "images/000004.png: missing"]
    code, out, _ = run_main(monkeypatch, capsys, "verify", str(copy))
    assert code == 1 and "2 problem(s)" in out


def test_open_refuses_missing_unfinished_corrupted_and_other_versions(store_dir, tmp_path):
    with pytest.raises(UserError, match="does not exist; create it with `rrf-audit generate"):
        Store.open(tmp_path / "nothing")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text("{}")
    with pytest.raises(UserError, match="has not finished; rerun the same `rrf-audit generate`"):
        Store.open(unfinished)
    copy = tmp_path / "copy"
    shutil.copytree(store_dir, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "version": 99}))
    with pytest.raises(UserError, match="version-99 store and this rrf-audit reads version 1; regenerate"):
        Store.open(copy)
    (copy / "manifest.json").write_text('{"format": "rrf-audit-lat')
    with pytest.raises(UserError, match="manifest.json is corrupted"):
        Store.open(copy)


def test_fp32_storage_doubles_the_latent_bytes(tiny_sd, tmp_path):  # noqa: F811
    cfg = GenerateConfig(base=str(tiny_sd), safer="sld", prompts="harmless", limit=1, steps=2, batch_size=1,
                         follow="base", device="cpu", store_dtype="fp32")
    generate(cfg, tmp_path / "fp32", progress=False)
    store = Store.open(tmp_path / "fp32")
    per_tuple = store.manifest["totals"]["bytes_per_tuple"]
    assert np.isclose(per_tuple, (2 * 2 + 1) / 2 * 4 * 8 * 8 * 4, rtol=0.3)
    assert store.read_trajectory(0)[0].dtype == torch.float32 and len(store.trajectories) == 1
