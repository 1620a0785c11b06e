"""Tasks: multiple-choice JSONL scored by choice log-likelihood, plain text by mean token loss.

Multiple choice, one JSON object per line: `{"question": str, "choices": [str, ...], "answer": a}`
with `a` the 0-based index of the right choice, its letter ("A", "B", ...) or its exact text.
Each choice is scored as Σ log p(" " + choice | question); the prediction is the argmax (`acc`)
and the argmax per byte of the choice (`acc_norm`). Plain text is cut into windows of
`max_length` predicted tokens (each token is predicted once, with the window's tokens before it
as context) and scored by mean token loss (nats), perplexity and bits per byte.

Tokenisation is the model folder's own `tokenizer.json` (`io.tokenizer.load_tokenizer`).
Scoring is deterministic: sequences are sorted by length and padded to buckets of 32 tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from crosslora_jax._errors import ConfigError, OptionsError, TaskError
from crosslora_jax._options import check_choice, check_options, option
from crosslora_jax.eval._model import token_logprobs
from crosslora_jax.eval._spec import ModelSpec

TARGET_DELIMITER = " "
_BUCKET = 32
Progress = Callable[[int, int], None]  # (batches done, batches total)
TaskFormat = Literal["auto", "choice", "text"]
TASK_FORMATS: tuple[str, ...] = typing.get_args(TaskFormat)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How to score a task; each field is one flag of the evaluate command."""

    task_format: TaskFormat = option(
        "auto", "How to read --task: choice (multiple-choice JSONL), text, or auto (.jsonl is choice, else text)."
    )
    batch_size: int = option(8, "Sequences per forward pass.", low=1)
    max_length: int | None = option(None, "Tokens per sequence (default: max_position_embeddings).", low=2)

    def __post_init__(self) -> None:
        check_options(self)


@dataclasses.dataclass(frozen=True)
class Question:
    """One multiple-choice item."""

    question: str
    choices: tuple[str, ...]
    answer: int


@dataclasses.dataclass(frozen=True)
class Task:
    """A task file: multiple-choice `questions`, or plain `text`."""

    path: Path
    kind: str  # "choice" | "text"
    questions: tuple[Question, ...] = ()
    text: str = ""


