"""Move a PEFT LoRA adapter to another base model and refine it by distillation, without user data.

Usage: python -m crosslora_jax.distill --source_model=DIR --target_model=DIR --adapter=DIR
           --output=DIR [--init=cross_lora|lora_x|truncate|zero] [--learn=lora|transform]
           [--kd=full|delta|sequence] [--steps=N] [--flagfile=FILE] ...

The source model with its adapter (the teacher) samples text from generic starts (or from
--prompts_file); the target model with a trainable adapter (the student) learns to match it.
Progress (loss, tokens/s, ETA) goes to stderr, the summary to stdout; the report
(crosslora_report.json) gains a `distill` section. Details in docs/method.md of the
crosslora_jax repository.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from pathlib import Path

from absl import app, flags

from crosslora_jax._errors import OptionsError
from crosslora_jax._progress import Progress
from crosslora_jax._xla_cache import enable_compilation_cache
from crosslora_jax.cli._common import flags_parser, run_guarded
from crosslora_jax.distillation import INITS, LEARN, DistillOptions, distill
from crosslora_jax.io.dtypes import OUTPUT_CHOICES
from crosslora_jax.io.report import format_summary
from crosslora_jax.ops.distill import OBJECTIVES
from crosslora_jax.ops.svd import ENGINES, SvdSettings

_D = DistillOptions()
_SOURCE = flags.DEFINE_string("source_model", None, "HF model folder the adapter was trained on (the teacher).")
_TARGET = flags.DEFINE_string("target_model", None, "HF model folder to move the adapter to (the student).")
_ADAPTER = flags.DEFINE_string("adapter", None, "PEFT LoRA adapter folder for the source.")
_OUTPUT = flags.DEFINE_string("output", None, "Output adapter folder.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace a non-empty --output.")
_CACHE_DIR = flags.DEFINE_string(
    "cache_dir",
    None,
    "Keep base-model subspaces, compiled XLA programs and training checkpoints here; rerunning an "
    "interrupted command with the same flags resumes from its last checkpoint.",
)
_INIT = flags.DEFINE_enum("init", _D.init, INITS, "Data-free transfer to start from (zero: PEFT's own init).")
_LEARN = flags.DEFINE_enum(
    "learn",
    _D.learn,
    LEARN,
    "What is trained: lora (the target's factors) or transform (r_t×r_s maps from the source's singular "
    "subspaces into the target's, the source factors fixed).",
)
_KD = flags.DEFINE_enum(
    "kd",
    _D.kd,
    OBJECTIVES,
    "Objective: full (KL to the teacher), delta (KL to target base + what the adapter changes in the "
    "source; one vocabulary only), sequence (cross-entropy on the teacher's text; any vocabularies).",
)
_SVD_RANK = flags.DEFINE_integer("svd_rank", _D.svd.rank, "Rank r of the truncated SVDs (init and transform).")
_SVD = flags.DEFINE_enum("svd", _D.svd.engine, list(ENGINES), "SVD engine (see `transfer --help`).")
_LAYER_MAP = flags.DEFINE_enum("layer_map", _D.layer_map, ["auto", "index", "linear"], "Target→source layer map.")
_PROMPTS = flags.DEFINE_integer("prompts", _D.prompts, "Teacher sequences to sample for training.")
_PROMPTS_FILE = flags.DEFINE_string("prompts_file", None, "Your own seed prompts (default: generic starts).")
_GEN_LEN = flags.DEFINE_integer("gen_len", _D.gen_len, "Tokens the teacher samples per sequence.")
_GEN_BATCH = flags.DEFINE_integer("gen_batch_size", _D.gen_batch_size, "Sequences the teacher samples at once.")
_TEMPERATURE = flags.DEFINE_float("temperature", _D.temperature, "Sampling temperature (0 = greedy).")
_TOP_P = flags.DEFINE_float("top_p", _D.top_p, "Nucleus sampling: keep the smallest token set of this mass.")
_STEPS = flags.DEFINE_integer("steps", _D.steps, "Optimizer steps.")
_BATCH = flags.DEFINE_integer("batch_size", _D.batch_size, "Sequences per step.")
_LR = flags.DEFINE_float("learning_rate", _D.learning_rate, "Peak AdamW learning rate (warm-up, then cosine).")
_WARMUP = flags.DEFINE_integer("warmup_steps", _D.warmup_steps, "Linear warm-up steps.")
_WD = flags.DEFINE_float("weight_decay", _D.weight_decay, "AdamW weight decay.")
_CLIP = flags.DEFINE_float("clip_norm", _D.clip_norm, "Clip the global gradient norm to this.")
_ANCHOR = flags.DEFINE_float(
    "anchor_weight", _D.anchor_weight, "Weight of KL(target base ‖ student) on the target's own samples (0: off)."
)
_HELDOUT = flags.DEFINE_integer("heldout", _D.heldout, "Extra teacher sequences for the before/after figure.")
_SEED = flags.DEFINE_integer("seed", _D.seed, "Seed of sampling, batching and init (results repeat per seed).")
_LOG_EVERY = flags.DEFINE_integer("log_every", _D.log_every, "A progress line every this many steps.")
_CKPT_EVERY = flags.DEFINE_integer("checkpoint_every", _D.checkpoint_every, "Checkpoint every this many steps.")
_DTYPE = flags.DEFINE_enum("output_dtype", _D.output_dtype, ["auto", *OUTPUT_CHOICES], "dtype of the written factors.")
_COMPILATION_CACHE = flags.DEFINE_bool(
    "compilation_cache", True, "Keep compiled XLA programs between runs (under --cache_dir/xla, else ~/.cache)."
)


def _options() -> DistillOptions:
    try:
        svd = SvdSettings(rank=_SVD_RANK.value, engine=_SVD.value)
    except ValueError as e:
        raise OptionsError("--svd_rank/--svd", str(e)) from None
    return DistillOptions(
        init=_INIT.value,
        learn=_LEARN.value,
        kd=_KD.value,
        svd=svd,
        layer_map=_LAYER_MAP.value,
        prompts=_PROMPTS.value,
        prompts_file=None if not _PROMPTS_FILE.value else Path(_PROMPTS_FILE.value),
        gen_len=_GEN_LEN.value,
        gen_batch_size=_GEN_BATCH.value,
        temperature=_TEMPERATURE.value,
        top_p=_TOP_P.value,
        steps=_STEPS.value,
        batch_size=_BATCH.value,
        learning_rate=_LR.value,
        warmup_steps=_WARMUP.value,
        weight_decay=_WD.value,
        clip_norm=_CLIP.value,
        anchor_weight=_ANCHOR.value,
        heldout=_HELDOUT.value,
        seed=_SEED.value,
        log_every=_LOG_EVERY.value,
        checkpoint_every=_CKPT_EVERY.value,
        output_dtype=_DTYPE.value,
    )


def _distill_lines(section: dict) -> str:
    held = section["heldout"]
    lines = [f"  distill: {section['objective']}, {section['tokens_seen']:,} tokens seen"]
    if section["loss_curve"]:
        first, last = section["loss_curve"][0]["loss"], section["loss_curve"][-1]["loss"]
        lines.append(f"  training loss {first:.4f} -> {last:.4f}")
    if held["before"] is not None:
        lines.append(f"  held-out {held['measure']}: {held['before']:.4f} -> {held['after']:.4f}")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")

    def body() -> None:
        for name, flag in (("--source_model", _SOURCE), ("--target_model", _TARGET), ("--adapter", _ADAPTER),
                           ("--output", _OUTPUT)):  # fmt: skip
            if not flag.value:
                raise OptionsError(name, "is required")
        options = _options()
        if _COMPILATION_CACHE.value:
            enable_compilation_cache(_CACHE_DIR.value or None)
        started = time.perf_counter()
        report = distill(
            _SOURCE.value,
            _TARGET.value,
            _ADAPTER.value,
            _OUTPUT.value,
            options,
            overwrite=_OVERWRITE.value,
            cache_dir=_CACHE_DIR.value,
            progress=Progress.to_stderr(),
        )
        seconds = time.perf_counter() - started
        summary = format_summary(report, _OUTPUT.value, seconds)
        print(f"{summary}\n{_distill_lines(report.distill or {})}", file=sys.stdout, flush=True)

    run_guarded(body)


def run() -> None:
    app.run(main, flags_parser=flags_parser(__name__, __doc__))
