"""The embedded toy text-to-image model: procedural data, pixel-rule labeller, training, concept erasure.

The trained weights ship in ``weights/toy`` and ``weights/toy-safe`` (Stable Diffusion layout, loaded
through the same ``from_pretrained`` path as any SD checkpoint); ``rrf-audit toy train`` and
``rrf-audit toy erase`` reproduce them.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

WEIGHTS = Path(__file__).resolve().parent / "weights"
SHIPPED = ("toy", "toy-safe")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch CPU threads, then restore the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
