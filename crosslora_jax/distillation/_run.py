"""`distill()`: a data-free transfer refined by distillation against the source model, in phases:

    _check    validate everything: options against the tokenizers, configs, adapter, prompts, output
    _prepare  the init transfer (`run_transfer`), the student, both models on the devices
    _sample   the teacher's text (and the anchor's) in the student's tokens, split train / held out
    _fit      train (resumed from a checkpoint under `cache_dir`), held-out figures before and after
    _write    the adapter and the report with its `distill` section, atomically (process 0)

Every device of every process takes part (`_placement`: data parallel, frozen weights FSDP-
sharded); with several processes (`jax.distributed`) all run this same function and process 0
alone writes the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from crosslora_jax import _interrupt, _mesh
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax.distillation import _checkpoint
from crosslora_jax.distillation._objectives import Objective, choose
from crosslora_jax.distillation._options import DistillOptions
from crosslora_jax.distillation._placement import Placement
from crosslora_jax.distillation._report import (
    Alignment,
    BeforeAfter,
    DistillReport,
    DistillSeconds,
    Heldout,
    LossPoint,
    Stopping,
)
from crosslora_jax.distillation._schedule import PlateauRule
from crosslora_jax.distillation._student import Student, Trainable, build_student, source_lora, written_factors
from crosslora_jax.distillation._teacher import as_batch, generic_prompts, sample_sequences, user_prompts
from crosslora_jax.distillation._train import (
    Batch,
    Frozen,
    Loss,
    TrainResult,
    heldout_loss,
    optimizer,
    plateau_optimizer,
    train,
)
from crosslora_jax.eval import Lora, ModelSpec, load_model
from crosslora_jax.io.dtypes import NUMPY_DTYPES
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import check_output_location, staged_output
from crosslora_jax.io.peft_adapter import LoraAdapter, read_adapter, write_target_adapter
from crosslora_jax.io.tokenizer import (
    ModelTokenizer,
    read_prompts_file,
    read_tokenizer,
    retokenize,
    retokenize_aligned,
    same_vocabulary,
)
from crosslora_jax.ops.svd import Subspace, SvdSettings
from crosslora_jax.transfer import TransferResult, report_for, run_transfer, weight_subspaces
from crosslora_jax.transfer.report import TransferReport
from crosslora_jax.transfer.report_text import write_report


def distill(
    source_model: Path | str,
    target_model: Path | str,
    adapter: Path | str,
    output: Path | str,
    options: DistillOptions | None = None,
    *,
    overwrite: bool = False,
    cache_dir: Path | str | None = None,
    progress: Progress | None = None,
) -> TransferReport:
    """Move `adapter` from `source_model` to `target_model` and refine it by distillation; writes
    a PEFT adapter folder at `output` and returns its report (the transfer's, plus `distill`).

    With `cache_dir`, base-model subspaces are cached as for `transfer`, and training state is
    checkpointed under `cache_dir/distill/<run>` every `options.checkpoint_every` steps: rerunning
    an interrupted command resumes where it stopped, with the uninterrupted run's result. With
    several processes, `cache_dir` must be a folder they all share. `options=None` means `DistillOptions()`.
    """
    options = DistillOptions() if options is None else options
    progress = progress or Progress()
    run = _check(source_model, target_model, adapter, output, options, overwrite, cache_dir)
    writer = jax.process_index() == 0  # the others compute their shards and write nothing
    with staged_output(run.output) if writer else contextlib.nullcontext() as staging:
        init, models = _prepare(run, progress)
        data = _sample(run, models, progress)
        fitted = _fit(run, init.student, models, data, progress)
        report = _write(staging, run, init, data, fitted)
    if fitted.run_dir is not None:
        _checkpoint.remove(fitted.run_dir)  # the run is complete: nothing to resume
    return report


@dataclasses.dataclass(frozen=True)
class _Run:
    """Every input, read and checked before anything is computed."""

    source: ModelConfig
    target: ModelConfig
    tokenizers: tuple[ModelTokenizer, ModelTokenizer]  # (source's, target's)
    adapter: LoraAdapter
    output: Path
    options: DistillOptions  # `kd` resolved: auto says which objective runs
    objective: Objective
    one_vocab: bool
    seed_texts: Sequence[str] | None  # --prompts_file's prompts
    prompts_file: Path | None
    cache_dir: Path | None


def _check(
    source_model: Path | str,
    target_model: Path | str,
    adapter: Path | str,
    output: Path | str,
    options: DistillOptions,
    overwrite: bool,
    cache_dir: Path | str | None,
) -> _Run:
    source_model, target_model, output = absolute(source_model), absolute(target_model), absolute(output)
    adapter = absolute(adapter)
    check_output_location(output, [source_model, target_model, adapter], overwrite=overwrite)
    source_cfg, target_cfg = read_model_config(source_model), read_model_config(target_model)
    tok_s, tok_t = read_tokenizer(source_model), read_tokenizer(target_model)
    one_vocab = same_vocabulary(tok_s, tok_t)
    objective = choose(options.kd, one_vocab)
    options = dataclasses.replace(options, kd=objective.name)  # from here on, options say which objective runs
    prompts_file = None if options.prompts_file is None else absolute(options.prompts_file)
    seed_texts = None if prompts_file is None else read_prompts_file(prompts_file)
    loaded = read_adapter(adapter, source_cfg)
    cache = None if cache_dir is None else absolute(cache_dir)
    return _Run(source_cfg, target_cfg, (tok_s, tok_t), loaded, output, options, objective, one_vocab, seed_texts,
                prompts_file, cache)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class _Init:
    result: TransferResult  # the init transfer
    seconds: float  # the init transfer's
    student: Student


@dataclasses.dataclass
class _Models:
    """Both models on the devices; the source's arrays are let go once no step reads them."""

    placement: Placement
    spec_s: ModelSpec
    params_s: Mapping[str, Any] | None
    lora_s: Lora | None  # the source adapter: the teacher's side path
    spec_t: ModelSpec
    params_t: Mapping[str, Any]


def _prepare(run: _Run, progress: Progress) -> tuple[_Init, _Models]:
    options, source, target = run.options, run.source, run.target
    started = time.perf_counter()
    (result,) = run_transfer(source, target, [run.adapter], options.transfer, progress, cache_dir=run.cache_dir)
    seconds = time.perf_counter() - started
    subspaces = None
    if options.learn == "transform":
        roles = sorted({w.role for w in result.written})
        subspaces = role_subspaces(source, target, roles, options.transfer.svd, run.cache_dir, progress)
    student = build_student(
        options.learn,
        options.init == "zero",
        run.adapter,
        target,
        result.written,
        result.factors,
        result.layer_map.target_to_source,
        subspaces,
        options.seed,
    )
    placement = Placement(_mesh.data_mesh())
    weights_dtype = NUMPY_DTYPES[options.param_dtype]  # matrices only; norms and biases stay float32
    spec_s, params_s = load_model(source.folder, dtype=weights_dtype)
    params_s = placement.params(params_s)
    spec_t, params_t = load_model(target.folder, dtype=weights_dtype)
    params_t = placement.params(params_t)
    lora_s = placement.stacks(source_lora(run.adapter, source))
    return _Init(result, seconds, student), _Models(placement, spec_s, params_s, lora_s, spec_t, params_t)


@dataclasses.dataclass(frozen=True)
class _Data:
    train: Batch
    heldout: Batch
    anchor: Batch | None  # the target base's own samples (--anchor_weight > 0)
    anchor_heldout: Batch | None  # more of them, never trained on
    vocab_maps: tuple[jax.Array, jax.Array] | None  # placed; objectives that compare aligned positions
    alignment: Alignment | None
    seconds: float


def _sample(run: _Run, models: _Models, progress: Progress) -> _Data:
    options, (tok_s, tok_t), mesh = run.options, run.tokenizers, models.placement.mesh
    started = time.perf_counter()
    key = jax.random.key(options.seed)
    sample = functools.partial(sample_sequences, gen_len=options.gen_len, temperature=options.temperature,
                               top_p=options.top_p, batch_size=options.gen_batch_size, progress=progress, mesh=mesh)  # fmt: skip
    total = options.prompts + options.heldout
    if run.seed_texts is None:
        prompts = generic_prompts(tok_s, total, options.seed)
    else:
        prompts = user_prompts(tok_s, run.seed_texts, total, options.seed, run.prompts_file)  # type: ignore[arg-type]
    # the count is --prompts + --heldout: say so, since it is not the --prompts the user asked for
    counts = f" ({options.prompts:,} + {options.heldout:,} held out)" if options.heldout else ""
    tokens = sample(models.spec_s, models.params_s, models.lora_s, prompts, key=jax.random.fold_in(key, 1),
                    label=f"teacher{counts}")  # fmt: skip
    vocab_maps, alignment = None, None
    if run.one_vocab:
        sequences = as_batch(tokens)
    elif run.objective.teacher == "own_tokens":  # the text tokenized by both, and where the two meet
        aligned = retokenize_aligned(tokens, tok_s, tok_t)
        sequences = as_batch(aligned.b_ids, aligned.b_mask)._replace(
            teacher_inputs=aligned.a_ids[:, :-1], teacher_positions=aligned.a_position
        )
        assert run.objective.vocab_maps is not None
        *maps, shared = run.objective.vocab_maps(tok_s, tok_t, models.spec_s.vocab, models.spec_t.vocab)
        vocab_maps = tuple(models.placement.replicate(x) for x in maps)
        alignment = Alignment(
            _positions_aligned(sequences), shared, None if shared is None else shared / tok_t.vocab_size
        )
    else:  # the teacher's text, re-tokenized for the student
        sequences = as_batch(*retokenize(tokens, tok_s, tok_t))
    anchor = anchor_heldout = None
    if options.anchor_weight > 0:
        anchor_prompts = generic_prompts(tok_t, total, options.seed + 1)
        anchor_all = as_batch(sample(models.spec_t, models.params_t, None, anchor_prompts,
                                     key=jax.random.fold_in(key, 2), label=f"anchor{counts}"))  # fmt: skip
        anchor, anchor_heldout = _split(anchor_all, options.prompts)
    train_data, heldout = _split(sequences, options.prompts)
    return _Data(train_data, heldout, anchor, anchor_heldout, vocab_maps, alignment,  # type: ignore[arg-type]
                 time.perf_counter() - started)  # fmt: skip


def _split(data: Batch, count: int) -> tuple[Batch, Batch]:
    """(the first `count` sequences: training; the rest: held out)."""
    return data.take(slice(None, count)), data.take(slice(count, None))


@dataclasses.dataclass(frozen=True)
class _Fitted:
    loss: Loss
    trained: TrainResult
    heldout: Heldout
    resumed_from_step: int
    run_dir: Path | None  # the run's checkpoints, removed once the output is in place


def _fit(run: _Run, student: Student, models: _Models, data: _Data, progress: Progress) -> _Fitted:
    options, placement = run.options, models.placement
    teacher = run.objective.teacher != "none"
    fixed = placement.stacks(student.fixed)
    frozen = Frozen(models.params_t, models.params_s if teacher else None, models.lora_s if teacher else None,
                    fixed, data.vocab_maps)  # fmt: skip
    if not teacher:  # no step reads the source model from here on: let its device arrays go
        models.params_s = models.lora_s = None
    vocab = run.tokenizers[0].vocab_size if run.one_vocab else None
    loss = Loss(options.kd, options.learn, options.anchor_weight, models.spec_t, models.spec_s if teacher else None,
                vocab, product_weight=options.product_weight, sequence_weight=options.sequence_weight,
                remat=options.remat, mesh=placement.mesh)  # fmt: skip
    measures = {"": loss, **run.objective.also_measured(loss)}

    def measured(trainable: Trainable) -> dict[str, float]:
        return {name: heldout_loss(m, trainable, frozen, data.heldout, options.batch_size, placement)
                for name, m in measures.items()}  # fmt: skip

    def monitored(trainable: Trainable) -> float:  # what training minimises, on held-out samples
        value = heldout_loss(loss, trainable, frozen, data.heldout, options.batch_size, placement)
        if data.anchor_heldout is not None:
            value += options.anchor_weight * heldout_loss(loss, trainable, frozen, data.anchor_heldout,
                                                          options.batch_size, placement, anchor=True)  # fmt: skip
        return value

    before = measured(placement.replicate(student.trainable)) if options.heldout else None
    rule = _plateau_rule(options)
    if rule is None:
        opt = optimizer(options.steps, options.learning_rate, options.warmup_steps, options.weight_decay,
                        options.clip_norm)  # fmt: skip
    else:
        opt = plateau_optimizer(options.weight_decay, options.clip_norm)
    run_dir = None if run.cache_dir is None else run.cache_dir / "distill" / _run_key(run)
    start = None if run_dir is None else _checkpoint.restore(run_dir, student.trainable, opt, placement.replicated,
                                                             with_best=rule is not None)  # fmt: skip
    trained = train(loss, student, frozen, data.train, data.anchor, steps=options.steps,
                    batch_size=options.batch_size, opt=opt, seed=options.seed, log_every=options.log_every,
                    progress=progress, start=start,
                    on_checkpoint=None if run_dir is None else functools.partial(_checkpoint.save, run_dir),
                    checkpoint_every=options.checkpoint_every, checkpoint_seconds=60 * options.checkpoint_minutes,
                    placement=placement, rule=rule, monitor=monitored)  # fmt: skip
    _interrupt.check()
    after = measured(trained.trainable) if options.heldout else None
    figures = None if before is None or after is None else {k: BeforeAfter(before[k], after[k]) for k in before}
    heldout = Heldout(options.heldout, run.objective.measure(loss), None if figures is None else figures.pop(""),
                      figures or {})  # fmt: skip
    return _Fitted(loss, trained, heldout, 0 if start is None else start.step, run_dir)


def _plateau_rule(options: DistillOptions) -> PlateauRule | None:
    if not options.early_stopping:
        return None
    return PlateauRule(options.learning_rate, options.warmup_steps, options.eval_every, options.patience,
                       options.min_delta, options.lr_decay, options.lr_decays)  # fmt: skip


def _write(staging: Path | None, run: _Run, init: _Init, data: _Data, fitted: _Fitted) -> TransferReport:
    """The adapter and the report into `staging` (None: a process that writes nothing); the report."""
    options = run.options
    factors = written_factors(init.student, fitted.trained.trainable)
    dtype = run.adapter.dtype if options.transfer.output_dtype == "auto" else options.transfer.output_dtype
    if staging is not None:
        write_target_adapter(staging, run.adapter.config, run.target, factors, dtype)
    section = DistillReport(
        settings=options,
        objective=run.objective.label(fitted.loss),
        vocabulary="shared" if run.one_vocab else "different",
        alignment=data.alignment,
        loss_curve=tuple(LossPoint(step, value) for step, value in fitted.trained.losses),
        heldout=fitted.heldout,
        stopping=_stopping(options, fitted.trained),
        tokens_seen=fitted.trained.tokens,
        resumed_from_step=fitted.resumed_from_step,
        seconds=DistillSeconds(init.seconds, data.seconds, fitted.trained.seconds),
    )
    report = report_for(run.source, run.target, init.result, options.transfer, init.seconds, run.output, dtype)
    report = dataclasses.replace(report, distill=section)
    if staging is not None:
        write_report(staging, report)
    return report


def _stopping(options: DistillOptions, trained: TrainResult) -> Stopping:
    if not options.early_stopping:
        return Stopping(trained.steps_run, "steps", None, None)
    monitored = "held-out objective" + (f" + {options.anchor_weight:g} × anchor KL" if options.anchor_weight else "")
    curve = tuple(LossPoint(step, value) for step, value in trained.heldout)
    return Stopping(trained.steps_run, trained.stop, trained.best_step, monitored, curve)


def _positions_aligned(sequences: Batch) -> float:
    """The share of counted student positions where the two tokenizations have read the same bytes."""
    counted = np.asarray(sequences.mask) > 0
    met = counted & (np.asarray(sequences.teacher_positions) >= 0)
    return float(met.sum() / max(counted.sum(), 1))


def role_subspaces(
    source: ModelConfig,
    target: ModelConfig,
    roles: Sequence[str],
    settings: SvdSettings,
    cache_dir: Path | None = None,
    progress: Progress | None = None,
) -> dict[str, tuple[Subspace, Subspace]]:
    """Per role: (source subspaces at every source layer, target subspaces at every target layer)."""
    return {
        role: tuple(
            weight_subspaces(model, role, range(model.num_layers), settings, cache_dir=cache_dir, progress=progress)
            for model in (source, target)
        )
        for role in roles
    }


def _run_key(run: _Run) -> str:
    """One folder per (inputs, settings): a checkpoint is resumed only by the same run."""
    facts: list[Any] = [dataclasses.asdict(run.options)]
    for path in (run.source.folder, run.target.folder, run.adapter.folder):
        files = sorted(p for p in Path(path).iterdir() if p.is_file())
        facts.append([str(path), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]
