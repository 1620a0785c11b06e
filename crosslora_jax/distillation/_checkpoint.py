"""Training checkpoints (orbax): the step, the student's parameters, the optimizer state, the
plateau rule's best parameters, and the run so far as JSON (`TrainState`: loss curve, held-out
evaluations, tokens, seconds, the rule's patience count), so a resumed run reports the whole run.

A checkpoint is written to `step_<N>.partial` and renamed into place, so an interrupted save
leaves only a folder that `restore` ignores; the newest complete one wins.

Several processes: every process calls `save` and `restore` (orbax writes and reads sharded
arrays collectively); process 0 alone renames and deletes folders, between barriers, and its
view of which checkpoint is newest is the one every process restores.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from jax.sharding import Sharding

from crosslora_jax.distillation._student import Trainable
from crosslora_jax.distillation._train import Snapshot, TrainState

_PREFIX = "step_"
_STATE = "train_state.json"


def _primary() -> bool:
    return jax.process_index() == 0


def _barrier(name: str) -> None:
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def save(run_dir: Path, snapshot: Snapshot) -> None:
    step = snapshot.step
    final = run_dir / f"{_PREFIX}{step}"
    partial = run_dir / f"{_PREFIX}{step}.partial"
    if _primary():
        run_dir.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(partial, ignore_errors=True)
    _barrier(f"distill checkpoint {step}: folder ready")
    ocp.PyTreeCheckpointer().save(partial, _arrays(snapshot.trainable, snapshot.opt_state, snapshot.best))
    if _primary():
        (partial / _STATE).write_text(json.dumps(snapshot.state.to_json()))
        partial.rename(final)
        for old in _complete(run_dir)[:-1]:  # keep only the newest
            shutil.rmtree(old, ignore_errors=True)
    _barrier(f"distill checkpoint {step}: in place")


def _complete(run_dir: Path) -> list[Path]:
    found = [p for p in run_dir.glob(f"{_PREFIX}*") if p.is_dir() and p.name[len(_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(_PREFIX) :]))


def _newest_step(run_dir: Path) -> int:
    """The newest complete checkpoint's step (process 0's view), or -1 when there is none."""
    complete = _complete(run_dir) if run_dir.is_dir() else []
    newest = int(complete[-1].name[len(_PREFIX) :]) if complete else -1
    if jax.process_count() > 1:
        newest = int(multihost_utils.broadcast_one_to_all(np.asarray(newest, np.int64)))
    return newest


def _arrays(trainable: Trainable, opt_state: optax.OptState, best: Trainable | None) -> dict:
    return {"trainable": trainable, "opt_state": opt_state, **({} if best is None else {"best": best})}


def restore(
    run_dir: Path,
    like: Trainable,
    opt: optax.GradientTransformation,
    sharding: Sharding | None = None,
    *,
    with_best: bool = False,
) -> Snapshot | None:
    """The newest checkpoint, or None when there is none; arrays on `sharding` (default: this
    process's first device). `with_best`: the run keeps best parameters (the plateau rule)."""
    step = _newest_step(run_dir)
    if step < 0:
        return None
    sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    shapes = _arrays(like, jax.eval_shape(opt.init, like), like if with_best else None)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), shapes)
    restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
    folder = run_dir / f"{_PREFIX}{step}"
    arrays = ocp.PyTreeCheckpointer().restore(folder, item=abstract, restore_args=restore_args)
    state = TrainState.from_json(json.loads((folder / _STATE).read_text()))
    return Snapshot(step, arrays["trainable"], arrays["opt_state"], arrays.get("best"), state)


def remove(run_dir: Path) -> None:
    _barrier("distill finished")
    if _primary():
        shutil.rmtree(run_dir, ignore_errors=True)
