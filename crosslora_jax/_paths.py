"""Users' paths (flags, flagfiles, API arguments) made absolute once, where the library starts.

orbax refuses relative checkpoint paths, and a path that means one folder must not mean another
once something changes the working directory; so every entry point resolves its paths first.
"""

from __future__ import annotations

import os
from pathlib import Path


def absolute(path: Path | str) -> Path:
    """`path` with `~` expanded, made absolute against the working directory, `..` removed.

    Symlinks are kept (not `Path.resolve`): a user's link to a model folder stays that link.
    """
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))