def read_task(path: Path | str, kind: TaskFormat = "auto") -> Task:
    """Read a task file; `kind` auto means `.jsonl` is multiple choice and anything else plain text."""
    path = Path(path)
    check_choice("task_format", kind, TASK_FORMATS)
    if not path.is_file():
        raise TaskError(path, "file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskError(path, f"cannot read: {e}") from None
    if kind == "auto":
        kind = "choice" if path.suffix == ".jsonl" else "text"
    if kind == "text":
        if not text.strip():
            raise TaskError(path, "the text is empty")
        return Task(path, "text", text=text)
    questions = tuple(_question(path, n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip())
    if not questions:
        raise TaskError(path, "no questions found")
    return Task(path, "choice", questions=questions)


def _question(path: Path, line_no: int, line: str) -> Question:
    where = f"{path}:{line_no}"
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise TaskError(where, f"malformed JSON: {e}") from None
    if not isinstance(item, dict):
        raise TaskError(where, "expected a JSON object")
    question, choices, answer = item.get("question"), item.get("choices"), item.get("answer")
    if not isinstance(question, str):
        raise TaskError(where, "field 'question' must be a string")
    if not (isinstance(choices, list) and len(choices) >= 2 and all(isinstance(c, str) and c for c in choices)):
        raise TaskError(where, "field 'choices' must be a list of at least two non-empty strings")
    if isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choices):
        index = answer
    elif isinstance(answer, str) and answer in choices:
        index = choices.index(answer)
    elif isinstance(answer, str) and len(answer) == 1 and 0 <= ord(answer) - ord("A") < len(choices):
        index = ord(answer) - ord("A")
    else:
        raise TaskError(where, f"field 'answer' {answer!r} is not a choice index, letter or choice text")
    return Question(question, tuple(choices), index)


@functools.partial(jax.jit, static_argnums=0)
def _score_batch(
    spec: ModelSpec, params: Mapping[str, object], tokens: jax.Array, weights: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Σ w·log p and Σ w·(log p)² per row; tokens [B, T] int32, weights [B, T-1] on predicted tokens."""
    logp = token_logprobs(spec, params, tokens)
    return (logp * weights).sum(axis=1), (logp * logp * weights).sum(axis=1)


def score_sequences(
    spec: ModelSpec,
    params: Mapping[str, object],
    sequences: Sequence[Sequence[int]],
    starts: Sequence[int],
    *,
    batch_size: int,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Σ log p and Σ (log p)² of tokens seq[start:] given seq[:i], per sequence ([N], [N])."""
    order = sorted(range(len(sequences)), key=lambda i: (-len(sequences[i]), i))
    sums, squares = np.zeros(len(sequences)), np.zeros(len(sequences))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    device_params = jax.device_put(params)
    for done, batch in enumerate(batches, 1):
        length = max(len(sequences[i]) for i in batch)
        length = max(_BUCKET, -(-length // _BUCKET) * _BUCKET)
        tokens = np.zeros((batch_size, length), np.int32)
        weights = np.zeros((batch_size, length - 1), np.float32)
        for row, i in enumerate(batch):
            seq = sequences[i]
            tokens[row, : len(seq)] = seq
            weights[row, starts[i] - 1 : len(seq) - 1] = 1.0
        s, q = _score_batch(spec, device_params, jnp.asarray(tokens), jnp.asarray(weights))
        s, q = np.asarray(s, np.float64), np.asarray(q, np.float64)
        for row, i in enumerate(batch):
            sums[i], squares[i] = s[row], q[row]
        if progress is not None:
            progress(done, len(batches))
    return sums, squares


def _encode(tokenizer: Any, text: str, *, special: bool, spec: ModelSpec, where: Path) -> list[int]:
    ids = list(tokenizer.encode(text, add_special_tokens=special).ids)
    bad = [i for i in ids if i >= spec.vocab]
    if bad:
        raise ConfigError(where, f"tokenizer produced id {bad[0]}, outside the model's vocab_size {spec.vocab}")
    return ids


def evaluate_task(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokenizer: Any,
    task: Task,
    options: EvalOptions | None = None,
    *,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score `task` (`options.task_format` was used to read it); the metrics with their standard errors.
    `options=None` means `EvalOptions()`."""
    options = EvalOptions() if options is None else options
    batch_size = options.batch_size
    max_length = min(options.max_length or spec.max_positions, spec.max_positions)
    if max_length < 2:  # the model's max_position_embeddings
        raise OptionsError("--max_length", f"must be at least 2, got {max_length}")
    if task.kind == "text":
        return _evaluate_text(spec, params, tokenizer, task, batch_size, max_length, progress)
    return _evaluate_choice(spec, params, tokenizer, task, batch_size, max_length, progress)


def _evaluate_choice(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokenizer: Any,
    task: Task,
    batch_size: int,
    max_length: int,
    progress: Progress | None,
) -> dict[str, Any]:
    sequences, starts = [], []
    for q in task.questions:
        context = _encode(tokenizer, q.question, special=True, spec=spec, where=task.path)
        for choice in q.choices:
            cont = _encode(tokenizer, TARGET_DELIMITER + choice, special=False, spec=spec, where=task.path)
            if not context or not cont or len(cont) >= max_length:
                raise TaskError(
                    task.path,
                    f"question {q.question[:40]!r}: needs a non-empty context and a choice shorter than {max_length} tokens",
                )
            seq = (context + cont)[-max_length:]  # drop the oldest context tokens if too long
            sequences.append(seq)
            starts.append(len(seq) - len(cont))
    sums, _ = score_sequences(spec, params, sequences, starts, batch_size=batch_size, progress=progress)
    correct, correct_norm, offset = [], [], 0
    for q in task.questions:
        ll = sums[offset : offset + len(q.choices)]
        offset += len(q.choices)
        per_byte = ll / np.array([len(c.encode("utf-8")) for c in q.choices])
        correct.append(float(np.argmax(ll) == q.answer))
        correct_norm.append(float(np.argmax(per_byte) == q.answer))
    n = len(correct)
    return {
        "task": str(task.path),
        "kind": "choice",
        "questions": n,
        "acc": float(np.mean(correct)),
        "acc_stderr": _stderr(correct),
        "acc_norm": float(np.mean(correct_norm)),
        "acc_norm_stderr": _stderr(correct_norm),
        "chance": float(np.mean([1 / len(q.choices) for q in task.questions])),
    }


def _evaluate_text(
    spec: ModelSpec,
    params: Mapping[str, object],
    tokenizer: Any,
    task: Task,
    batch_size: int,
    max_length: int,
    progress: Progress | None,
) -> dict[str, Any]:
    ids = _encode(tokenizer, task.text, special=True, spec=spec, where=task.path)
    if len(ids) < 2:
        raise TaskError(task.path, "the text has fewer than two tokens")
    step = max_length - 1
    sequences = [ids[i : i + step + 1] for i in range(0, len(ids) - 1, step)]
    sums, squares = score_sequences(
        spec, params, sequences, [1] * len(sequences), batch_size=batch_size, progress=progress
    )
    count = len(ids) - 1
    loss = -float(sums.sum()) / count
    variance = max(float(squares.sum()) / count - loss * loss, 0.0)
    return {
        "task": str(task.path),
        "kind": "text",
        "tokens": count,
        "loss": loss,
        # treats token losses as independent: a lower bound on the true uncertainty
        "loss_stderr": math.sqrt(variance / max(count - 1, 1)),
        "perplexity": math.exp(loss),
        "bits_per_byte": -float(sums.sum()) / math.log(2) / len(task.text.encode("utf-8")),
    }


def _stderr(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / √n)."""
    n = len(values)
    return float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
