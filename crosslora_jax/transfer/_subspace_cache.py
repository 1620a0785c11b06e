"""Base-model subspaces on disk, one orbax checkpoint per (checkpoint, SVD settings, role, layer).

Entry path: <cache>/<checkpoint fingerprint>/<settings key>/<role>/layer_<layer>; the settings key
hashes the SVD settings with the engine's fixed constants and the entry format, so other settings
(and entries written before the format held the SVD check and route) are other entries. An entry
holds the factors, the energy share, the a-posteriori check's figures and the route that
produced the factors (a gram result the check sent to the exact SVD says so).
orbax renames an entry into place only when complete; we then record each file's size and CRC32
beside it. An entry whose files do not match that record, that fails to restore or has the wrong
shapes is deleted (and so recomputed by the caller).

The record is checked before orbax opens an entry because orbax must not be handed damaged data:
when one of its concurrent tensorstore reads fails, its `run_sync` closes its private event loop
while the sibling reads are still in flight, and their completions then hit the closed loop
("RuntimeError: Event loop is closed" from tensorstore's threads, after the restore returned).

Multi-host: every process looks up the same layers and takes process 0's answer, so all of them
take the same branch into the collectives that compute the misses; every process calls save
(orbax synchronises them and the primary process writes).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from crosslora_jax._errors import OutputError
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops.svd import Subspace, SvdSettings, effective_rank, engine_constants, residual_tolerance
from crosslora_jax.transfer._fingerprint import checkpoint_fingerprint
from crosslora_jax.transfer.report import SvdQuality

_FINGERPRINTS = "fingerprints.json"
_CHECKSUMS = "crosslora_checksums.json"  # inside each entry; its temporary copies share the prefix
_CRC_BLOCK = 16 << 20
# 2: entries hold the SVD check (residual, gap_estimate, bound) and the route.
_FORMAT = 2
# Routes are stored by their index here (orbax stores arrays); append only, never reorder.
ROUTES = ("gram-eigh", "gram-lanczos", "exact", "randomized", "gram-eigh→exact", "gram-lanczos→exact")
_QUALITY = ("residual", "gap_estimate", "bound")


class SubspaceCache:
    """Stores, loads and validates subspace entries under `folder` for one set of SVD settings."""

    def __init__(self, folder: Path | str, settings: SvdSettings, progress: Progress | None = None) -> None:
        self.folder = absolute(folder)  # orbax refuses relative paths
        _check_cache_folder(self.folder)
        self._progress = progress or Progress()  # says when a first-time checkpoint hash takes a while
        self._settings = settings
        key = {**dataclasses.asdict(settings), **engine_constants(settings), "compute": "float32", "format": _FORMAT}
        self._settings_key = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        self._fingerprints: dict[Path, str] = {}
        self._checkpointer = ocp.PyTreeCheckpointer()

    def load(
        self, ckpt: Checkpoint, role: str, layers: Sequence[int], shape: tuple[int, int]
    ) -> dict[int, tuple[Subspace, SvdQuality]]:
        """The valid entries among `layers` of `role` (an [m, n] weight), as host arrays and the
        SVD's quality by layer.

        With several processes, an entry counts only where process 0 found it; one that process 0
        has and this process lacks means the folder is not shared (`OutputError`).
        """
        restored = {layer: self._restore(ckpt, role, layer, shape) for layer in layers}
        hits = np.asarray([restored[layer] is not None for layer in layers], bool)
        if jax.process_count() > 1:  # every process must take the same branch into the collectives
            agreed = np.asarray(multihost_utils.broadcast_one_to_all(hits), bool)
            if (agreed & ~hits).any():
                raise OutputError(self.folder, "cache entries differ between processes; use a shared folder")
            hits = agreed
        return {layer: restored[layer] for layer, hit in zip(layers, hits, strict=True) if hit}  # type: ignore[misc]

    def save(self, ckpt: Checkpoint, role: str, layer: int, entry: Subspace, quality: SvdQuality) -> None:
        """Write one layer's entry and its checksum record; call it on every process."""
        path = self._entry(ckpt, role, layer)
        figures = {k: np.float32(getattr(quality, k)) for k in _QUALITY}
        tree = {**entry._asdict(), **figures, "route": np.int32(ROUTES.index(quality.route))}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._checkpointer.save(path, tree, force=True)
            # orbax's save ends in a barrier, so the files are final on every process; each writes
            # the same record (atomically), so none restores an entry before its record exists.
            tmp = path / f"{_CHECKSUMS}.tmp{os.getpid()}"
            tmp.write_text(json.dumps(_entry_files(path)))
            tmp.replace(path / _CHECKSUMS)
        except OSError as e:  # else the output folder would be named as what failed
            raise OutputError(self.folder, f"cannot write a cache entry: {e.strerror or e}") from None

    def _entry(self, ckpt: Checkpoint, role: str, layer: int) -> Path:
        if ckpt.folder not in self._fingerprints:
            memo = self.folder / _FINGERPRINTS
            self._fingerprints[ckpt.folder] = checkpoint_fingerprint(ckpt, memo, self._progress)
        return self.folder / self._fingerprints[ckpt.folder] / self._settings_key / role / f"layer_{layer:05d}"

    def _restore(
        self, ckpt: Checkpoint, role: str, layer: int, shape: tuple[int, int]
    ) -> tuple[Subspace, SvdQuality] | None:
        path = self._entry(ckpt, role, layer)
        if not path.exists():
            return None
        m, n = shape
        r = effective_rank(self._settings.rank, m, n)
        want = {"u": (m, r), "s": (r,), "v": (n, r), "energy": ()}
        try:
            recorded = json.loads((path / _CHECKSUMS).read_text())
        except (OSError, ValueError):
            recorded = None
        if recorded != _entry_files(path):
            logging.warning("cache entry %s is damaged or incomplete; recomputing", path)
            shutil.rmtree(path, ignore_errors=True)
            return None
        try:
            tree = self._checkpointer.restore(path)
            entry = Subspace(**{k: np.asarray(tree[k], np.float32) for k in want})
            ok = all(getattr(entry, k).shape == shape for k, shape in want.items())
            ok = ok and all(np.isfinite(x).all() for x in entry)
            code = int(np.asarray(tree["route"]))
            ok = ok and 0 <= code < len(ROUTES)
            figures = [float(np.asarray(tree[k])) for k in _QUALITY]
            quality = SvdQuality(ROUTES[code], *figures, flagged=figures[0] > residual_tolerance(m, n))
        except Exception as e:
            logging.warning("cache entry %s is damaged (%s); recomputing", path, type(e).__name__)
            ok = False
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            return None
        return entry, quality


def _check_cache_folder(cache_dir: Path) -> None:
    """Create `cache_dir` and prove it writable now, so a bad one fails before any compute."""
    if cache_dir.exists() and not cache_dir.is_dir():
        raise OutputError(cache_dir, "exists and is a file, not a cache folder")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=cache_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(cache_dir, f"cannot use as cache folder: {e.strerror or e}") from None


def _entry_files(entry: Path) -> dict[str, list[int]]:
    """{relative path: [size, CRC32]} of an entry's files, its checksum record excluded."""
    files = sorted(f for f in entry.rglob("*") if f.is_file() and not f.name.startswith(_CHECKSUMS))
    return {f.relative_to(entry).as_posix(): [f.stat().st_size, _file_crc32(f)] for f in files}


def _file_crc32(path: Path) -> int:
    crc = 0
    with path.open("rb") as f:
        while block := f.read(_CRC_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc
