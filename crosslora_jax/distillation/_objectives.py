"""The distillation objectives (`--kd`), each declared once in `OBJECTIVES`: what it needs (a
teacher pass, and on which tokens; one vocabulary, or tokenizers that differ), its loss, its
held-out figures and how the report names it. `--kd`'s choices and help, the check of an
objective against the two tokenizers, the data preparation, the train step and the report all
read the table.

Adding an objective = one `Objective` entry here (its math in `ops/distill.py`) + its float64
NumPy reference in tests/ops/test_distill_math.py, which every entry must have
(`test_every_objective_has_a_float64_reference`).

Legend: B batch, T student positions, V vocabulary (V_t the student's).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal

import numpy as np
from jax import Array

from crosslora_jax._errors import OptionsError
from crosslora_jax.io.tokenizer import ModelTokenizer, first_bytes, shared_vocabulary
from crosslora_jax.ops.distill import (
    delta_teacher,
    full_kl,
    next_byte_kl,
    product_teacher,
    sequence_ce,
    shared_objective,
    shared_vocab_kl,
)

if TYPE_CHECKING:
    from crosslora_jax.distillation._train import Batch, Frozen, Loss
    from crosslora_jax.eval import Lora, ModelSpec

Vocabularies = Literal["one", "any", "different"]
# none: the teacher's sampled text is all the step reads (the source model leaves the devices);
# same_tokens: the teacher reads the student's inputs (one vocabulary); own_tokens: the teacher
# reads its own tokenization of the text, compared where the two tokenizations have read the same bytes
TeacherPass = Literal["none", "same_tokens", "own_tokens"]
# (teacher's map, student's map, how many tokens the vocabularies share or None), from the two
# tokenizers and the two models' logit widths (V_s, V_t)
VocabMaps = tuple[np.ndarray, np.ndarray, int | None]
StepLoss = Callable[["Loss", Annotated[Array, "B T V_t"], "Frozen", "Batch"], Array]


def _no_more(loss: Loss) -> dict[str, Loss]:  # noqa: ARG001
    return {}


@dataclasses.dataclass(frozen=True)
class Objective:
    """One `--kd` choice."""

    name: str
    help: str  # for `--kd`'s help, after the name
    vocabularies: Vocabularies  # which tokenizer pairs it serves (one: a shared vocabulary; different: not)
    teacher: TeacherPass
    loss: StepLoss  # (settings, the student's logits, frozen arrays, batch) → the scalar the step minimises
    label: Callable[[Loss], str]  # the report's `objective`
    measure: Callable[[Loss], str]  # what the held-out `before` / `after` figures are
    # further held-out figures, by name (the report's `<name>_before` / `<name>_after`)
    also_measured: Callable[[Loss], Mapping[str, Loss]] = _no_more
    vocab_maps: Callable[[ModelTokenizer, ModelTokenizer, int, int], VocabMaps] | None = None  # own_tokens only


def _frozen_logits(
    loss: Loss, spec: ModelSpec | None, params: Any, batch: Batch, lora: Lora | None = None
) -> Annotated[Array, "B T V"]:
    """A frozen model's logits on the student's inputs, cut to the shared vocabulary (embedding padding dropped)."""
    return loss.forward(spec, params, batch.inputs, lora)[..., : loss.vocab]


def _teacher(loss: Loss, frozen: Frozen, batch: Batch) -> Annotated[Array, "B T V"]:
    return _frozen_logits(loss, loss.spec_source, frozen.source, batch, frozen.source_lora)


def _full(loss: Loss, z: Array, frozen: Frozen, batch: Batch) -> Array:
    return full_kl(_teacher(loss, frozen, batch), z[..., : loss.vocab], batch.mask)


def _delta(loss: Loss, z: Array, frozen: Frozen, batch: Batch) -> Array:
    teacher = _teacher(loss, frozen, batch)
    base_t = _frozen_logits(loss, loss.spec_target, frozen.target, batch)
    teacher = delta_teacher(base_t, teacher, _frozen_logits(loss, loss.spec_source, frozen.source, batch))
    return full_kl(teacher, z[..., : loss.vocab], batch.mask)


def _product(loss: Loss, z: Array, frozen: Frozen, batch: Batch) -> Array:
    teacher = _teacher(loss, frozen, batch)
    mixed = product_teacher(_frozen_logits(loss, loss.spec_target, frozen.target, batch), teacher, loss.product_weight)
    return full_kl(mixed, z[..., : loss.vocab], batch.mask)


def _sequence(loss: Loss, z: Array, frozen: Frozen, batch: Batch) -> Array:  # noqa: ARG001
    return sequence_ce(z, batch.targets, batch.mask)


def _aligned(kl: Callable[..., Array]) -> StepLoss:
    """`shared` / `bytes`: the teacher on its own tokens, `kl` where the tokenizations meet, + CE."""

    def step_loss(loss: Loss, z: Array, frozen: Frozen, batch: Batch) -> Array:
        teacher_map, student_map = frozen.vocab_maps  # type: ignore[misc]
        teacher = loss.forward(loss.spec_source, frozen.source, batch.teacher_inputs, frozen.source_lora)  # type: ignore[arg-type]
        return shared_objective(teacher, z, batch.teacher_positions, teacher_map, student_map, batch.targets,  # type: ignore[arg-type]
                                batch.mask, loss.sequence_weight, kl)  # fmt: skip

    return step_loss


def _kl_to_teacher(loss: Loss) -> dict[str, Loss]:
    """delta's and product's objectives are not the KL to the teacher itself: report that as well."""
    return {"kl_to_teacher": dataclasses.replace(loss, kd="full")}


def _kl_alone(loss: Loss) -> dict[str, Loss]:
    """shared's and bytes' KL without the cross-entropy beside it."""
    return {f"{loss.kd}_kl": dataclasses.replace(loss, sequence_weight=0.0)} if loss.sequence_weight > 0 else {}


def _name(loss: Loss) -> str:
    return loss.kd


def _kl_measure(loss: Loss) -> str:
    return f"{loss.kd} KL to the teacher"


def _sequence_label(loss: Loss) -> str:
    return "sequence" if loss.one_vocabulary else "sequence (vocabularies differ: teacher text re-tokenized)"


def _aligned_label(what: str) -> Callable[[Loss], str]:
    def label(loss: Loss) -> str:
        return (f"{loss.kd} (vocabularies differ: KL {what} where the tokenizations meet, "
                f"+ {loss.sequence_weight:g} × cross-entropy on the teacher's re-tokenized text)")  # fmt: skip

    return label


def _aligned_measure(kl: str) -> Callable[[Loss], str]:
    return lambda loss: f"{kl} + {loss.sequence_weight:g} × cross-entropy on the teacher's text"


def _shared_maps(tok_s: ModelTokenizer, tok_t: ModelTokenizer, vocab_s: int, vocab_t: int) -> VocabMaps:  # noqa: ARG001
    ids_s, ids_t = shared_vocabulary(tok_s, tok_t)
    return ids_s, ids_t, int(ids_s.size)


def _byte_maps(tok_s: ModelTokenizer, tok_t: ModelTokenizer, vocab_s: int, vocab_t: int) -> VocabMaps:
    # sized to the logits: ids past the tokenizer's (embedding padding) have no byte
    return first_bytes(tok_s, vocab_s), first_bytes(tok_t, vocab_t), None


def _aligned_objective(
    name: str,
    help: str,
    kl: Callable[..., Array],
    words: tuple[str, str],
    maps: Callable[[ModelTokenizer, ModelTokenizer, int, int], VocabMaps],
) -> Objective:
    """An objective for tokenizers that differ: `kl` at aligned positions + the cross-entropy;
    `words`: what the KL compares (for the label) and its name (for the held-out measure)."""
    return Objective(name, help, "different", "own_tokens", loss=_aligned(kl), label=_aligned_label(words[0]),
                     measure=_aligned_measure(words[1]), also_measured=_kl_alone, vocab_maps=maps)  # fmt: skip


_ENTRIES = (
    Objective("full", "KL to the teacher", "one", "same_tokens", loss=_full, label=_name, measure=_kl_measure),
    Objective(
        "delta",
        "KL to target base + what the adapter changes in the source",
        "one",
        "same_tokens",
        loss=_delta,
        label=_name,
        measure=_kl_measure,
        also_measured=_kl_to_teacher,
    ),
    Objective(
        "product",
        "KL to the geometric mix target^(1-b) * teacher^b, b = --product_weight",
        "one",
        "same_tokens",
        loss=_product,
        label=_name,
        measure=_kl_measure,
        also_measured=_kl_to_teacher,
    ),
    Objective(
        "sequence",
        "cross-entropy on the teacher's text",
        "any",
        "none",
        loss=_sequence,
        label=_sequence_label,
        measure=lambda loss: "cross-entropy on the teacher's text",  # noqa: ARG005
    ),
    _aligned_objective(
        "shared",
        "KL on the tokens both vocabularies have, where the two tokenizations have read the same bytes, "
        "+ --sequence_weight × sequence",
        shared_vocab_kl,
        ("on the tokens both have", "shared-vocabulary KL"),
        _shared_maps,
    ),
    _aligned_objective(
        "bytes",
        "the same, but KL between the two models' distributions of the next byte: each token's probability "
        "counted for its first byte",
        next_byte_kl,
        ("of the next byte", "next-byte KL"),
        _byte_maps,
    ),
)
OBJECTIVES: Mapping[str, Objective] = {o.name: o for o in _ENTRIES}

# `--kd=auto`: full KL when the tokenizers share one vocabulary; when they differ, bytes: it
# recovered the most across vocabularies (docs/replication.md, "Across tokenizers")
AUTO_SAME_VOCABULARY = "full"
AUTO_DIFFERENT_VOCABULARIES = "bytes"
KD_CHOICES = ("auto", *OBJECTIVES)
_SERVES = {"one": "one vocabulary only", "any": "any vocabularies", "different": "tokenizers that differ"}


def kd_help() -> str:
    """`--kd`'s help: every objective's own words and which tokenizer pairs it serves."""
    auto = (
        f"auto ({AUTO_SAME_VOCABULARY} when the two tokenizers have one vocabulary, else {AUTO_DIFFERENT_VOCABULARIES})"
    )
    return f"Objective: {', '.join([auto, *(f'{o.name} ({o.help}; {_SERVES[o.vocabularies]})' for o in _ENTRIES)])}."


def choose(kd: str, one_vocabulary: bool) -> Objective:
    """The objective `kd` names (`auto`: by the tokenizers), checked against the tokenizer pair."""
    if kd == "auto":
        kd = AUTO_SAME_VOCABULARY if one_vocabulary else AUTO_DIFFERENT_VOCABULARIES
    objective = OBJECTIVES[kd]
    if not one_vocabulary and objective.vocabularies == "one":
        across = [o.name for o in _ENTRIES if o.vocabularies != "one"]
        raise OptionsError(
            "--kd",
            f"{kd} needs one vocabulary, but the tokenizers of the two models differ; use --kd="
            f"{', '.join(across[:-1])} or {across[-1]}",
        )
    if one_vocabulary and objective.vocabularies == "different":
        raise OptionsError(
            "--kd", f"{kd} is for tokenizers that differ; these two models share one: use --kd={AUTO_SAME_VOCABULARY}"
        )
    return objective
