"""Exception types: one per class of problem, each naming the file it is about.

The CLI turns any `CrossLoraError` into a one-line `error: ...` and exit status 2; library
callers catch the specific subclass they care about.
"""

from __future__ import annotations

import os


class CrossLoraError(Exception):
    """A problem with the user's input or environment, not a bug in crosslora_jax."""

    def __init__(self, where: str | os.PathLike[str] | None, problem: str) -> None:
        self.where = None if where is None else os.fspath(where)
        self.problem = problem
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class CheckpointError(CrossLoraError):
    """A base-model safetensors file or index is missing, damaged or inconsistent."""


class ConfigError(CrossLoraError):
    """A model `config.json` is missing, malformed, or describes an unsupported model."""


class AdapterError(CrossLoraError):
    """A PEFT adapter folder is missing, malformed, unsupported, or does not fit its model."""


class OptionsError(CrossLoraError):
    """Flags or options that contradict each other or are out of range."""


class OutputError(CrossLoraError):
    """The output location cannot be used or written."""


class TransferError(CrossLoraError):
    """The transfer ran but produced nothing usable (for example every module was gated out)."""


class TaskError(CrossLoraError):
    """An evaluation task file is missing or malformed."""


class TokenizerError(ConfigError):
    """A model's `tokenizer.json` (or `tokenizer_config.json`) is missing, malformed or does not fit its model."""


class PromptsError(CrossLoraError):
    """A prompts file is missing, not UTF-8, empty, or has a malformed line."""
