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
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding

from crosslora_jax import _interrupt, _mesh
from crosslora_jax._progress import Progress
from crosslora_jax.distillation._objectives import OBJECTIVES, Objective
from crosslora_jax.distillation._placement import Placement
from crosslora_jax.distillation._schedule import PlateauRule, PlateauState, StopReason
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
    """AdamW with linear warm-up then cosine decay to 0 over `steps`, after clipping the global
    gradient norm (the schedule without early stopping)."""
    warmup = min(warmup_steps, max(steps - 1, 0))
    schedule = optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup, max(steps, warmup + 1), 0.0)
    return optax.chain(optax.clip_by_global_norm(clip_norm), optax.adamw(schedule, weight_decay=weight_decay))


def plateau_optimizer(weight_decay: float, clip_norm: float) -> optax.GradientTransformation:
    """AdamW whose learning rate each step passes in (`train_step(..., learning_rate=)`, from a
    `PlateauRule`): a hyperparameter in the optimizer state, so it is checkpointed with it and
    changing it recompiles nothing."""
    adamw = optax.inject_hyperparams(optax.adamw)(learning_rate=0.0, weight_decay=weight_decay)
    return optax.chain(optax.clip_by_global_norm(clip_norm), adamw)


def _with_learning_rate(opt_state: optax.OptState, learning_rate: jax.Array) -> optax.OptState:
    clip, adamw = opt_state  # plateau_optimizer's chain
    rate = jnp.asarray(learning_rate, adamw.hyperparams["learning_rate"].dtype)
    return clip, adamw._replace(hyperparams={**adamw.hyperparams, "learning_rate": rate})


@functools.partial(jax.jit, static_argnames=("loss", "opt"), donate_argnames=("trainable", "opt_state"))
def train_step(
    loss: Loss,
    opt: optax.GradientTransformation,
    trainable: Trainable,
    opt_state: optax.OptState,
    frozen: Frozen,
    batch: Batch,
    anchor: Batch | None,
    learning_rate: float | jax.Array | None = None,
) -> tuple[Trainable, optax.OptState, jax.Array]:
    """One AdamW step; gradients are taken with respect to `trainable` only. `learning_rate`:
    this step's rate for a `plateau_optimizer` (None: the optimizer's own schedule)."""
    if learning_rate is not None:
        opt_state = _with_learning_rate(opt_state, learning_rate)

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


@functools.partial(jax.jit, static_argnames=("loss", "anchor"))
def _eval_loss(loss: Loss, trainable: Trainable, frozen: Frozen, batch: Batch, anchor: bool = False) -> jax.Array:
    return (_anchor_loss if anchor else _distill_loss)(loss, trainable, frozen, batch)


def heldout_loss(
    loss: Loss,
    trainable: Trainable,
    frozen: Frozen,
    data: Batch,
    batch_size: int,
    placement: Placement | None = None,
    *,
    anchor: bool = False,
) -> float:
    """The objective on held-out teacher samples (mask-weighted mean over all of them); with
    `anchor`, the anchor's KL(target base ‖ student) on held-out samples of the target base."""
    total = weight = 0.0
    for start in range(0, int(data.inputs.shape[0]), batch_size):
        part = data.take(slice(start, start + batch_size))
        w = float(np.sum(np.asarray(part.mask)))
        placed = part if placement is None else placement.batch(part)
        total += float(_eval_loss(loss, trainable, frozen, placed, anchor)) * w
        weight += w
    return total / max(weight, 1.0)


def batch_rows(seed: int, step: int, count: int, batch_size: int) -> np.ndarray:
    """The sequences of step `step`: a function of (seed, step) only, so a resumed run draws the
    same batches as an uninterrupted one."""
    return np.random.default_rng([seed, step]).choice(count, size=batch_size, replace=False)


@dataclasses.dataclass
class TrainState:
    """The run so far besides its arrays: checkpointed as JSON, so a resumed run reports the whole
    run (its loss curve, tokens and seconds) and keeps the plateau rule's patience count."""

    losses: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, mean loss since the last entry)
    heldout: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, monitored held-out value)
    tokens: int = 0
    seconds: float = 0.0  # training time before this process's part of the run
    plateau: PlateauState | None = None

    def to_json(self) -> dict[str, Any]:
        plateau = None if self.plateau is None else self.plateau.to_json()
        return {"losses": self.losses, "heldout": self.heldout, "tokens": self.tokens, "seconds": self.seconds,
                "plateau": plateau}  # fmt: skip

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainState:
        plateau = data["plateau"]
        return cls([(int(a), float(b)) for a, b in data["losses"]], [(int(a), float(b)) for a, b in data["heldout"]],
                   int(data["tokens"]), float(data["seconds"]),
                   None if plateau is None else PlateauState.from_json(plateau))  # fmt: skip


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """Everything a run needs to go on from `step`: what a checkpoint holds."""

    step: int
    trainable: Trainable
    opt_state: optax.OptState
    best: Trainable | None  # the plateau rule's best parameters so far (None: no rule)
    state: TrainState


