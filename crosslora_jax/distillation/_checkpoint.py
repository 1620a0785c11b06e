"""Training checkpoints (orbax): the step, the student's parameters and the optimizer state.

A checkpoint is written to `step_<N>.partial` and renamed into place, so an interrupted save
leaves only a folder that `restore` ignores; the newest complete one wins.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import optax
import orbax.checkpoint as ocp

from crosslora_jax.distillation._student import Trainable

_PREFIX = "step_"


def save(run_dir: Path, step: int, trainable: Trainable, opt_state: optax.OptState) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"{_PREFIX}{step}"
    partial = run_dir / f"{_PREFIX}{step}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    ocp.PyTreeCheckpointer().save(partial, {"trainable": trainable, "opt_state": opt_state})
    partial.rename(final)
    for old in _complete(run_dir)[:-1]:  # keep only the newest
        shutil.rmtree(old, ignore_errors=True)


def _complete(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob(f"{_PREFIX}*") if p.is_dir() and p.name[len(_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def restore(
    run_dir: Path, like: Trainable, opt: optax.GradientTransformation
) -> tuple[int, Trainable, optax.OptState] | None:
    """(step, trainable, optimizer state) of the newest checkpoint, or None when there is none."""
    if not run_dir.is_dir():
        return None
    complete = _complete(run_dir)
    if not complete:
        return None
    newest = complete[-1]
    template = {"trainable": like, "opt_state": opt.init(like)}
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), template)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    state = ocp.PyTreeCheckpointer().restore(newest, item=abstract, restore_args=restore_args)
    return int(newest.name[len(_PREFIX) :]), state["trainable"], state["opt_state"]


def remove(run_dir: Path) -> None:
    shutil.rmtree(run_dir, ignore_errors=True)
