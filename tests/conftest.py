"""Session set-up: XLA flags for every test and the subprocesses they start (see _xla_env), a
private user cache folder, so the CLI's default XLA compilation cache never writes to ~/.cache,
the hypothesis profiles, and the tiny model folders the doc snippets name (see _tiny)."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import _xla_env
import pytest

_xla_env.apply()
_CACHE_HOME = tempfile.mkdtemp(prefix="crosslora-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)

import _profiles  # noqa: E402, F401  (loads the hypothesis profile)
from _tiny import write_tiny_workspace  # noqa: E402


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder with `Qwen2.5-1.5B/`, `Llama-3.2-3B/`, `my_lora/` and two task files;
    copy it (`shutil.copytree`) before writing into it."""
    return write_tiny_workspace(tmp_path_factory.mktemp("tiny_workspace"))
