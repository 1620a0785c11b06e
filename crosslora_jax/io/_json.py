"""Strict JSON reading: a missing, unreadable or malformed file is a one-line error naming it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from crosslora_jax._errors import CrossLoraError


def read_json_object(path: Path, error: type[CrossLoraError]) -> dict[str, Any]:
    """Parse `path` as a JSON object, raising `error(path, ...)` on any problem."""
    if not path.exists():
        raise error(path, "file not found")
    if not path.is_file():
        raise error(path, "expected a file, found a folder")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise error(path, f"cannot read: {e}") from None
    return parse_json_object(text, path, error)


def parse_json_object(text: str, where: Path | str, error: type[CrossLoraError]) -> dict[str, Any]:
    """`text` as a JSON object, raising `error(where, ...)` if it is malformed or not an object."""
    try:
        value = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as e:
        raise error(where, f"malformed JSON: {e}") from None
    if not isinstance(value, dict):
        raise error(where, f"expected a JSON object, found {type(value).__name__}")
    return value


def require_dir(path: Path, error: type[CrossLoraError], what: str) -> Path:
    if not path.exists():
        raise error(path, f"{what} folder not found")
    if not path.is_dir():
        raise error(path, f"{what} must be a folder, found a file")
    return path
