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

from pathlib import Path  # noqa: E402

# The I2P CSV that users download, laid beside the repository in shared/ (the checkout's sibling).
I2P_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "i2p.csv"
