"""When training stops and at what learning rate: warm-up, then constant, cut on a plateau of the
held-out objective, stopped after the last cut stops paying.

Pure host-side state (no JAX), so it is checkpointed as JSON beside the parameters and a resumed
run continues with the same patience count. The step cap (`--steps`) only bounds the run: the
decay is not tied to it, so a small pair and a large one both train until they stop improving.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from typing import Any, Literal

StopReason = Literal["plateau", "step cap"]


# The held-out value jitters from one evaluation to the next because the parameters do (SGD at a
# constant rate): on the replication's upgrade at the default rate, 1.2 % of the value (σ of
# successive differences / √2, 3,000 steps, docs/replication.md#early-stopping). An improvement
# must beat NOISE_SIGMAS times that jitter, estimated in the run itself (robustly: the median
# absolute deviation of the last NOISE_WINDOW differences, since the last rate cut), so the rule
# fits objectives of any scale (a KL near 0, or a cross-entropy with an entropy floor).
NOISE_SIGMAS = 2.0
NOISE_WINDOW = 12
_MAD_TO_SIGMA = 1.4826  # σ of a normal distribution per unit of median absolute deviation


@dataclasses.dataclass(frozen=True)
class PlateauRule:
    """Evaluate every `eval_every` steps; an evaluation improves when it is below the last
    improvement by more than max(`min_delta` × |that value|, NOISE_SIGMAS × the measured jitter);
    `patience` evaluations in a row without one are a plateau: the learning rate is multiplied by
    `decay`, and after `decays` such cuts the next plateau stops training."""

    learning_rate: float
    warmup_steps: int
    eval_every: int
    patience: int
    min_delta: float
    decay: float
    decays: int

    def learning_rate_at(self, step: int, scale: float) -> float:
        """Linear warm-up from learning_rate / (warmup_steps + 1) over the first `warmup_steps`
        steps, then `learning_rate` × `scale`."""
        ramp = min(1.0, (step + 1) / (self.warmup_steps + 1))
        return self.learning_rate * scale * ramp


@dataclasses.dataclass
class PlateauState:
    """Where the rule stands; `observe` after each evaluation."""

    best: float = math.inf  # the lowest value so far: its parameters are kept
    best_step: int = 0  # 0: the init is the best so far
    reference: float = math.inf  # the value of the last improvement by more than min_delta
    since_improvement: int = 0  # evaluations since then
    cuts: int = 0  # learning-rate cuts so far
    scale: float = 1.0
    stopped: StopReason | None = None
    recent: list[float] = dataclasses.field(default_factory=list)  # the last values since the last cut

    def noise(self) -> float:
        """The jitter of one evaluation: σ estimated from the recent successive differences (0
        until there are three)."""
        diffs = [b - a for a, b in zip(self.recent, self.recent[1:], strict=False)]
        if len(diffs) < 3:
            return 0.0
        centre = statistics.median(diffs)
        return _MAD_TO_SIGMA * statistics.median(abs(d - centre) for d in diffs) / math.sqrt(2)

    def observe(self, rule: PlateauRule, step: int, value: float) -> bool:
        """Take the held-out value at `step`; True when it is the lowest so far (keep those
        parameters). Patience counts from the last improvement beyond the margin (min_delta or
        twice the jitter), so a run creeping down by less than its noise still stops."""
        if not math.isfinite(value):  # a diverged step is neither a best nor an improvement
            lowest = improved = False
        else:
            self.recent = [*self.recent, value][-NOISE_WINDOW:]
            lowest = value < self.best
            margin = max(rule.min_delta * abs(self.reference), NOISE_SIGMAS * self.noise())
            improved = not math.isfinite(self.reference) or value < self.reference - margin
        if lowest:
            self.best, self.best_step = value, step
        if improved:
            self.reference, self.since_improvement = value, 0
            return lowest
        self.since_improvement += 1
        if self.since_improvement >= rule.patience:
            if self.cuts < rule.decays:
                self.cuts += 1
                self.scale *= rule.decay
                self.since_improvement = 0
                self.recent = self.recent[-1:]  # the jitter shrinks with the rate: measure it anew
            else:
                self.stopped = "plateau"
        return lowest

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlateauState:
        return cls(**data)
