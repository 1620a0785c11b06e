"""What `distill` reports: `DistillReport`, the `distill` field of its `TransferReport`.

Frozen values filled once at the end of a run; `to_json()` is the `distill` section of
`crosslora_report.json`, a user-facing format whose keys and order are pinned by
tests/distillation/test_distill.py.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, Literal, NamedTuple

from crosslora_jax.distillation._options import DistillOptions


class LossPoint(NamedTuple):
    """The mean training loss over the steps since the previous point, at `step`."""

    step: int
    loss: float


class BeforeAfter(NamedTuple):
    before: float
    after: float


@dataclasses.dataclass(frozen=True)
class Alignment:
    """Tokenizers that differ (`shared`, `bytes`): where the two tokenizations meet."""

    positions_aligned: float  # share of counted student positions where both have read the same bytes
    shared_tokens: int | None = None  # `shared`: tokens both vocabularies have
    shared_of_student_vocabulary: float | None = None

    def to_json(self) -> dict[str, Any]:
        shared = {} if self.shared_tokens is None else {
            "shared_tokens": self.shared_tokens, "shared_of_student_vocabulary": self.shared_of_student_vocabulary
        }  # fmt: skip
        return {**shared, "positions_aligned": self.positions_aligned}


@dataclasses.dataclass(frozen=True)
class Heldout:
    """The objective on `sequences` held-out teacher samples before and after training (None: no
    held-out samples), and further measures by name (`kl_to_teacher`, `shared_kl`, `bytes_kl`)."""

    sequences: int
    measure: str  # what `objective` measures, in words
    objective: BeforeAfter | None
    also: Mapping[str, BeforeAfter] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        if self.objective is None:
            figures: dict[str, float | None] = {"before": None, "after": None}
        else:
            figures = {
                "before": self.objective.before,
                **{f"{name}_before": value.before for name, value in self.also.items()},
                "after": self.objective.after,
                **{f"{name}_after": value.after for name, value in self.also.items()},
            }
        return {"sequences": self.sequences, "measure": self.measure, **figures}


@dataclasses.dataclass(frozen=True)
class Stopping:
    """How training ended. With early stopping: `monitored` (what the held-out evaluations
    measure) at each evaluation, the step whose parameters were kept, and why it stopped ("plateau":
    no improvement after the last learning-rate cut; "step cap": --steps reached first). Without:
    reason "steps" and no evaluations."""

    steps_run: int
    reason: str  # "plateau" | "step cap" | "steps"
    best_step: int | None
    monitored: str | None
    curve: tuple[LossPoint, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "steps_run": self.steps_run,
            "reason": self.reason,
            "best_step": self.best_step,
            "monitored": self.monitored,
            "heldout_curve": [{"step": p.step, "value": p.loss} for p in self.curve],
        }


@dataclasses.dataclass(frozen=True)
class DistillSeconds:
    init_transfer: float
    teacher_samples: float  # the teacher's (and the anchor's) sampling
    train: float


@dataclasses.dataclass(frozen=True)
class DistillReport:
    """A distillation run: its settings (`auto` resolved), objective, loss curve and held-out figures."""

    settings: DistillOptions
    objective: str  # the objective in words (`OBJECTIVES[...].label`)
    vocabulary: Literal["shared", "different"]  # whether the two tokenizers have one vocabulary
    alignment: Alignment | None  # tokenizers that differ, objectives on aligned positions only
    loss_curve: tuple[LossPoint, ...]
    heldout: Heldout
    stopping: Stopping
    tokens_seen: int  # the whole run's, resumed or not
    resumed_from_step: int  # 0: not resumed from a checkpoint
    seconds: DistillSeconds  # `train`: the whole run's training time, resumed parts added

    def to_json(self) -> dict[str, Any]:
        return {
            "settings": self.settings.to_json(),
            "objective": self.objective,
            "vocabulary": self.vocabulary,
            **({} if self.alignment is None else {"alignment": self.alignment.to_json()}),
            "loss_curve": [p._asdict() for p in self.loss_curve],
            "heldout": self.heldout.to_json(),
            "stopping": self.stopping.to_json(),
            "tokens_seen": self.tokens_seen,
            "resumed_from_step": self.resumed_from_step,
            "seconds": dataclasses.asdict(self.seconds),
        }
