"""All-or-nothing output: write into a hidden sibling folder, move it into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from crosslora_jax._errors import OptionsError, OutputError


def check_output_location(output: Path, inputs: Iterable[Path], *, overwrite: bool) -> None:
    """Refuse outputs that would clobber inputs, existing work, or cannot be written."""
    out = output.resolve()
    for folder in inputs:
        src = folder.resolve()
        if out == src or src in out.parents or out in src.parents:
            raise OptionsError(output, f"output overlaps the input folder {folder}")
    if out.exists() and not out.is_dir():
        raise OutputError(output, "exists and is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputError(output, "exists and is not empty (pass --overwrite to replace it)")
    parent = out.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise OutputError(output, f"{parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(output, f"cannot write in {parent}")


@contextlib.contextmanager
def staged_output(output: Path) -> Iterator[Path]:
    """Yield an empty staging folder; on success it replaces `output`, on any error it vanishes."""
    output = output.resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.partial-", dir=output.parent))
    except OSError as e:
        raise OutputError(output, f"cannot create output: {e.strerror or e}") from None
    try:
        yield staging
        _replace(staging, output)
    except OSError as e:
        raise OutputError(output, f"writing failed: {e.strerror or e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace(staging: Path, output: Path) -> None:
    if not output.exists():
        staging.rename(output)
        return
    old = output.with_name(f".{output.name}.old-{os.getpid()}")
    output.rename(old)
    try:
        staging.rename(output)
    except OSError:
        old.rename(output)
        raise
    shutil.rmtree(old, ignore_errors=True)
