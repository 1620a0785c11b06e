"""The training loop: one jitted optax step on the student's parameters only.

With a `Placement` the step is data parallel: each device takes its rows of the batch, the frozen
weights are stored sharded and gathered one layer at a time (FSDP), and the gradient (a mean over
the whole batch) and the update come out replicated; the result equals one device's up to the
order of float sums.

Legend: N sequences, B batch, T positions, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from crosslora_jax import _interrupt, _mesh
from crosslora_jax._progress import Progress
from crosslora_jax.distillation._objectives import OBJECTIVES, Objective
from crosslora_jax.distillation._placement import Placement
from crosslora_jax.distillation._student import Fixed, Student, Trainable, student_lora
from crosslora_jax.eval import Lora, ModelSpec, logits
from crosslora_jax.ops.distill import full_kl


class Batch(NamedTuple):
    """Student inputs [B, T] int32, next tokens [B, T] (the sequence objective's labels) and the
    mask [B, T] of positions that count. Teacher inputs equal student inputs when the two models
    share a vocabulary; when they do not, `sequence` runs no teacher, and `shared` and `bytes` give the
    teacher its own tokenization of the text (`teacher_inputs` [B, U]) and, per student position,
    the teacher position that has read the same bytes (`teacher_positions` [B, T], −1: none)."""

    inputs: jax.Array
    targets: jax.Array
    mask: jax.Array
    teacher_inputs: jax.Array | None = None
    teacher_positions: jax.Array | None = None

    def take(self, rows: Any) -> Batch:
        """The batch's rows `rows` (an index array or a slice) of every field it has."""
        return Batch(*(None if x is None else x[rows] for x in self))


class Frozen(NamedTuple):
    """Everything the step reads but never changes."""

    target: Mapping[str, Any]
    source: Mapping[str, Any] | None  # None when the objective runs no teacher pass (`sequence`)
    source_lora: Lora | None
    fixed: Fixed
    # tokenizers that differ, (teacher's, student's): `shared` the [S] ids of the tokens both
    # vocabularies have; `bytes` each id's first byte ([V_s], [V_t])
    vocab_maps: tuple[jax.Array, jax.Array] | None = None


@dataclasses.dataclass(frozen=True)
class Loss:
    """What the step minimises and how it is computed; static under jit."""

    kd: str  # the objective's name in `OBJECTIVES`
    learn: str
    anchor_weight: float
    spec_target: ModelSpec
    spec_source: ModelSpec | None
    vocab: int | None = None  # the tokenizers' shared vocabulary size: logits beyond it (embedding padding) are cut
    product_weight: float = 0.75  # `product`'s b: the teacher's share of the mixed logits
    sequence_weight: float = 1.0  # `shared`'s / `bytes`' weight on the cross-entropy of the teacher's text
    remat: bool = False  # recompute the student's layers for the gradient (activation checkpointing)
    mesh: Mesh | None = None  # with a Placement's mesh: layers gathered inside the loop, the step's results replicated

    @property
    def objective(self) -> Objective:
        return OBJECTIVES[self.kd]

    @property
    def one_vocabulary(self) -> bool:
        return self.vocab is not None

    @property
    def layer_sharding(self) -> NamedSharding | None:
        return None if self.mesh is None else _mesh.replicated(self.mesh)

    def forward(
        self, spec: ModelSpec | None, params: Any, inputs: jax.Array, lora: Lora | None = None, *, trained: bool = False
    ) -> jax.Array:
        """Logits [B, T, V]: of the student when `trained` (remat'd when asked), else of a model
        that gets no gradient."""
        z = logits(spec, params, inputs, lora, remat=self.remat and trained, layer_sharding=self.layer_sharding)  # type: ignore[arg-type]
        return z if trained else jax.lax.stop_gradient(z)


def _distill_loss(loss: Loss, trainable: Trainable, frozen: Frozen, batch: Batch) -> jax.Array:
    lora = student_lora(loss.learn, trainable, frozen.fixed)
    z = loss.forward(loss.spec_target, frozen.target, batch.inputs, lora, trained=True)
    return loss.objective.loss(loss, z, frozen, batch)


def _anchor_loss(loss: Loss, trainable: Trainable, frozen: Frozen, batch: Batch) -> jax.Array:
    """KL(target base ‖ student) on the target base's own samples."""
    lora = student_lora(loss.learn, trainable, frozen.fixed)
    base = loss.forward(loss.spec_target, frozen.target, batch.inputs)
    return full_kl(base, loss.forward(loss.spec_target, frozen.target, batch.inputs, lora, trained=True), batch.mask)


def optimizer(
    steps: int, learning_rate: float, warmup_steps: int, weight_decay: float, clip_norm: float
) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay to 0, after clipping the global gradient norm."""
    warmup = min(warmup_steps, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1), 0.0)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


@functools.partial(jax.jit, static_argnames=("loss", "opt"), donate_argnames=("trainable", "opt_state"))
def train_step(
    loss: Loss,
    opt: optax.GradientTransformation,
    trainable: Trainable,
    opt_state: optax.OptState,
    frozen: Frozen,
    batch: Batch,
    anchor: Batch | None,
) -> tuple[Trainable, optax.OptState, jax.Array]:
    """One AdamW step; gradients are taken with respect to `trainable` only."""

    def loss_fn(t: Trainable) -> tuple[jax.Array, jax.Array]:
        value = _distill_loss(loss, t, frozen, batch)
        total = value if anchor is None else value + loss.anchor_weight * _anchor_loss(loss, t, frozen, anchor)
        return total, value

    (_, value), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    updates, opt_state = opt.update(grads, opt_state, trainable)
    out = optax.apply_updates(trainable, updates), opt_state, value
    if loss.mesh is not None:  # the state stays replicated step after step
        out = jax.lax.with_sharding_constraint(out, _mesh.replicated(loss.mesh))
    return out


@functools.partial(jax.jit, static_argnames=("loss",))
def _eval_loss(loss: Loss, trainable: Trainable, frozen: Frozen, batch: Batch) -> jax.Array:
    return _distill_loss(loss, trainable, frozen, batch)


def heldout_loss(
    loss: Loss,
    trainable: Trainable,
    frozen: Frozen,
    data: Batch,
    batch_size: int,
    placement: Placement | None = None,
) -> float:
    """The objective on held-out teacher samples (mask-weighted mean over all of them)."""
    total = weight = 0.0
    for start in range(0, int(data.inputs.shape[0]), batch_size):
        part = data.take(slice(start, start + batch_size))
        w = float(np.sum(np.asarray(part.mask)))
        placed = part if placement is None else placement.batch(part)
        total += float(_eval_loss(loss, trainable, frozen, placed)) * w
        weight += w
    return total / max(weight, 1.0)


def batch_rows(seed: int, step: int, count: int, batch_size: int) -> np.ndarray:
    """The sequences of step `step`: a function of (seed, step) only, so a resumed run draws the
    same batches as an uninterrupted one."""
    return np.random.default_rng([seed, step]).choice(count, size=batch_size, replace=False)


@dataclasses.dataclass
class TrainResult:
    trainable: Trainable
    losses: list[tuple[int, float]]  # (step, mean loss over the steps since the last entry)
    tokens: int
    seconds: float


def train(
    loss: Loss,
    student: Student,
    frozen: Frozen,
    data: Batch,
    anchor_data: Batch | None,
    *,
    steps: int,
    batch_size: int,
    opt: optax.GradientTransformation,
    seed: int,
    log_every: int,
    progress: Progress,
    start: tuple[int, Trainable, optax.OptState] | None = None,
    on_checkpoint: Callable[[int, Trainable, optax.OptState], None] | None = None,
    checkpoint_every: int = 0,
    placement: Placement | None = None,
) -> TrainResult:
    """`steps` steps from step 0 (or from `start`: a checkpoint's step, parameters, optimizer state,
    placed as `placement` places them). Without a `placement`, arrays are used as given."""
    if start is not None:
        first, trainable, opt_state = start
    elif placement is None:
        first, trainable, opt_state = 0, student.trainable, opt.init(student.trainable)
    else:
        first, trainable = 0, placement.replicate(student.trainable)
        opt_state = placement.init_optimizer(opt, trainable)
    trainable = jax.tree.map(jnp.copy, trainable)  # own copies: the step donates its inputs

    def place(batch: Batch) -> Batch:
        return batch if placement is None else placement.batch(batch)

    losses: list[tuple[int, float]] = []
    window: list[jax.Array] = []
    tokens = 0
    started = time.perf_counter()
    progress.start(steps, -(-steps // log_every))
    if first:
        progress.step(first, f"resumed at step {first}")
    n = int(data.inputs.shape[0])
    for step in range(first, steps):
        _interrupt.check()
        rows = batch_rows(seed, step, n, batch_size)
        batch = place(data.take(rows))
        anchor = None
        if anchor_data is not None:
            arows = batch_rows(seed + 1, step, int(anchor_data.inputs.shape[0]), batch_size)
            anchor = place(anchor_data.take(arows))
        trainable, opt_state, value = train_step(loss, opt, trainable, opt_state, frozen, batch, anchor)
        window.append(value)
        tokens += int(np.sum(data.mask[rows]))
        done = step + 1
        if on_checkpoint is not None and checkpoint_every and done % checkpoint_every == 0 and done < steps:
            on_checkpoint(done, trainable, opt_state)
        if done % log_every == 0 or done == steps:
            mean = float(np.mean(jax.device_get(window)))
            losses.append((done, mean))
            rate = tokens / max(time.perf_counter() - started, 1e-9)
            progress.step(len(window), f"step {done}/{steps} loss {mean:.4f}, {rate:,.0f} tokens/s")
            window = []
    progress.close()
    return TrainResult(trainable, losses, tokens, time.perf_counter() - started)
