"""Session set-up: XLA flags for every test and the subprocesses they start (see _xla_env)."""

import _xla_env

_xla_env.apply()
