"""`rrf-audit generate` as a user runs it: SIGKILL + rerun is byte-identical, a different config is refused
without touching anything, and `accelerate launch --num_processes 2 --cpu` writes the same store as one process."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_sd import run_main, single_thread, tiny_sd, tiny_sd_finetune  # noqa: F401 (fixtures)

from audit.generate import GenerateConfig, generate
from audit.store import Store
from rrf.errors import UserError

# One thread per process everywhere: on CPU the thread count changes float rounding, and accelerate
# launches its workers with one thread each.
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


STEPS, LIMIT, BATCH = 8, 6, 2  # 6 prompts x 2 followers in 6 shards of 2 trajectories


def cli_args(tiny_sd, out: Path, *extra: str) -> list[str]:  # noqa: F811
    return ["generate", str(tiny_sd), "sld", "--prompts", "harmless", "--limit", str(LIMIT), "--steps", str(STEPS),
            "--batch-size", str(BATCH), "--device", "cpu", "--no-progress", "--out", str(out), *extra]


def generate_in_process(tiny_sd, out: Path):  # noqa: F811
    """The same configuration as ``cli_args`` (resuming needs an identical one), run in this process."""
    cfg = GenerateConfig(base=str(tiny_sd), safer="sld", prompts="harmless", limit=LIMIT, steps=STEPS, batch_size=BATCH,
                         device="cpu")
    return generate(cfg, out, progress=False)


def contents(root: Path) -> dict[str, str]:
    """sha256 of every file. ``run.json`` and ``manifest.json`` are compared without their provenance block (the
    command line of the process that wrote them, and the git commit, which another engineer may change between
    two runs); that block is checked separately."""
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        if path.name in ("run.json", "manifest.json"):
            obj = json.loads(data)
            obj.pop("provenance")
            data = json.dumps(obj, sort_keys=True).encode()
        out[str(path.relative_to(root))] = hashlib.sha256(data).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tiny_sd, tmp_path_factory):  # noqa: F811
    """An uninterrupted run."""
    out = tmp_path_factory.mktemp("gen") / "store"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    result = generate_in_process(tiny_sd, out)
    torch.set_num_threads(threads)
    assert (result.trajectories, result.tuples, result.unet_evaluations_per_tuple) == (12, 96, 3)
    return out, contents(out)


def test_sigkill_mid_run_then_rerun_gives_a_byte_identical_store(tiny_sd, reference):  # noqa: F811
    out, expected = reference
    shutil.rmtree(out)
    proc = subprocess.Popen([sys.executable, "-m", "audit.cli", *cli_args(tiny_sd, out)], env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "shards" / "000001.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)  # mid-run: the second shard just finished, four are still to come
    proc.wait()
    assert not (out / "manifest.json").exists()
    with pytest.raises(UserError, match="has not finished"):
        Store.open(out)
    result = generate_in_process(tiny_sd, out)
    assert 2 <= result.shards_resumed < 6
    assert contents(out) == expected
    assert Store.open(out).verify() == []


def test_rerun_with_a_different_config_is_refused_and_nothing_changes(tiny_sd, reference, monkeypatch,  # noqa: F811
                                                                       capsys):
    out, expected = reference
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    code, _, stderr = run_main(monkeypatch, capsys, *cli_args(tiny_sd, out, "--guidance", "5.0"))
    assert code == 2 and stderr.startswith("error:") and stderr.strip().count("\n") == 0
    assert "different settings (guidance: 7.5 there vs 5.0 now)" in stderr and "Traceback" not in stderr
    assert contents(out) == expected and {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


def test_accelerate_two_cpu_processes_write_the_same_store(tiny_sd, reference, tmp_path):  # noqa: F811
    out, expected = reference
    two = tmp_path / "two"
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--cpu",
                           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                           "-m", "audit.cli", *cli_args(tiny_sd, two)], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "12 trajectories, 96 tuples" in proc.stdout and "3.00 UNet evaluations per tuple" in proc.stdout
    assert contents(two) == expected
    manifest = json.loads((two / "manifest.json").read_text())
    assert manifest["provenance"]["command"].startswith("__main__.py generate")


def test_weights_changed_at_the_same_path_are_refused(tiny_sd, tiny_sd_finetune, tmp_path):  # noqa: F811
    weights = tmp_path / "weights"
    shutil.copytree(tiny_sd, weights)
    cfg = GenerateConfig(base=str(weights), safer="sld", prompts="harmless", limit=1, steps=1, batch_size=1,
                         follow="base", device="cpu")
    generate(cfg, tmp_path / "store", progress=False)
    unet = "unet/diffusion_pytorch_model.safetensors"
    shutil.copyfile(tiny_sd_finetune / unet, weights / unet)  # "retrained" in place
    with pytest.raises(UserError, match="different settings.*base"):
        generate(cfg, tmp_path / "store", progress=False)


def test_images_per_prompt_keeps_the_first_samples_seeds_and_gives_every_trajectory_its_own():
    from audit.generate import plan_shards
    from prompts.load import load_prompts

    prompts = load_prompts("harmless", limit=3).prompts
    one = [tr for shard in plan_shards(prompts, ("base", "expert"), 2, 0, False) for tr in shard]
    three = [tr for shard in plan_shards(prompts, ("base", "expert"), 2, 0, False, images_per_prompt=3) for tr in shard]
    assert len(three) == 3 * len(one) and [tr.traj_id for tr in three] == list(range(len(three)))
    assert len({tr.seed for tr in three}) == len(three)  # no two trajectories share their noise
    first = {(tr.prompt.prompt_id, tr.follow): tr.seed for tr in three if tr.sample == 0}
    assert first == {(tr.prompt.prompt_id, tr.follow): tr.seed for tr in one}  # k = 0 is the one-image store
    assert {tr.record()["sample"] for tr in three} == {0, 1, 2}
    with pytest.raises(UserError, match="images-per-prompt"):
        generate(GenerateConfig(base="toy", safer="toy-sld", prompts="toy", images_per_prompt=0), Path("/nonexistent"))
