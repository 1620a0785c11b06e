"""What a transfer reports: per target module (`ModuleReport`) and per adapter (`TransferReport`).

Each is a frozen value filled once by the pipeline; `to_json()` gives the `crosslora_report.json`
object, a user-facing format whose keys, order and values are pinned by the tests. The figures
are explained for users in docs/method.md.
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from crosslora_jax._verdict import Verdict, judge
from crosslora_jax.arch import is_fused_module

if TYPE_CHECKING:
    from crosslora_jax.distillation import DistillReport
    from crosslora_jax.ops.svd import SvdSettings

SkipReason = Literal["gate", "layer_map", "adapter"]


class SidePair(NamedTuple):
    """One figure for each model: `{"source": …, "target": …}` in JSON."""

    source: int
    target: int


@dataclasses.dataclass(frozen=True)
class LayerMap:
    """The resolved target → source layer map of a run (None: no source layer)."""

    kind: Literal["index", "linear"]
    target_to_source: tuple[int | None, ...]

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "target_to_source": list(self.target_to_source)}


@dataclasses.dataclass(frozen=True)
class SvdQuality:
    """How good one base weight's truncated SVD is (the a-posteriori check; docs/method.md).

    `residual` = ‖[W V̂ − Û Σ̂; Wᵀ Û − V̂ Σ̂]‖₂ / σ̂₁ (measured against W, so a backward bound);
    `gap_estimate` = (σ̂_r − σ̂_{r+1}) / σ̂₁ from the route's own values (an estimate); `bound` =
    residual / gap_estimate, Wedin's bound on the sine of the largest angle between the computed
    and the true top-r subspaces (inf where the estimated gap is 0); `route`: what produced the
    subspaces ("gram-eigh", "gram-lanczos", "gram-lanczos→exact" where the check sent a gram
    result to the exact SVD, "exact", "randomized"); `flagged`: the final residual is still above
    the flag line (exact itself, or randomized, which never falls back).
    """

    route: str
    residual: float
    gap_estimate: float
    bound: float
    flagged: bool = False

    @property
    def fell_back(self) -> bool:
        return "→" in self.route

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["bound"] = self.bound if math.isfinite(self.bound) else None  # JSON has no inf
        return out


@dataclasses.dataclass(frozen=True)
class ModuleFigures:
    """What was measured for a module the transfer computed (kept or gated out).

    Subspace figures are None where no subspace was computed (`truncate` with the gate off).
    """

    source_module: str
    method: str
    rank: int  # k
    alpha: float
    source_shape: tuple[int, int]
    target_shape: tuple[int, int]
    svd_rank: SidePair | None  # effective r of each model's SVD
    energy_source: float | None  # share of ‖W_s‖_F² kept by rank r
    energy_target: float | None
    phi_u: float | None
    phi_v: float | None
    chance_u: float | None
    chance_v: float | None
    norm_ratio: float | None  # ‖ΔW_t‖/‖ΔW_s‖; None when ΔW_s = 0
    in_subspace: float | None  # share of ‖ΔW_s‖ inside the source subspaces
    svd_source: SvdQuality | None = None  # the source weight's SVD check; None without subspaces
    svd_target: SvdQuality | None = None

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["source_shape"], out["target_shape"] = list(self.source_shape), list(self.target_shape)
        out["svd_rank"] = None if self.svd_rank is None else list(self.svd_rank)
        for key in ("svd_source", "svd_target"):
            quality = getattr(self, key)
            out[key] = None if quality is None else quality.to_json()
        return out


@dataclasses.dataclass(frozen=True)
class ModuleReport:
    """One target module and role (a fused module such as phi3's qkv_proj has one report per role):
    transferred, or skipped and why; `figures` when it was computed."""

    module: str  # target module path
    role: str
    target_layer: int
    source_layer: int | None
    skipped_by: SkipReason | None  # None: transferred
    reason: str | None
    figures: ModuleFigures | None  # None: never computed (no source layer, or not in the adapter)

    @property
    def status(self) -> Literal["transferred", "skipped"]:
        return "transferred" if self.skipped_by is None else "skipped"

    @property
    def label(self) -> str:
        """The module path for people: with the role where the path holds several (qkv_proj[q])."""
        return f"{self.module}[{self.role}]" if is_fused_module(self.module) else self.module

    def to_json(self) -> dict[str, Any]:
        where = {"module": self.module, "role": self.role, "target_layer": self.target_layer}
        figures = {} if self.figures is None else self.figures.to_json()
        verdict = {"status": self.status, "skipped_by": self.skipped_by, "reason": self.reason}
        return {**where, "source_layer": self.source_layer, **figures, **verdict}


@dataclasses.dataclass(frozen=True)
class Timings:
    """Seconds per phase; `write_seconds` is None on processes that write nothing."""

    compute_seconds: float
    svd_seconds: float
    read_seconds: float
    cache_seconds: float
    project_seconds: float
    write_seconds: float | None = None

    def to_json(self) -> dict[str, float]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclasses.dataclass(frozen=True)
class TransferReport(Mapping[str, Any]):
    """One transferred adapter: the run's settings, per-phase figures and every target module.

    Read as a mapping (`report["timings"]`, `.get`, `.items()`) it is its `to_json()` object, so
    code written when `transfer` returned dicts keeps working; new code reads the fields.
    """

    adapter: Path
    output: Path | None  # None on processes that write nothing
    source_model: Path
    target_model: Path
    method: str
    svd: SvdSettings
    effective_rank: Mapping[str, SidePair | None]  # per role, min(r, m, n); None: no SVD needed
    layer_map: LayerMap
    min_similarity: float
    output_dtype: str  # "-" on processes that write nothing
    devices: tuple[str, ...]
    computed_layers: int  # subspaces computed by this run
    cached_layers: int  # subspaces read from --cache_dir
    fallback_layers: int  # of the computed, gram results the check flagged and the exact SVD redid
    timings: Timings
    modules: tuple[ModuleReport, ...]  # sorted by target layer, then role
    distill: DistillReport | None = None  # set by `distill`: its settings, loss curve and figures

    @property
    def summary(self) -> dict[str, int]:
        """Module count per status, in order of first appearance."""
        return dict(Counter(m.status for m in self.modules))

    @property
    def verdict(self) -> Verdict:
        """Whether the moved update is expected to help, from the moved modules' φ (`_verdict`)."""
        return judge(self.modules)

    def to_json(self) -> dict[str, Any]:
        effective = {role: None if r is None else r._asdict() for role, r in self.effective_rank.items()}
        return {
            "adapter": str(self.adapter),
            "output": None if self.output is None else str(self.output),
            "source_model": str(self.source_model),
            "target_model": str(self.target_model),
            "method": self.method,
            "svd": {**dataclasses.asdict(self.svd), "effective_rank": effective},
            "layer_map": self.layer_map.to_json(),
            "min_similarity": self.min_similarity,
            "output_dtype": self.output_dtype,
            "devices": list(self.devices),
            "summary": self.summary,
            "verdict": self.verdict.to_json(),
            "subspaces": {
                "computed_layers": self.computed_layers,
                "cached_layers": self.cached_layers,
                "fallback_layers": self.fallback_layers,
            },
            "timings": self.timings.to_json(),
            "modules": [m.to_json() for m in self.modules],
            **({} if self.distill is None else {"distill": self.distill.to_json()}),
        }

    def __getitem__(self, key: str) -> Any:
        return self.to_json()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_json())

    def __len__(self) -> int:
        return len(self.to_json())
