import os

# No test may reach a model hub: everything the tests load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
# One thread per process (subprocesses inherit it): the suite runs on 2 workers (pytest -n 2), its models
# are tiny, and several OpenMP threads per process on a busy machine slow tiny ops down by 10x or more
# (measured: 200 steps of a small MLP, 4 s with one thread vs 73 s with two at load 8).
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# The I2P CSV that users download, laid beside the repository in shared/ (the checkout's sibling).
I2P_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "i2p.csv"

# A tiny open_clip model (random weights, the real CLIP tokenizer) for concept tags, built here: no download.
TINY = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory):
    import open_clip

    from audit.tags import TaggerConfig

    root = tmp_path_factory.mktemp("clip")
    (root / "rrf-tiny-clip.json").write_text(json.dumps(TINY))
    open_clip.add_model_config(root / "rrf-tiny-clip.json")
    torch.manual_seed(0)
    model = open_clip.create_model("rrf-tiny-clip")
    ckpt = root / "tiny.pt"
    torch.save(model.state_dict(), ckpt)
    return TaggerConfig(model="rrf-tiny-clip", pretrained=str(ckpt))


def pytest_collection_modifyitems(config, items):
    """Files with ``slow`` tests first (stable order otherwise).

    ``make test`` runs ``--dist loadfile --no-loadscope-reorder``: workers take whole files in this
    order. xdist's default order (most tests first) started the four minute-long files, which hold
    one to four tests each, late, and one worker then ran the longest alone: 736 s at 146% CPU.
    """
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)
