"""The safetensors file layout, parsed and checked in Python (no mmap, no I/O beyond the header).

Layout: 8-byte little-endian header length N, N bytes of a UTF-8 JSON object
{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the data
buffer. Offsets are relative to the buffer; tensors tile it exactly, in order, with no gaps. The
checks mirror the reference implementation's, so a file it rejects is rejected here too.
"""

from __future__ import annotations

import json
import math
import struct
from typing import NamedTuple

MAX_HEADER_BYTES = 100_000_000  # the reference implementation's limit

# dtype tag -> bits per element (every tag the format defines).
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8,
    "I16": 16, "U16": 16, "F16": 16, "BF16": 16,
    "I32": 32, "U32": 32, "F32": 32,
    "I64": 64, "U64": 64, "F64": 64,
    "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip


class TensorEntry(NamedTuple):
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute byte offset in the file
    nbytes: int


class FormatError(ValueError):
    """The bytes are not a valid safetensors file; the message says why."""


def header_length(prefix: bytes, file_size: int) -> int:
    """N from the first 8 bytes, checked against the limit and the file size."""
    if len(prefix) < 8:
        raise FormatError(f"file is {file_size} bytes, too short for a header")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER_BYTES:
        raise FormatError(f"header too large ({n} bytes, limit {MAX_HEADER_BYTES})")
    if 8 + n > file_size:
        raise FormatError(f"header claims {n} bytes but the file has {file_size - 8} after the length")
    return n


def parse_header(raw: bytes, file_size: int) -> dict[str, TensorEntry]:
    """Tensor entries of a header `raw` (the N bytes after the length) of a file of `file_size`."""
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise FormatError(f"header is not UTF-8 JSON ({type(e).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError("header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not isinstance(metadata, dict):
        raise FormatError("'__metadata__' is not an object")
    data_start = 8 + len(raw)
    entries, spans = {}, []
    for name, info in header.items():
        entry, span = _entry(name, info, data_start)
        entries[name] = entry
        spans.append((span, name))
    expected = 0
    for (begin, end), name in sorted(spans):
        if begin != expected:
            raise FormatError(f"tensor {name!r} starts at byte {begin} of the data, expected {expected}")
        expected = end
    if expected != file_size - data_start:
        raise FormatError(f"tensors cover {expected} data bytes but the file holds {file_size - data_start}")
    return entries


def _entry(name: str, info: object, data_start: int) -> tuple[TensorEntry, tuple[int, int]]:
    if not isinstance(info, dict):
        raise FormatError(f"entry {name!r} is not an object")
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(dtype, str) or dtype not in DTYPE_BITS:
        raise FormatError(f"tensor {name!r} has unknown dtype {dtype!r}")
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        raise FormatError(f"tensor {name!r} has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
        raise FormatError(f"tensor {name!r} has invalid data_offsets {offsets!r}")
    begin, end = offsets
    bits = math.prod(shape) * DTYPE_BITS[dtype]
    if end < begin or bits % 8 or bits // 8 != end - begin:
        raise FormatError(f"tensor {name!r}: data_offsets {offsets} do not fit {dtype} {shape}")
    return TensorEntry(dtype, tuple(shape), data_start + begin, end - begin), (begin, end)


def _is_count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0
