"""Session set-up: XLA flags for every test and the subprocesses they start (see _xla_env), a
private user cache folder, so the CLI's default XLA compilation cache never writes to ~/.cache
(the session shares that cache with them), the hypothesis profiles (_profiles), the marked suite
(_suites), and the tiny model folders the doc snippets name (_tiny)."""

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
import _suites  # noqa: E402
from _tiny import write_tiny_workspace  # noqa: E402

from crosslora_jax import enable_compilation_cache  # noqa: E402

# XLA's persistent compilation cache under the session's cache folder, the one the CLI
# subprocesses use by default: a program compiled once (here or in a command the tests start) is
# loaded, not compiled, by the next process or re-created jit of the same shapes.
enable_compilation_cache()


@pytest.fixture(scope="session")
def tiny_workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A read-only folder with `Qwen2.5-1.5B/`, `Llama-3.2-3B/`, `my_lora/` and two task files;
    copy it (`shutil.copytree`) before writing into it."""
    return write_tiny_workspace(tmp_path_factory.mktemp("tiny_workspace"))


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the tests `_suites.SLOW` names, and refuse an entry that names none (whole-suite runs)."""
    used = set()
    for item in items:
        for prefix in _suites.SLOW:
            if item.nodeid.startswith(prefix):
                item.add_marker(pytest.mark.slow)
                used.add(prefix)
        function, _, params = item.nodeid.partition("[")
        if function in _suites.SAMPLED:
            if params[:-1] == _suites.SAMPLED[function][0]:
                used.add(function)  # the kept parameter set exists
            else:
                item.add_marker(pytest.mark.slow)
    whole = [Path(config.rootpath, a).resolve() for a in config.args] == [Path(__file__).resolve().parent]
    stale = {*_suites.SLOW, *_suites.SAMPLED} - used
    if whole and stale and not config.getoption("keyword"):  # a run of chosen files sees only some tests
        raise pytest.UsageError(f"tests/_suites.py names tests that do not exist: {sorted(stale)}")
