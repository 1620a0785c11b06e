"""Base-model subspaces, computed once per (checkpoint, role, layer, SVD settings).

In memory for one run (every adapter of the run shares them) and, with a cache folder, on disk
as one orbax checkpoint per layer, so later runs and interrupted runs skip finished SVDs.
Entry path: <cache>/<checkpoint fingerprint>/<settings key>/<role>/<layer>. orbax renames an
entry into place only when complete; we then record each file's size and CRC32 beside it. An
entry whose files do not match that record, that fails to restore or has the wrong shapes is
deleted and recomputed.

The record is checked before orbax opens an entry because orbax must not be handed damaged data:
when one of its concurrent tensorstore reads fails, its `run_sync` closes its private event loop
while the sibling reads are still in flight, and their completions then hit the closed loop
("RuntimeError: Event loop is closed" from tensorstore's threads, after the restore returned).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Sequence
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from crosslora_jax import _mesh
from crosslora_jax._errors import CheckpointError, OutputError
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax.io.hf_config import ModelConfig
from crosslora_jax.io.safetensors_checkpoint import Checkpoint
from crosslora_jax.ops.svd import Subspace, SvdSettings, checked_truncated_svd, effective_rank, engine_constants

_FINGERPRINTS = "fingerprints.json"
_CHECKSUMS = "crosslora_checksums.json"  # inside each entry; its temporary copies share the prefix
_HASH_BLOCK = 16 << 20


@dataclasses.dataclass
class StoreStats:
    computed: int = 0  # layers whose SVD ran
    cached: int = 0  # layers restored from the cache folder
    svd_seconds: float = 0.0
    read_seconds: float = 0.0
    cache_seconds: float = 0.0


class SubspaceStore:
    """Truncated SVD factors of base-model weights, by (checkpoint, role, layer)."""

    def __init__(
        self, settings: SvdSettings, cache_dir: Path | str | None = None, progress: Progress | None = None
    ) -> None:
        self.settings = settings
        self._progress = progress or Progress()  # says when a first-time checkpoint hash takes a while
        self.cache_dir = None if cache_dir is None else absolute(cache_dir)  # orbax refuses relative paths
        self.stats = StoreStats()
        self._fingerprints: dict[Path, str] = {}
        # The previous call's layers per (model, role): the linear layer map is monotone, so a
        # source layer is only ever reused by the next chunk. Keeps host memory at one chunk.
        self._last: dict[tuple[Path, str], dict[int, Subspace]] = {}
        self._svd = _mesh.sharded_jit(lambda w, ids: checked_truncated_svd(w, ids, settings))
        if self.cache_dir is not None:
            _check_cache_folder(self.cache_dir)
        self._checkpointer = ocp.PyTreeCheckpointer() if self.cache_dir else None

    def get(self, model: ModelConfig, ckpt: Checkpoint, role: str, layers: Sequence[int]) -> Subspace:
        """Host arrays [len(layers), ...] for `role` at `layers` (repeats allowed)."""
        previous = self._last.pop((model.folder, role), {})
        self._last = {key: value for key, value in self._last.items() if key[1] == role}
        unique = sorted(set(layers))
        found = {layer: previous[layer] for layer in unique if layer in previous}
        if self.cache_dir is not None:
            started = time.perf_counter()
            todo = [layer for layer in unique if layer not in found]
            restored = {layer: self._restore(model, ckpt, role, layer) for layer in todo}
            hits = np.asarray([restored[layer] is not None for layer in todo], bool)
            if jax.process_count() > 1:  # every process must take the same branch into the collectives
                agreed = np.asarray(multihost_utils.broadcast_one_to_all(hits), bool)
                if (agreed & ~hits).any():
                    raise OutputError(self.cache_dir, "cache entries differ between processes; use a shared folder")
                hits = agreed
            for layer, hit in zip(todo, hits, strict=True):
                if hit:
                    found[layer] = restored[layer]  # type: ignore[assignment]
                    self.stats.cached += 1
            self.stats.cache_seconds += time.perf_counter() - started
        missing = [layer for layer in unique if layer not in found]
        if missing:
            computed = self._compute(model, ckpt, role, missing)
            for n, layer in enumerate(missing):
                found[layer] = Subspace(*(x[n] for x in computed))
                self._save(ckpt, role, layer, found[layer])
        self._last[(model.folder, role)] = found
        return Subspace(*(np.stack(xs) for xs in zip(*(found[layer] for layer in layers), strict=True)))

    def _compute(self, model: ModelConfig, ckpt: Checkpoint, role: str, layers: Sequence[int]) -> Subspace:
        names = [model.arch.weight_name(role, layer) for layer in layers]
        role_rows = model.row_ranges.get(role)  # a fused module's tensor: only this role's rows are read
        read_time = 0.0

        def read(rows: Sequence[int]) -> np.ndarray:
            nonlocal read_time
            started = time.perf_counter()
            out = ckpt.read_stack_stored([names[r] for r in rows], role_rows)
            read_time += time.perf_counter() - started
            return out

        started = time.perf_counter()
        w = _mesh.place_stack(len(layers), model.shapes[role], read)
        ids = _mesh.shard_layers(np.asarray(layers, np.int32))
        sub, finite = self._svd(w, ids)
        for row in np.flatnonzero(~_mesh.to_host(finite, len(layers))):
            raise CheckpointError(ckpt.file_of(names[row]), f"tensor {names[row]!r} contains NaN or Inf")
        host = Subspace(*(_mesh.to_host(x, len(layers)) for x in sub))
        self.stats.computed += len(layers)
        self.stats.read_seconds += read_time
        self.stats.svd_seconds += time.perf_counter() - started - read_time
        return host

    # ------------------------------------------------------------------ disk cache

    def _entry(self, ckpt: Checkpoint, role: str, layer: int) -> Path:
        assert self.cache_dir is not None
        key = {**dataclasses.asdict(self.settings), **engine_constants(self.settings), "compute": "float32"}
        settings = json.dumps(key, sort_keys=True)
        settings_key = hashlib.sha256(settings.encode()).hexdigest()[:16]
        return self.cache_dir / self._fingerprint(ckpt) / settings_key / role / f"layer_{layer:05d}"

    def _restore(self, model: ModelConfig, ckpt: Checkpoint, role: str, layer: int) -> Subspace | None:
        path = self._entry(ckpt, role, layer)
        if not path.exists():
            return None
        m, n = model.shapes[role]
        r = effective_rank(self.settings.rank, m, n)
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
            tree = self._checkpointer.restore(path)  # type: ignore[union-attr]
            entry = Subspace(**{k: np.asarray(tree[k], np.float32) for k in want})
            ok = all(getattr(entry, k).shape == shape for k, shape in want.items())
            ok = ok and all(np.isfinite(x).all() for x in entry)
        except Exception as e:
            logging.warning("cache entry %s is damaged (%s); recomputing", path, type(e).__name__)
            ok = False
        if not ok:
            shutil.rmtree(path, ignore_errors=True)
            return None
        return entry

    def _save(self, ckpt: Checkpoint, role: str, layer: int, entry: Subspace) -> None:
        if self.cache_dir is None:
            return
        # Every process calls save (orbax synchronises them); the primary process writes.
        started = time.perf_counter()
        path = self._entry(ckpt, role, layer)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._checkpointer.save(path, entry._asdict(), force=True)  # type: ignore[union-attr]
        # orbax's save ends in a barrier, so the files are final on every process; each writes the
        # same record (atomically), so none restores an entry before its record exists.
        tmp = path / f"{_CHECKSUMS}.tmp{os.getpid()}"
        tmp.write_text(json.dumps(_entry_files(path)))
        tmp.replace(path / _CHECKSUMS)
        self.stats.cache_seconds += time.perf_counter() - started

    def _fingerprint(self, ckpt: Checkpoint) -> str:
        """sha256 over the checkpoint's file contents, memoised by (path, size, mtime)."""
        if ckpt.folder in self._fingerprints:
            return self._fingerprints[ckpt.folder]
        assert self.cache_dir is not None
        memo_path = self.cache_dir / _FINGERPRINTS
        try:
            memo = json.loads(memo_path.read_text()) if memo_path.exists() else {}
        except (OSError, json.JSONDecodeError):
            memo = {}
        digest = hashlib.sha256()
        for path in ckpt.fingerprint_files():
            st = path.stat()
            key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
            if key not in memo:
                self._progress.note(f"fingerprinting {path} ({st.st_size / 1e9:.1f} GB; once per file version)")
                memo[key] = _file_sha256(path)
            digest.update(f"{path.name}:{memo[key]};".encode())
        tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo, indent=1))
        tmp.replace(memo_path)
        self._fingerprints[ckpt.folder] = digest.hexdigest()[:24]
        return self._fingerprints[ckpt.folder]


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
        while block := f.read(_HASH_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
