"""The Algorithm-2 data store: sharded safetensors of latent trajectories, PNGs, and a manifest.

Layout of a store directory::

    run.json                      the generate settings that own the directory (rrf.manifest.claim_output_dir)
    manifest.json                 written last: config, models, scheduler, seeds, prompts, trajectories, shards
    shards/000000.safetensors     one generation batch: states (N, S+1, C, H, W), relative_step (N, S, C, H, W),
                                  traj_ids (N,)
    shards/000000.json            that shard's sha256, size and image hashes (its completion marker)
    images/000000.png             decoded final image of trajectory 0

Per trajectory the store keeps the followed trajectory ``states`` (x_T ... x_0, S+1 latents) and the
non-followed model's step at every timestep, as its offset from the followed step:
``relative_step[s] = expert_next - base_next`` (``rrf.losses.relative_step``). So a tuple costs two
latents, and the regression target keeps its precision in fp16 even where it is 1e-4 of the latents
(storing the two next latents separately in fp16 would round it away near t = 0).

Reader (used by fit/evaluate/report)::

    store = Store.open(dir)                     # UserError with the fix if missing / unfinished / wrong version
    store.trajectories                          # DataFrame: traj_id, prompt_id, prompt, categories, follow, seed, image
    store.timesteps, store.latent_shape         # sampling order; (C, H, W)
    states, other = store.read_trajectory(i)    # (S+1, C, H, W), (S, C, H, W) float32
    store.final_latents(ids)                    # (N, C, H, W)
    batch = store.tuple_batches(ids, 64, seed)  # batch(step) -> (t, x, base_next, expert_next), pure in step
    x_moments, target_ms = store.fit_moments(ids)   # one streaming pass for the scalers
    store.verify()                              # list of problems (empty when intact)

Reads never map the whole dataset: each read opens a shard, copies the rows it needs and closes it.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch import Tensor

from rrf.errors import UserError
from rrf.losses import relative_step
from rrf.manifest import write_json_atomic
from rrf.normalizers import StreamingMoments

FORMAT = "rrf-audit-latents"
VERSION = 1
STORE_DTYPES = {"fp16": torch.float16, "fp32": torch.float32}


def shard_file(index: int) -> str:
    return f"shards/{index:06d}.safetensors"


def image_file(traj_id: int) -> str:
    return f"images/{traj_id:06d}.png"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def write_bytes_atomic(path: Path, data: bytes, fsync: bool = False) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


# -- writing ----------------------------------------------------------------------------------------------


class StoreWriter:
    """Writes shards (one per generation batch) and, at the end, the manifest. Every file is atomic."""

    def __init__(self, root: str | Path, store_dtype: str = "fp16"):
        self.root = Path(root)
        self.dtype = STORE_DTYPES[store_dtype]
        for sub in ("shards", "images"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def remove_partial_files(self) -> None:
        """Delete temporary files a killed run left behind (they are never part of a finished store)."""
        for sub in ("shards", "images", "."):
            for tmp in (self.root / sub).glob(".*.tmp"):
                tmp.unlink(missing_ok=True)

    def is_done(self, index: int) -> bool:
        return (self.root / shard_file(index)).with_suffix(".json").is_file()

    def write_shard(self, index: int, traj_ids: Sequence[int], states: Tensor, relative_steps: Tensor,
                    images: Sequence) -> dict:
        """Store one batch: ``states`` (N, S+1, C, H, W) and ``relative_steps`` (N, S, C, H, W) plus N PIL images.

        Images first, then the shard, then its sidecar JSON: the sidecar marks the shard complete,
        so a run killed at any point redoes at most this shard, with the same bytes.
        """
        image_hashes = {}
        for traj_id, image in zip(traj_ids, images, strict=True):
            buf = io.BytesIO()
            image.save(buf, format="PNG")
            write_bytes_atomic(self.root / image_file(traj_id), buf.getvalue())
            image_hashes[str(traj_id)] = sha256_bytes(buf.getvalue())
        data = safetensors_bytes({
            "states": states.to(self.dtype).contiguous().cpu(),
            "relative_step": relative_steps.to(self.dtype).contiguous().cpu(),
            "traj_ids": torch.as_tensor(list(traj_ids), dtype=torch.int64),
        }, metadata={"format": f"{FORMAT}/{VERSION}"})  # one key: safetensors orders several keys at random
        path = self.root / shard_file(index)
        write_bytes_atomic(path, data, fsync=True)
        record = {"file": shard_file(index), "sha256": sha256_bytes(data), "bytes": len(data),
                  "trajectories": list(map(int, traj_ids)), "images": image_hashes}
        sidecar = path.with_suffix(".json")
        write_bytes_atomic(sidecar, (json.dumps(record, indent=1) + "\n").encode(), fsync=True)
        return record

    def finalize(self, manifest: dict, num_shards: int) -> dict:
        """Merge the shard sidecars into ``manifest`` (shards, per-trajectory image hashes, totals); write it."""
        shards, images = [], {}
        for index in range(num_shards):
            record = json.loads((self.root / shard_file(index)).with_suffix(".json").read_text())
            images.update(record.pop("images"))
            shards.append(record)
        for traj in manifest["trajectories"]:
            traj["image_sha256"] = images[str(traj["traj_id"])]
        image_bytes = sum((self.root / t["image"]).stat().st_size for t in manifest["trajectories"])
        tuples = len(manifest["trajectories"]) * len(manifest["timesteps"])
        shard_bytes = sum(s["bytes"] for s in shards)
        manifest["shards"] = shards
        manifest["totals"] = {
            "trajectories": len(manifest["trajectories"]), "tuples": tuples, "shard_bytes": shard_bytes,
            "image_bytes": image_bytes, "bytes_per_tuple": shard_bytes / max(tuples, 1),
            "unet_evaluations_per_tuple": manifest["pair"]["unet_evaluations_per_step"],
        }
        write_json_atomic(self.root / "manifest.json", manifest)
        return manifest


# -- reading ----------------------------------------------------------------------------------------------


class Store:
    """Read access to a finished store (see the module doc)."""

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.timesteps: list[int] = [int(t) for t in manifest["timesteps"]]
        self.latent_shape: tuple[int, int, int] = tuple(manifest["latent_shape"])
        rows = [(traj_id, k, row) for k, shard in enumerate(manifest["shards"])
                for row, traj_id in enumerate(shard["trajectories"])]
        rows.sort()
        if [r[0] for r in rows] != list(range(len(manifest["trajectories"]))):
            raise UserError(f"{root}/manifest.json does not list every trajectory in exactly one shard; "
                            "the store is corrupted, regenerate it")
        self._shard_of = np.array([r[1] for r in rows], dtype=np.int64)
        self._row_of = np.array([r[2] for r in rows], dtype=np.int64)
        self._follows_base = np.array([t["follow"] == "base" for t in manifest["trajectories"]])

    @classmethod
    def open(cls, root: str | Path) -> Store:
        root = Path(root)
        manifest_path = root / "manifest.json"
        if not root.is_dir():
            raise UserError(f"data store {root} does not exist; create it with `rrf-audit generate BASE SAFER --out {root}`")
        if not manifest_path.is_file():
            if (root / "run.json").is_file():
                raise UserError(f"generation into {root} has not finished; rerun the same `rrf-audit generate` "
                                "command to resume it")
            raise UserError(f"{root} is not an rrf-audit data store (no manifest.json); pass the --out of "
                            "`rrf-audit generate`")
        try:
            manifest = json.loads(manifest_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{manifest_path} is corrupted ({exc.__class__.__name__}); rerun the generate command "
                            "that made it (it rewrites the manifest from the shards)") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            raise UserError(f"{manifest_path} is not an rrf-audit data store manifest; pass the --out of "
                            "`rrf-audit generate`")
        if manifest.get("version") != VERSION:
            raise UserError(f"{root} is a version-{manifest.get('version')} store and this rrf-audit reads version "
                            f"{VERSION}; regenerate it with this version (or use the rrf-audit that made it)")
        return cls(root, manifest)

    # -- tables --------------------------------------------------------------------------------------

    @cached_property
    def trajectories(self) -> pd.DataFrame:
        """One row per trajectory: traj_id, prompt_id, prompt, categories (list[str]), follow, seed, image, ..."""
        frame = pd.DataFrame(self.manifest["trajectories"])
        frame["categories"] = frame["categories"].map(list)
        return frame

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    def image_path(self, traj_id: int) -> Path:
        return self.root / self.manifest["trajectories"][traj_id]["image"]

    # -- trajectories -------------------------------------------------------------------------------

    def read_rows(self, traj_ids: Sequence[int], final_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """Stored tensors of ``traj_ids`` in the given order, in the storage dtype.

        Returns ``(states (N, S+1, C, H, W), relative_step (N, S, C, H, W))``, or with ``final_only``
        ``(final latents (N, C, H, W), None)``. Each shard is opened once and closed again.
        """
        ids = np.asarray(traj_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= len(self._shard_of)):
            raise UserError(f"trajectory ids must be in 0..{len(self._shard_of) - 1}")
        states: list[Tensor | None] = [None] * len(ids)
        steps: list[Tensor | None] = [None] * len(ids)
        s = self.num_steps
        for shard in np.unique(self._shard_of[ids]):
            where = np.nonzero(self._shard_of[ids] == shard)[0]
            with safe_open(self.root / self.manifest["shards"][shard]["file"], framework="pt") as f:
                state_slice = f.get_slice("states")
                step_slice = None if final_only else f.get_slice("relative_step")
                for i in where:
                    # Slices are views of the file's memory map: copy them, or every shard ever read stays mapped.
                    row = int(self._row_of[ids[i]])
                    if final_only:
                        states[i] = state_slice[row, s].clone()
                    else:
                        states[i] = state_slice[row].clone()
                        steps[i] = step_slice[row].clone()
        if not len(ids):
            shape = (0, *self.latent_shape) if final_only else (0, s + 1, *self.latent_shape)
            return torch.zeros(shape), None if final_only else torch.zeros(0, s, *self.latent_shape)
        return torch.stack(states), None if final_only else torch.stack(steps)

    def split_next(self, traj_ids: Sequence[int], followed: Tensor, steps: Tensor) -> tuple[Tensor, Tensor]:
        """``(base_next, expert_next)`` float32 from the followed next latent and the stored ``relative_step``.

        ``traj_ids`` (N,) index the first dimension of ``followed`` and ``steps`` (N, ...): the followed
        model's latent is stored as is, the other one is ``followed + h`` (base followed) or ``followed - h``.
        """
        followed, steps = followed.float(), steps.float()
        base = torch.as_tensor(self._follows_base[np.asarray(traj_ids, dtype=np.int64)])
        base = base.view(-1, *([1] * (followed.dim() - 1)))
        other = torch.where(base, followed + steps, followed - steps)
        return torch.where(base, followed, other), torch.where(base, other, followed)

    def read_trajectory(self, traj_id: int) -> tuple[Tensor, Tensor]:
        """``(states (S+1, C, H, W), other (S, C, H, W))`` float32: the followed trajectory x_T..x_0 and the
        non-followed model's next latent from each state."""
        states, steps = self.read_rows([traj_id])
        base_next, expert_next = self.split_next([traj_id], states[:, 1:], steps)
        other = expert_next if self._follows_base[traj_id] else base_next
        return states[0].float(), other[0]

    def final_latents(self, traj_ids: Sequence[int]) -> Tensor:
        """x_0 of each trajectory, (N, C, H, W) float32."""
        return self.read_rows(traj_ids, final_only=True)[0].float()

    def iter_groups(self, traj_ids: Sequence[int], group_size: int = 64) -> Iterator[tuple[np.ndarray, Tensor, Tensor]]:
        """Stream ``(ids, states, relative_step)`` over ``traj_ids`` in groups, in storage (shard) order."""
        ids = np.asarray(sorted(traj_ids), dtype=np.int64)
        for start in range(0, len(ids), group_size):
            chunk = ids[start:start + group_size]
            yield (chunk, *self.read_rows(chunk))

    # -- training access ----------------------------------------------------------------------------

    def tuple_batches(self, traj_ids: Sequence[int], batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                      group_size: int | None = None, cache_groups: int = 2) -> TupleBatches:
        """A ``batch(step) -> (t, x, base_next, expert_next)`` source for ``rrf.trainer.Trainer`` (see ``TupleBatches``)."""
        return TupleBatches(self, traj_ids, batch_size, seed, rank, world_size, group_size, cache_groups)

    def fit_moments(self, traj_ids: Sequence[int], rank: int = 0, world_size: int = 1,
                    group_size: int = 64) -> tuple[StreamingMoments, StreamingMoments]:
        """One streaming pass over this rank's share of ``traj_ids``.

        Returns moments of ``x_t`` per (timestep, coordinate) (-> ``.to_scaler()``, the paper's latent
        scaling) and of the per-sample mean square of the target ``relative_step(base_next, expert_next)``
        per timestep (-> ``rrf.normalizers.TimestepScale.from_moments``). Merge ranks with ``.merge``.
        """
        mine = sorted(traj_ids)[rank::world_size]
        x_moments = StreamingMoments(self.timesteps, self.latent_shape)
        target_moments = StreamingMoments(self.timesteps, ())
        for ids, states, steps in self.iter_groups(mine, group_size):
            n, s = len(ids), self.num_steps
            t = torch.tensor(self.timesteps).repeat(n)
            base_next, expert_next = self.split_next(ids, states[:, 1:], steps)
            target = relative_step(base_next, expert_next).reshape(n * s, -1)
            x_moments.update(states[:, :-1].float().reshape(n * s, *self.latent_shape), t)
            target_moments.update(target.double().pow(2).mean(dim=1), t)
        return x_moments, target_moments

    # -- integrity ----------------------------------------------------------------------------------

    def verify(self) -> list[str]:
        """Check every shard (size, sha256, tensor shapes) and image (sha256); return the problems found."""
        problems = []
        s, shape = self.num_steps, list(self.latent_shape)
        for shard in self.manifest["shards"]:
            path = self.root / shard["file"]
            if not path.is_file():
                problems.append(f"{shard['file']}: missing")
                continue
            if path.stat().st_size != shard["bytes"] or sha256_file(path) != shard["sha256"]:
                problems.append(f"{shard['file']}: checksum mismatch (corrupted or modified)")
                continue
            n = len(shard["trajectories"])
            with safe_open(path, framework="pt") as f:
                got = {k: f.get_slice(k).get_shape() for k in f.keys()}
            want = {"states": [n, s + 1, *shape], "relative_step": [n, s, *shape], "traj_ids": [n]}
            if got != want:
                problems.append(f"{shard['file']}: tensor shapes {got} do not match the manifest's {want}")
        for traj in self.manifest["trajectories"]:
            path = self.root / traj["image"]
            if not path.is_file():
                problems.append(f"{traj['image']}: missing")
            elif sha256_file(path) != traj["image_sha256"]:
                problems.append(f"{traj['image']}: checksum mismatch (corrupted or modified)")
        return problems


class TupleBatches:
    """``batch(step) -> (t (B,), x, base_next, expert_next (B, C, H, W))``: a pure function of ``step``.

    The tuple stream of an epoch visits every (trajectory, timestep) of ``traj_ids`` once in random
    order: a seeded permutation of the trajectories (per epoch) is cut into groups of
    ``group_size`` trajectories, and the tuples of each group are visited in a seeded random order.
    Rank ``r`` of ``world_size`` takes batches ``step * world_size + r`` of the stream. Only
    ``cache_groups`` groups are held in memory (in the storage dtype), so memory does not grow
    with the dataset; consecutive steps read each group once. ``group_size`` defaults to ~128 MiB
    of stored latents (at least 8 trajectories).
    """

    def __init__(self, store: Store, traj_ids: Sequence[int], batch_size: int, seed: int, rank: int = 0,
                 world_size: int = 1, group_size: int | None = None, cache_groups: int = 2):
        if not len(traj_ids):
            raise UserError("no trajectories to draw training tuples from")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.store = store
        self.ids = np.asarray(traj_ids, dtype=np.int64)
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        if group_size is None:
            bytes_per_traj = (2 * store.num_steps + 1) * int(np.prod(store.latent_shape)) * \
                STORE_DTYPES[store.manifest["config"]["store_dtype"]].itemsize
            group_size = max(8, (128 << 20) // bytes_per_traj)
        self.group_size = min(group_size, len(self.ids))
        self.cache_groups = cache_groups
        self._cache: OrderedDict[tuple[int, int], tuple[Tensor, Tensor, Tensor]] = OrderedDict()
        self._epoch_order: tuple[int, np.ndarray] | None = None

    @property
    def tuples_per_epoch(self) -> int:
        return len(self.ids) * self.store.num_steps

    def __call__(self, step: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        start = (step * self.world_size + self.rank) * self.batch_size
        epochs, within = np.divmod(np.arange(start, start + self.batch_size), self.tuples_per_epoch)
        groups, offsets = np.divmod(within, self.group_size * self.store.num_steps)
        parts, order = [], []
        for epoch, group in sorted(set(zip(epochs.tolist(), groups.tolist(), strict=True))):
            members = np.nonzero((epochs == epoch) & (groups == group))[0]
            ids, states, steps = self._group(epoch, group)
            j = self._within_group_order(epoch, group, len(ids) * self.store.num_steps)[offsets[members]]
            traj, s = np.divmod(j, self.store.num_steps)
            base_next, expert_next = self.store.split_next(ids[traj], states[traj, s + 1], steps[traj, s])
            parts.append((torch.as_tensor(self.store.timesteps)[s], states[traj, s].float(), base_next, expert_next))
            order.append(members)
        inverse = torch.as_tensor(np.argsort(np.concatenate(order)))
        return tuple(torch.cat(column)[inverse] for column in zip(*parts, strict=True))

    def _order(self, epoch: int) -> np.ndarray:
        if self._epoch_order is None or self._epoch_order[0] != epoch:
            self._epoch_order = (epoch, self.ids[np.random.default_rng([self.seed, epoch]).permutation(len(self.ids))])
        return self._epoch_order[1]

    def _within_group_order(self, epoch: int, group: int, n: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, group, 1]).permutation(n)

    def _group(self, epoch: int, group: int) -> tuple[np.ndarray, Tensor, Tensor]:
        """``(ids, states, relative_step)`` of one group of an epoch, from the cache or the shards."""
        key = (epoch, group)
        if key not in self._cache:
            ids = self._order(epoch)[group * self.group_size:(group + 1) * self.group_size]
            self._cache[key] = (ids, *self.store.read_rows(ids))
            while len(self._cache) > self.cache_groups:
                self._cache.popitem(last=False)
        self._cache.move_to_end(key)
        return self._cache[key]