@dataclasses.dataclass
class TrainResult:
    trainable: Trainable  # with the plateau rule: the parameters of the best held-out evaluation
    losses: list[tuple[int, float]]  # (step, mean loss over the steps since the last entry), whole run
    tokens: int  # whole run
    seconds: float  # whole run, resumed parts added
    heldout: list[tuple[int, float]] = dataclasses.field(default_factory=list)  # (step, monitored value)
    steps_run: int = 0
    stop: StopReason = "step cap"
    best_step: int | None = None  # with the plateau rule: the step of the parameters returned


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
    start: Snapshot | None = None,
    on_checkpoint: Callable[[Snapshot], None] | None = None,
    checkpoint_every: int = 0,
    checkpoint_seconds: float = 0.0,
    placement: Placement | None = None,
    rule: PlateauRule | None = None,
    monitor: Callable[[Trainable], float] | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> TrainResult:
    """Up to `steps` steps from step 0 (or from `start`, a checkpoint placed as `placement` places
    arrays). With a `rule` (`opt` a `plateau_optimizer`), `monitor` scores the parameters on held-out
    samples every `rule.eval_every` steps, the rule sets each step's learning rate and may stop
    early, and the best parameters are returned. Checkpoints (`on_checkpoint`) every
    `checkpoint_every` steps and, when `checkpoint_seconds` have passed since the last one, at the
    next progress line (process 0's clock decides, so every process saves together)."""
    if rule is not None and monitor is None:
        raise ValueError("a plateau rule needs a monitor")
    if start is not None:
        first, trainable, opt_state, best, state = start.step, start.trainable, start.opt_state, start.best, start.state
    else:
        first, state = 0, TrainState(plateau=None if rule is None else PlateauState())
        if placement is None:
            trainable, opt_state = student.trainable, opt.init(student.trainable)
        else:
            trainable = placement.replicate(student.trainable)
            opt_state = placement.init_optimizer(opt, trainable)
        best = None
    trainable = jax.tree.map(jnp.copy, trainable)  # own copies: the step donates its inputs
    plateau = state.plateau

    def place(batch: Batch) -> Batch:
        return batch if placement is None else placement.batch(batch)

    def evaluate(step: int) -> None:
        nonlocal best
        assert monitor is not None and plateau is not None and rule is not None
        value = monitor(trainable)
        state.heldout.append((step, value))
        if plateau.observe(rule, step, value):
            best = jax.tree.map(jnp.copy, trainable)
        lr = rule.learning_rate_at(step, plateau.scale)
        progress.note(f"held-out at step {step}: {value:.4f} (best {plateau.best:.4f} at step {plateau.best_step}; "
                      f"learning rate {lr:.2g})")  # fmt: skip

    started = last_saved = part_started = clock()

    def snapshot(step: int) -> Snapshot:
        nonlocal part_started
        now = clock()
        state.seconds, part_started = state.seconds + now - part_started, now  # the checkpoint holds the time so far
        return Snapshot(step, trainable, opt_state, best, state)

    window: list[jax.Array] = []
    tokens_before = state.tokens
    progress.start(steps, -(-steps // log_every))
    if first:
        progress.skip(first, f"resumed at step {first}")
    elif rule is not None:
        evaluate(0)
    n = int(data.inputs.shape[0])
    done = first
    for step in range(first, steps):
        if plateau is not None and plateau.stopped:
            break
        _interrupt.check()
        rows = batch_rows(seed, step, n, batch_size)
        batch = place(data.take(rows))
        anchor = None
        if anchor_data is not None:
            arows = batch_rows(seed + 1, step, int(anchor_data.inputs.shape[0]), batch_size)
            anchor = place(anchor_data.take(arows))
        lr = None if rule is None else rule.learning_rate_at(step, plateau.scale)  # type: ignore[union-attr]
        trainable, opt_state, value = train_step(loss, opt, trainable, opt_state, frozen, batch, anchor, lr)
        window.append(value)
        state.tokens += int(np.sum(data.mask[rows]))
        done = step + 1
        logged = done % log_every == 0 or done == steps
        if logged:
            mean = float(np.mean(jax.device_get(window)))
            state.losses.append((done, mean))
        if rule is not None and done % rule.eval_every == 0:
            evaluate(done)
        finished = done == steps or (plateau is not None and plateau.stopped)
        if on_checkpoint is not None and not finished:  # saved before the step's line: what it reports is kept
            due = checkpoint_every and done % checkpoint_every == 0
            if not due and logged and checkpoint_seconds > 0:
                due = _checkpoint_clock_due(clock() - last_saved >= checkpoint_seconds)
            if due:
                on_checkpoint(snapshot(done))
                last_saved = clock()
        if logged:
            rate = (state.tokens - tokens_before) / max(clock() - started, 1e-9)
            progress.step(len(window), f"step {done}/{steps} loss {mean:.4f}, {rate:,.0f} tokens/s")
            window = []
    progress.close()
    if window:  # stopped early between two progress lines
        state.losses.append((done, float(np.mean(jax.device_get(window)))))
    if rule is not None and (not state.heldout or state.heldout[-1][0] != done):
        evaluate(done)  # the last steps count too
    seconds = state.seconds + clock() - part_started
    if rule is None:
        return TrainResult(trainable, state.losses, state.tokens, seconds, state.heldout, done)
    assert plateau is not None
    stop: StopReason = plateau.stopped or "step cap"
    return TrainResult(best if best is not None else trainable, state.losses, state.tokens, seconds, state.heldout,
                       done, stop, plateau.best_step)  # fmt: skip


def _checkpoint_clock_due(due: bool) -> bool:
    """Process 0's answer (saving is collective: every process must save at the same step)."""
    if jax.process_count() == 1:
        return due
    return bool(multihost_utils.broadcast_one_to_all(np.asarray(due)))
