"""Session set-up: XLA flags for every test and the subprocesses they start (see _xla_env), and a
private user cache folder, so the CLI's default XLA compilation cache never writes to ~/.cache."""

import atexit
import os
import shutil
import tempfile

import _xla_env

_xla_env.apply()
_CACHE_HOME = tempfile.mkdtemp(prefix="crosslora-test-cache-")
os.environ["XDG_CACHE_HOME"] = _CACHE_HOME
atexit.register(shutil.rmtree, _CACHE_HOME, True)
