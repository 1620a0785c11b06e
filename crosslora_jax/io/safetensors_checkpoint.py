"""Lazy reads of an HF safetensors checkpoint, single-file or sharded, without torch.

Only the tensors asked for are read (memory-mapped `safe_open`); bf16/f16/f32 come back as
NumPy arrays (bf16 through ml_dtypes) and are widened to float32 by `read_f32`.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from crosslora_jax._errors import CheckpointError
from crosslora_jax.io._json import read_json_object, require_dir

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
FLOAT_DTYPES = frozenset({"BF16", "F16", "F32", "F64"})


class SafetensorsFile:
    """One safetensors file opened lazily; errors name the file and the tensor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise CheckpointError(path, "file not found")
        try:
            self._handle: Any = safe_open(str(path), framework="numpy")
            self._names = frozenset(self._handle.keys())
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(path, f"not a valid safetensors file: {_one_line(e)}") from None

    def names(self) -> frozenset[str]:
        return self._names

    def _slice(self, name: str) -> Any:
        if name not in self._names:
            raise CheckpointError(self.path, f"tensor {name!r} not found")
        try:
            return self._handle.get_slice(name)
        except (SafetensorError, ValueError, TypeError) as e:
            raise CheckpointError(self.path, f"tensor {name!r}: {_one_line(e)}") from None

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(int(d) for d in self._slice(name).get_shape())

    def dtype(self, name: str) -> str:
        """The safetensors dtype tag, e.g. 'BF16'."""
        return str(self._slice(name).get_dtype())

    def read(self, name: str) -> np.ndarray:
        """The tensor in its stored dtype."""
        dtype = self.dtype(name)
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(self.path, f"tensor {name!r} has dtype {dtype}, expected a float")
        try:
            return np.asarray(self._handle.get_tensor(name))
        except (SafetensorError, ValueError, TypeError, OSError) as e:
            raise CheckpointError(self.path, f"tensor {name!r}: {_one_line(e)}") from None

    def read_f32(self, name: str, *, check_finite: bool = True) -> np.ndarray:
        x = self.read(name).astype(np.float32)
        if check_finite and not np.isfinite(x).all():
            raise CheckpointError(self.path, f"tensor {name!r} contains NaN or Inf")
        return x


class Checkpoint:
    """The weights of one HF model folder: `model.safetensors` or a sharded index."""

    def __init__(self, folder: Path) -> None:
        self.folder = require_dir(Path(folder), CheckpointError, "model")
        index_path = self.folder / INDEX_FILE
        single_path = self.folder / SINGLE_FILE
        if index_path.exists():
            self._where = _read_index(index_path)
        elif single_path.exists():
            self._where = None
        else:
            bins = sorted(p.name for p in self.folder.glob("*.bin"))
            hint = f" ({bins[0]} is a pickle file and is never loaded)" if bins else ""
            raise CheckpointError(self.folder, f"no {SINGLE_FILE} or {INDEX_FILE} found{hint}")
        self._files: dict[str, SafetensorsFile] = {}

    def _open(self, file_name: str) -> SafetensorsFile:
        if file_name not in self._files:
            self._files[file_name] = SafetensorsFile(self.folder / file_name)
        return self._files[file_name]

    def _file_for(self, name: str) -> SafetensorsFile:
        if self._where is None:
            handle = self._open(SINGLE_FILE)
            if name not in handle.names():
                raise CheckpointError(handle.path, f"tensor {name!r} not found")
            return handle
        if name not in self._where:
            raise CheckpointError(self.folder / INDEX_FILE, f"tensor {name!r} is not listed")
        handle = self._open(self._where[name])
        if name not in handle.names():
            raise CheckpointError(handle.path, f"tensor {name!r} is listed in the index but missing")
        return handle

    def has(self, name: str) -> bool:
        if self._where is not None:
            return name in self._where
        return name in self._open(SINGLE_FILE).names()

    def file_of(self, name: str) -> Path:
        return self._file_for(name).path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file_for(name).shape(name)

    def dtype(self, name: str) -> str:
        return self._file_for(name).dtype(name)

    def read_f32(self, name: str) -> np.ndarray:
        return self._file_for(name).read_f32(name)

    def read_stack(self, names: Iterable[str]) -> np.ndarray:
        """Float32 tensors of equal shape stacked on a new leading axis: [L, ...]."""
        return np.stack([self.read_f32(n) for n in names])

    def fingerprint_files(self) -> list[Path]:
        """The files whose bytes define this checkpoint's weights."""
        if self._where is None:
            return [self.folder / SINGLE_FILE]
        return [self.folder / INDEX_FILE] + [self.folder / f for f in sorted(set(self._where.values()))]


def _read_index(path: Path) -> dict[str, str]:
    index = read_json_object(path, CheckpointError)
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(path, "'weight_map' must be a non-empty object")
    for name, file_name in weight_map.items():
        if not isinstance(file_name, str) or not _is_plain_file_name(file_name):
            raise CheckpointError(path, f"'weight_map' entry {name!r} names {file_name!r}, not a file in this folder")
    return dict(weight_map)


def _is_plain_file_name(name: str) -> bool:
    p = PurePosixPath(name)
    return len(p.parts) == 1 and name not in (".", "..") and "\\" not in name


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
