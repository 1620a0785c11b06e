"""Evaluate a base model, with or without a PEFT LoRA adapter, on the architectures the transfer supports.

Public API:
- `load_model(model_dir, adapter_dir=None, dtype=float32) -> (ModelSpec, params)`: weights through
  the project's own reader, the adapter merged in (W += γ·B·A), matrices in `dtype`.
- `logits`, `token_logprobs`, `hidden_states`: the jittable forward pass (pure functions of
  `(spec, params, tokens)`; `spec` is static), with an optional LoRA side path for training.
- `init_cache`, `logits_with_cache`, `KVCache`: the same forward pass continued token by token
  over a key/value cache.
- `generate(spec, params, prompts, gen_len=, key=, temperature=, top_p=, lora=, mesh=)`: batched
  sampling (greedy at temperature 0, nucleus top-p) with the cache, one jitted decode loop,
  the batch optionally sharded over a mesh's 'data' axis; equal-length prompts.
- `model_spec`, `ModelSpec`, `from_hf`, `to_hf`: config → spec, and the canonical param layout.
- `evaluate(model_dir, task, adapter_dir, options)`: score a multiple-choice JSONL or plain-text task
  (`EvalOptions`: task format, batch size, max length; `read_task`, `load_tokenizer`,
  `evaluate_task`, `score_sequences` are its parts).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from crosslora_jax.eval._generate import generate
from crosslora_jax.eval._model import (
    KVCache,
    Lora,
    hidden_states,
    init_cache,
    logits,
    logits_with_cache,
    token_logprobs,
)
from crosslora_jax.eval._params import Params, from_hf, load_params, to_hf
from crosslora_jax.eval._spec import ModelSpec, model_spec
from crosslora_jax.eval._tasks import (
    EvalOptions,
    Progress,
    Question,
    Task,
    evaluate_task,
    read_task,
    score_sequences,
)
from crosslora_jax.io.hf_config import read_model_config
from crosslora_jax.io.tokenizer import load_tokenizer


def load_model(
    model_dir: Path | str, adapter_dir: Path | str | None = None, *, dtype: Any = np.float32
) -> tuple[ModelSpec, Params]:
    """Spec and host params of an HF model folder, with an optional PEFT adapter merged in; weight
    matrices in `dtype` (e.g. bfloat16: the forward pass then accumulates them in float32),
    vectors float32."""
    config = read_model_config(model_dir)
    spec = model_spec(config)
    return spec, load_params(config, spec, adapter_dir, dtype)


def evaluate(
    model_dir: Path | str,
    task: Path | str,
    adapter_dir: Path | str | None = None,
    options: EvalOptions | None = None,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score `task` on the model (with the adapter merged in, if any); metrics with standard errors.
    `options=None` means `EvalOptions()`."""
    options = EvalOptions() if options is None else options
    tokenizer = load_tokenizer(model_dir)
    loaded = read_task(task, options.task_format)
    spec, params = load_model(model_dir, adapter_dir)
    result = evaluate_task(spec, params, tokenizer, loaded, options, progress=progress)
    return {"model": str(model_dir), "adapter": None if adapter_dir is None else str(adapter_dir), **result}


__all__ = [
    "EvalOptions",
    "KVCache",
    "Lora",
    "ModelSpec",
    "Params",
    "Progress",
    "Question",
    "Task",
    "evaluate",
    "evaluate_task",
    "from_hf",
    "generate",
    "hidden_states",
    "init_cache",
    "load_model",
    "load_params",
    "load_tokenizer",
    "logits",
    "logits_with_cache",
    "model_spec",
    "read_task",
    "score_sequences",
    "to_hf",
    "token_logprobs",
]
