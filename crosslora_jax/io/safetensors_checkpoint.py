"""Lazy reads of an HF safetensors checkpoint, single-file or sharded, without torch.

Only the tensors asked for are read (positioned reads, no mmap; headers parsed in
`_safetensors_format`); bf16/f16/f32 come back as NumPy arrays (bf16 through ml_dtypes) and are
widened to float32 by `read_f32`. `rows=(start, stop)` reads one block of leading-axis rows (one
role of a fused projection): in a C-order tensor that is one contiguous byte range.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePosixPath

import numpy as np

from crosslora_jax._errors import CheckpointError
from crosslora_jax.arch import RowRange
from crosslora_jax.io._json import read_json_object, require_dir
from crosslora_jax.io._safetensors_format import FormatError, TensorEntry, header_length, parse_header
from crosslora_jax.io.dtypes import BY_TAG

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class SafetensorsFile:
    """One safetensors file: the header parsed and checked on open, tensors read on demand.

    Tensors are read with plain positioned reads into fresh arrays, never memory-mapped, so pages
    of the file do not stay in this process's resident set after a chunk is done (peak RSS follows
    the chunk, not the model), and a file truncated after opening gives an error, not SIGBUS.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        if not path.is_file():
            raise CheckpointError(path, "file not found")
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                n = header_length(f.read(8), size)
                self._entries = parse_header(f.read(n), size)
        except FormatError as e:
            raise CheckpointError(path, f"not a valid safetensors file: {e}") from None
        except OSError as e:
            raise CheckpointError(path, f"cannot read: {_one_line(e)}") from None
        self._names = frozenset(self._entries)

    def names(self) -> frozenset[str]:
        return self._names

    def _entry(self, name: str) -> TensorEntry:
        if name not in self._names:
            raise CheckpointError(self.path, f"tensor {name!r} not found")
        return self._entries[name]

    def dtype(self, name: str) -> str:
        """The safetensors dtype tag, e.g. 'BF16'."""
        return self._entry(name).dtype

    def shape(self, name: str, rows: RowRange | None = None) -> tuple[int, ...]:
        """The tensor's shape, or that of its leading-axis rows [start, stop)."""
        return self._span(name, rows)[0]

    def _span(self, name: str, rows: RowRange | None) -> tuple[tuple[int, ...], int, int]:
        """(shape, first byte, byte count) of the tensor or of its rows [start, stop)."""
        entry = self._entry(name)
        if rows is None:
            return entry.shape, entry.begin, entry.nbytes
        start, stop = rows
        if not entry.shape or not 0 <= start < stop <= entry.shape[0]:
            raise CheckpointError(self.path, f"tensor {name!r} has shape {list(entry.shape)}, no rows {start}:{stop}")
        row_bytes = entry.nbytes // entry.shape[0]
        return (stop - start, *entry.shape[1:]), entry.begin + start * row_bytes, (stop - start) * row_bytes

    def read(self, name: str, out: np.ndarray | None = None, rows: RowRange | None = None) -> np.ndarray:
        """The tensor (or its rows [start, stop)) in its stored dtype, into `out` (same shape and
        dtype) when given."""
        entry = self._entry(name)
        if entry.dtype not in BY_TAG:
            raise CheckpointError(self.path, f"tensor {name!r} has dtype {entry.dtype}, expected a float")
        shape, begin, nbytes = self._span(name, rows)
        stored = BY_TAG[entry.dtype].numpy
        if out is None:
            out = np.empty(shape, stored)
        assert out.shape == shape and out.dtype == stored and out.flags.c_contiguous
        view = memoryview(out.reshape(-1).view(np.uint8))
        try:
            with open(self.path, "rb", buffering=0) as f:
                f.seek(begin)
                done = 0
                while done < nbytes:
                    got = f.readinto(view[done:])
                    if not got:
                        raise CheckpointError(self.path, f"tensor {name!r}: file ends early (truncated while in use?)")
                    done += got
        except OSError as e:
            raise CheckpointError(self.path, f"tensor {name!r}: {_one_line(e)}") from None
        return out

    def read_f32(self, name: str, rows: RowRange | None = None, *, check_finite: bool = True) -> np.ndarray:
        x = self.read(name, rows=rows).astype(np.float32, copy=False)
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

    def file_of(self, name: str) -> Path:
        return self._file_for(name).path

    def shape(self, name: str) -> tuple[int, ...]:
        return self._file_for(name).shape(name)

    def read_f32(self, name: str, rows: RowRange | None = None) -> np.ndarray:
        """The tensor, or its leading-axis rows [start, stop), as float32 checked for NaN/Inf."""
        return self._file_for(name).read_f32(name, rows)

    def read_stack(self, names: Iterable[str], rows: RowRange | None = None) -> np.ndarray:
        """Float32 tensors (or the same rows of each) of equal shape stacked on a new leading axis: [L, ...]."""
        return np.stack([self.read_f32(n, rows) for n in names])

    def read_stack_stored(self, names: Sequence[str], rows: RowRange | None = None) -> np.ndarray:
        """Tensors (or the same rows [start, stop) of each) of equal shape stacked [L, ...] in their
        stored float dtype (float32 if they mix), read straight into the stack and NOT checked for
        NaN/Inf: the caller widens and checks on its device, where both are cheap (on the host they
        cost ~2.5 ns per weight)."""
        files = [self._file_for(n) for n in names]
        dtypes = {f.dtype(n) for f, n in zip(files, names, strict=True)}
        if len(dtypes) > 1:
            return np.stack([f.read_f32(n, rows, check_finite=False) for f, n in zip(files, names, strict=True)])
        first = files[0].shape(names[0], rows)
        out = np.empty((len(names), *first), BY_TAG[dtypes.pop()].numpy)
        for row, (f, n) in enumerate(zip(files, names, strict=True)):
            if f.shape(n, rows) != first:
                raise CheckpointError(f.path, f"tensor {n!r} has shape {f.shape(n, rows)}, expected {first}")
            f.read(n, out=out[row], rows=rows)
        return out

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
