"""Whether a moved LoRA update is expected to help its target: the verdict line that ends
`transfer`'s and `distill`'s summaries, decided from the report's subspace figures alone
(docs/method.md, "The verdict").

A module's subspaces are compared side by side: `(φ − chance)/(1 − chance)` is 0 where the two
models' subspaces overlap as two random ones would and 1 where they coincide; a side whose chance
level is 1 (the SVD rank reaches that dimension of the weight) carries no information and is left
out. Each module counts with its worse informative side, the same reading as `min(φ_U, φ_V)`; the
adapter's lift is the mean over its moved modules, and the update is expected to help when that
mean reaches `HELPS_FROM`.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from crosslora_jax.transfer.report import ModuleReport

# chance is min(1, r/dim), computed in float32: exactly 1 when r ≥ dim
CHANCE_IS_ONE = 1.0 - 1e-6

# The mean lift from which a moved update is expected to help. Checked against the data-free rows
# of docs/replication.md, 3 seeds (`python tools/replication.py --groups=data_free`: each row's
# `verdict_lift`): the upgrade, where every transfer helped (recovered +0.08 to +0.49), lifts
# 0.891-0.902 at r = 16 and 0.939-0.945 at r = 64; the independently trained targets, where none
# helped (-0.66 to +0.001), lift -0.019 to +0.014 at both ranks. 0.5 sits 0.39 below the lowest
# helping figure and 0.49 above the highest other one.
HELPS_FROM = 0.5

# Below this mean in_subspace, a projecting method (cross_lora, lora_x) moves little of the
# update, and a positive verdict adds that a larger --svd_rank moves more. The share is a figure of
# the source and its adapter alone (0.28-0.29 on all three replication targets at r = 16: it cannot
# tell them apart, so it does not decide); on the upgrade (same run) cross_lora recovered
# +0.10-+0.13 at r = 16 (0.28-0.29 inside) and +0.39-+0.49 at r = 64 (0.80 inside).
MOVES_LITTLE = 0.5

Outcome = Literal["helps", "no_help", "says_nothing", "unmeasured"]


def above_chance(phi: float, chance: float) -> float:
    """(φ − chance)/(1 − chance): 0 at chance, 1 for identical subspaces (needs chance < 1).

    φ alone misleads: its chance level max(r)/dim differs per side and role (k_proj's U side
    sits at 0.5 where q_proj's is 0.25), so the raw numbers of two modules do not compare.
    """
    return (phi - chance) / (1.0 - chance)


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What the moved modules' subspace figures say about the update (`judge`).

    `lift`: mean over the judged modules of their worse informative side's `above_chance`;
    `phi`, `chance`: the means of those sides' φ and chance level (for people: the lift decides);
    `in_subspace`: mean share of ‖ΔW_s‖ inside the source subspaces over the moved modules that
    report it; `judged`: modules with an informative side; `uninformative`: moved modules whose
    every side has chance 1; `suggested_rank`: where φ says nothing, an `--svd_rank` at which
    every module has a side at chance ≤ 1/4.
    """

    outcome: Outcome
    lift: float | None
    phi: float | None
    chance: float | None
    in_subspace: float | None
    judged: int
    uninformative: int
    suggested_rank: int | None = None
    helps_from: float = HELPS_FROM

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def judge(modules: Iterable[ModuleReport], helps_from: float = HELPS_FROM) -> Verdict:
    """The verdict over the moved (transferred) modules of one adapter."""
    moved = [m.figures for m in modules if m.status == "transferred" and m.figures is not None]
    sides: list[tuple[float, float, float]] = []  # per judged module: (lift, φ, chance) of its worse side
    uninformative, measured, common = 0, 0, []
    for f in moved:
        pairs = [(f.phi_u, f.chance_u), (f.phi_v, f.chance_v)]
        known = [(phi, chance) for phi, chance in pairs if phi is not None and chance is not None]
        if not known:
            continue
        measured += 1
        common.append(max(min(f.source_shape[0], f.target_shape[0]), min(f.source_shape[1], f.target_shape[1])))
        informative = [(above_chance(phi, chance), phi, chance) for phi, chance in known if chance < CHANCE_IS_ONE]
        if informative:
            sides.append(min(informative))
        else:
            uninformative += 1
    shares = [f.in_subspace for f in moved if f.in_subspace is not None]
    in_subspace = sum(shares) / len(shares) if shares else None
    if not measured:
        return Verdict("unmeasured", None, None, None, in_subspace, 0, 0, helps_from=helps_from)
    if not sides:
        # a quarter of the smallest module's larger common side: chance ≤ 1/4 there
        rank = max(1, min(common) // 4)
        return Verdict("says_nothing", None, None, None, in_subspace, 0, uninformative, rank, helps_from)
    lift, phi, chance = (sum(s[i] for s in sides) / len(sides) for i in range(3))
    outcome: Outcome = "helps" if lift >= helps_from else "no_help"
    return Verdict(outcome, lift, phi, chance, in_subspace, len(sides), uninformative, helps_from=helps_from)


def moves_little(verdict: Verdict, method: str) -> bool:
    """Whether the line should say that a larger --svd_rank moves more of the update: a projecting
    method whose moved modules hold under `MOVES_LITTLE` of the update inside the source subspaces."""
    return method != "truncate" and verdict.in_subspace is not None and verdict.in_subspace < MOVES_LITTLE


def distilled_output(output: str) -> str:
    """The output folder a suggested `distill` writes: the user's output with `_distilled` added."""
    return output.rstrip("/") + "_distilled" + ("/" if output.endswith("/") else "")


def distill_command(source: str, target: str, adapter: str, output: str, cache_dir: str | None = None) -> str:
    """The `distill` command line for the user's own paths (quoted for a POSIX shell)."""
    args = [("source_model", source), ("target_model", target), ("adapter", adapter),
            ("output", distilled_output(output))]  # fmt: skip
    if cache_dir is not None:
        args.append(("cache_dir", cache_dir))
    return " ".join(["python -m crosslora_jax.distill", *(f"--{name}={shlex.quote(value)}" for name, value in args)])
