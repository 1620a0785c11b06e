"""`distill()`: a data-free transfer refined by distillation against the source model.

Order of work: validate everything (options, configs, tokenizers, adapter, output location),
transfer (the init), sample the teacher's text, train, write the adapter and report atomically.

Every device of every process takes part (`_placement`: data parallel, frozen weights FSDP-
sharded); with several processes (`jax.distributed`) all run this same function and process 0
alone writes the output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from crosslora_jax import _interrupt, _mesh
from crosslora_jax._errors import OptionsError
from crosslora_jax._paths import absolute
from crosslora_jax._progress import Progress
from crosslora_jax.distillation import _checkpoint
from crosslora_jax.distillation._options import (
    ACROSS_VOCABULARIES,
    AUTO_DIFFERENT_VOCABULARIES,
    AUTO_SAME_VOCABULARY,
    DistillOptions,
)
from crosslora_jax.distillation._placement import Placement
from crosslora_jax.distillation._student import Trainable, build_student, source_lora, written_factors
from crosslora_jax.distillation._teacher import as_batch, generic_prompts, sample_sequences, user_prompts
from crosslora_jax.distillation._train import Batch, Frozen, Objective, heldout_loss, optimizer, train
from crosslora_jax.eval import load_model
from crosslora_jax.io.dtypes import NUMPY_DTYPES
from crosslora_jax.io.hf_config import ModelConfig, read_model_config
from crosslora_jax.io.output_folder import check_output_location, staged_output
from crosslora_jax.io.peft_adapter import read_adapter, write_target_adapter
from crosslora_jax.io.report import write_report
from crosslora_jax.io.tokenizer import (
    first_bytes,
    read_prompts_file,
    read_tokenizer,
    retokenize,
    retokenize_aligned,
    same_vocabulary,
    shared_vocabulary,
)
from crosslora_jax.ops.svd import Subspace, SvdSettings
from crosslora_jax.pipeline import TransferOptions, report_for, run_transfer, weight_subspaces
from crosslora_jax.transfer_report import TransferReport


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
    source_model, target_model, output = absolute(source_model), absolute(target_model), absolute(output)
    adapter = absolute(adapter)
    check_output_location(output, [source_model, target_model, adapter], overwrite=overwrite)
    source_cfg, target_cfg = read_model_config(source_model), read_model_config(target_model)
    tok_s, tok_t = read_tokenizer(source_model), read_tokenizer(target_model)
    one_vocab = same_vocabulary(tok_s, tok_t)
    if options.kd == "auto":  # from here on, options say which objective runs
        options = dataclasses.replace(options, kd=AUTO_SAME_VOCABULARY if one_vocab else AUTO_DIFFERENT_VOCABULARIES)
    if not one_vocab and options.kd not in ACROSS_VOCABULARIES:
        raise OptionsError(
            "--kd",
            f"{options.kd} needs one vocabulary, but the tokenizers of the two models differ; use --kd=sequence, "
            "bytes or shared",
        )
    if one_vocab and options.kd in ("shared", "bytes"):
        raise OptionsError(
            "--kd", f"{options.kd} is for tokenizers that differ; these two models share one: use --kd=full"
        )
    prompts_file = None if options.prompts_file is None else absolute(options.prompts_file)
    seed_texts = None if prompts_file is None else read_prompts_file(prompts_file)
    loaded = read_adapter(adapter, source_cfg)
    init_method = "truncate" if options.init == "zero" else options.init
    transfer_options = TransferOptions(method=init_method, svd=options.svd, layer_map=options.layer_map)
    cache_dir = None if cache_dir is None else absolute(cache_dir)
    placement = Placement(_mesh.data_mesh())
    started = time.perf_counter()
    writer = jax.process_index() == 0  # the others compute their shards and write nothing
    with staged_output(output) if writer else contextlib.nullcontext() as staging:
        (result,) = run_transfer(source_cfg, target_cfg, [loaded], transfer_options, progress, cache_dir=cache_dir)
        init_seconds = time.perf_counter() - started
        subspaces = None
        if options.learn == "transform":
            roles = sorted({w.role for w in result.written})
            subspaces = role_subspaces(source_cfg, target_cfg, roles, options.svd, cache_dir, progress)
        student = build_student(
            options.learn,
            options.init == "zero",
            loaded,
            target_cfg,
            result.written,
            result.factors,
            result.layer_map.target_to_source,
            subspaces,
            options.seed,
        )
        weights_dtype = NUMPY_DTYPES[options.param_dtype]  # matrices only; norms and biases stay float32
        spec_s, params_s = load_model(source_model, dtype=weights_dtype)
        params_s = placement.params(params_s)
        spec_t, params_t = load_model(target_model, dtype=weights_dtype)
        params_t = placement.params(params_t)
        lora_s = placement.stacks(source_lora(loaded, source_cfg))
        mesh = placement.mesh
        key = jax.random.key(options.seed)
        gen = dict(gen_len=options.gen_len, temperature=options.temperature, top_p=options.top_p)
        gen_batch = options.gen_batch_size
        total = options.prompts + options.heldout
        if seed_texts is None:
            prompts = generic_prompts(tok_s, total, options.seed)
        else:
            prompts = user_prompts(tok_s, seed_texts, total, options.seed, prompts_file)
        data_started = time.perf_counter()
        tokens = sample_sequences(spec_s, params_s, lora_s, prompts, key=jax.random.fold_in(key, 1),
                                  batch_size=gen_batch, progress=progress, label="teacher", mesh=mesh, **gen)  # fmt: skip
        vocab_maps, alignment = None, None
        if one_vocab:
            sequences = as_batch(tokens)
        elif options.kd in ("shared", "bytes"):  # the text tokenized by both, and where the two meet
            aligned = retokenize_aligned(tokens, tok_s, tok_t)
            sequences = as_batch(aligned.b_ids, aligned.b_mask)._replace(
                teacher_inputs=aligned.a_ids[:, :-1], teacher_positions=aligned.a_position
            )
            if options.kd == "shared":
                vocab_maps = shared_vocabulary(tok_s, tok_t)
                alignment = {"shared_tokens": int(vocab_maps[0].size),
                             "shared_of_student_vocabulary": vocab_maps[0].size / tok_t.vocab_size}  # fmt: skip
            else:  # sized to the logits: ids past the tokenizer's (embedding padding) have no byte
                vocab_maps = (first_bytes(tok_s, spec_s.vocab), first_bytes(tok_t, spec_t.vocab))
                alignment = {}
            alignment["positions_aligned"] = _positions_aligned(sequences)
            vocab_maps = tuple(placement.replicate(x) for x in vocab_maps)
        else:  # the teacher's text, re-tokenized for the student
            ids, mask = retokenize(tokens, tok_s, tok_t)
            sequences = as_batch(ids, mask)
        train_data = sequences.take(slice(None, options.prompts))
        heldout = sequences.take(slice(options.prompts, None))
        anchor = None
        if options.anchor_weight > 0:
            anchor_prompts = generic_prompts(tok_t, options.prompts, options.seed + 1)
            anchor = as_batch(sample_sequences(spec_t, params_t, None, anchor_prompts, key=jax.random.fold_in(key, 2),
                                               batch_size=gen_batch, progress=progress, label="anchor", mesh=mesh,
                                               **gen))  # fmt: skip
        data_seconds = time.perf_counter() - data_started
        sequence = options.kd == "sequence"
        fixed = placement.stacks(student.fixed)
        frozen = Frozen(params_t, None if sequence else params_s, None if sequence else lora_s, fixed, vocab_maps)  # type: ignore[arg-type]
        del params_s, lora_s  # `sequence` needs no source model on the devices from here on
        vocab = tok_s.vocab_size if one_vocab else None
        obj = Objective(options.kd, options.learn, options.anchor_weight, spec_t, None if sequence else spec_s, vocab,
                        product_weight=options.product_weight, sequence_weight=options.sequence_weight,
                        remat=options.remat, mesh=mesh)  # fmt: skip
        # delta's, product's and shared's objectives are not the KL to the teacher itself: report that as well
        measures = {"": obj}
        if options.kd in ("delta", "product"):
            measures["kl_to_teacher_"] = dataclasses.replace(obj, kd="full")
        if options.kd in ("shared", "bytes") and options.sequence_weight > 0:
            measures[f"{options.kd}_kl_"] = dataclasses.replace(obj, sequence_weight=0.0)

        def heldout_figures(trainable: Trainable, when: str) -> dict[str, float | None]:
            if not options.heldout:
                return {when: None}
            return {
                f"{prefix}{when}": heldout_loss(o, trainable, frozen, heldout, options.batch_size, placement)
                for prefix, o in measures.items()
            }

        before = heldout_figures(placement.replicate(student.trainable), "before")
        opt = optimizer(options.steps, options.learning_rate, options.warmup_steps, options.weight_decay,
                        options.clip_norm)  # fmt: skip
        key_paths = (source_cfg.folder, target_cfg.folder, adapter)
        run_dir = None if cache_dir is None else cache_dir / "distill" / _run_key(options, *key_paths)
        start = None if run_dir is None else _checkpoint.restore(run_dir, student.trainable, opt, placement.replicated)
        fitted = train(
            obj,
            student,
            frozen,
            train_data,
            anchor,
            steps=options.steps,
            batch_size=options.batch_size,
            opt=opt,
            seed=options.seed,
            log_every=options.log_every,
            progress=progress,
            start=start,
            on_checkpoint=None if run_dir is None else lambda s, t, o: _checkpoint.save(run_dir, s, t, o),
            checkpoint_every=options.checkpoint_every,
            placement=placement,
        )
        _interrupt.check()
        after = heldout_figures(fitted.trainable, "after")
        factors = written_factors(student, fitted.trainable)
        dtype = loaded.dtype if options.output_dtype == "auto" else options.output_dtype
        if staging is not None:
            write_target_adapter(staging, loaded.config, target_cfg, factors, dtype)
        section = {
            "settings": _settings_json(options),
            "objective": _objective_label(options, one_vocab),
            "vocabulary": "shared" if one_vocab else "different",
            **({} if alignment is None else {"alignment": alignment}),
            "loss_curve": [{"step": s, "loss": v} for s, v in fitted.losses],
            "heldout": {
                "sequences": options.heldout,
                "measure": _heldout_measure(options),
                **before,
                **after,
            },
            "tokens_seen": fitted.tokens,
            "resumed_from_step": 0 if start is None else start[0],
            "seconds": {"init_transfer": init_seconds, "teacher_samples": data_seconds, "train": fitted.seconds},
        }
        report = report_for(source_cfg, target_cfg, result, transfer_options, init_seconds, output, dtype)
        report = dataclasses.replace(report, distill=section)
        if staging is not None:
            write_report(staging, report)
    if run_dir is not None:
        _checkpoint.remove(run_dir)  # the run is complete: nothing to resume
    return report


def _objective_label(options: DistillOptions, one_vocab: bool) -> str:
    if one_vocab:
        return options.kd
    if options.kd in ("shared", "bytes"):
        what = "on the tokens both have" if options.kd == "shared" else "of the next byte"
        return (f"{options.kd} (vocabularies differ: KL {what} where the tokenizations meet, "
                f"+ {options.sequence_weight:g} × cross-entropy on the teacher's re-tokenized text)")  # fmt: skip
    return "sequence (vocabularies differ: teacher text re-tokenized)"


def _heldout_measure(options: DistillOptions) -> str:
    if options.kd == "sequence":
        return "cross-entropy on the teacher's text"
    if options.kd in ("shared", "bytes"):
        kl = "shared-vocabulary KL" if options.kd == "shared" else "next-byte KL"
        return f"{kl} + {options.sequence_weight:g} × cross-entropy on the teacher's text"
    return f"{options.kd} KL to the teacher"


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


def _settings_json(options: DistillOptions) -> dict[str, Any]:
    return dataclasses.asdict(options)


def _run_key(options: DistillOptions, *paths: Path) -> str:
    """One folder per (inputs, settings): a checkpoint is resumed only by the same run."""
    facts = [_settings_json(options)]
    for path in paths:
        files = sorted(p for p in Path(path).iterdir() if p.is_file())
        facts.append([str(path), [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]])
    return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()[:16]
