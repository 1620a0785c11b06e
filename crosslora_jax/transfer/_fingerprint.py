"""A checkpoint's content fingerprint: sha256 over its files, each hashed once per file version.

Base checkpoints are several GB, so each file's digest is memoised by (resolved path, size,
mtime) in a JSON file the caller names (the subspace cache keeps it in its folder).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from crosslora_jax._progress import Progress
from crosslora_jax.io.safetensors_checkpoint import Checkpoint

_HASH_BLOCK = 16 << 20


def checkpoint_fingerprint(ckpt: Checkpoint, memo_file: Path, progress: Progress) -> str:
    """24 hex digits of sha256 over (file name, file sha256) of the checkpoint's files.

    A file not in `memo_file` is hashed (said through `progress.note`: it can take minutes) and
    recorded there; the memo is rewritten atomically.
    """
    try:
        memo = json.loads(memo_file.read_text()) if memo_file.exists() else {}
    except (OSError, json.JSONDecodeError):
        memo = {}
    digest = hashlib.sha256()
    for path in ckpt.fingerprint_files():
        st = path.stat()
        key = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            progress.note(f"fingerprinting {path} ({st.st_size / 1e9:.1f} GB; once per file version)")
            memo[key] = _file_sha256(path)
        digest.update(f"{path.name}:{memo[key]};".encode())
    tmp = memo_file.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(memo, indent=1))
    tmp.replace(memo_file)
    return digest.hexdigest()[:24]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
